"""The pooling presets the profiler and the planner know, as data: each seed's token layout
(vidcore.ops.pool_presets) written as the views it pools, so that the profiler can pool a long
video chunk by chunk and the planner can count tokens without pooling anything.

tests/profiler/test_presets.py checks that every preset here yields exactly the tokens of its
vidcore.ops function, so the two cannot drift apart.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from vidcore.ops.pool_views import (
    Adaptive,
    Linspace,
    SegmentCentres,
    Stride,
    Uniform,
    View,
    lower_views,
    select_frames,
)

_SAMPLED = (Uniform, Linspace, SegmentCentres)  # n frames whatever the video's length

__all__ = ["Preset", "PRESETS", "get_preset", "view_tokens", "preset_tokens", "min_frames",
           "describe_view"]


@dataclass(frozen=True)
class Preset:
    """A token layout: `views(height, width)` pooled by vidcore.ops.pool, or (views None) the
    frame tokens merged `merge` at a time along channels (MiniGPT4-Video; 1 = every token as it
    is). `seed` names the vidcore.ops function it reproduces."""

    name: str
    seed: str
    views: Callable[[int, int], list[View]] | None = None
    merge: int = 1

    def channels(self, dim: int) -> int:
        """Width of the output tokens for input width `dim`."""
        return dim * self.merge

    def check_grid(self, height: int, width: int) -> None:
        """ValueError when a frame grid cannot take this layout."""
        if self.merge > 1 and (height * width) % self.merge:
            raise ValueError(f"preset {self.name}: {height}x{width} = {height * width} tokens per "
                             f"frame do not merge in groups of {self.merge}")
        if self.name == "llava_next_video" and (height % 2 or width % 2):
            raise ValueError(f"preset llava_next_video: grid {height}x{width} must be even "
                             f"(its 2x2 average pooling drops odd borders)")


def _llava_next_video(height: int, width: int) -> list[View]:
    return [View(spatial=(2, 2))]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("st_llm_global_local", "vidcore.ops.st_llm_global_local(x, num_local=16)",
           lambda h, w: [View(frames=SegmentCentres(16)), View(temporal="mean")]),
    Preset("slowfast", "vidcore.ops.slowfast(x)  (10 slow frames, (1, 2) max; fast 4x4 grid)",
           lambda h, w: [View(frames=Linspace(10), spatial=(1, 2), mode="max"),
                         View(spatial=Adaptive(4, 4))]),
    Preset("video_chatgpt", "vidcore.ops.video_chatgpt(x)",
           lambda h, w: [View(spatial="mean"), View(temporal="mean")]),
    Preset("llava_next_video", "vidcore.ops.llava_next_video(x)  (2x2 average)", _llava_next_video),
    Preset("minigpt4_video", "vidcore.ops.minigpt4_video(x)  (4 tokens merged)", merge=4),
    Preset("none", "every token of every frame"),
)}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


@functools.lru_cache(maxsize=256)
def _cells(spatial: object, mode: str, height: int, width: int) -> int:
    """Pooled tokens per frame window of a view's spatial pooling (lowered as pool does)."""
    return lower_views([View(frames=(0,), spatial=spatial, mode=mode)], [1], height, width)[3][0]


def _selected(view: View, num_frames: int) -> int:
    """How many frames a view selects, counted without listing them (the planner asks for
    frame counts up to 2^40)."""
    if view.frames == "all":
        return num_frames
    if isinstance(view.frames, Stride):
        return len(range(view.frames.start, num_frames, view.frames.step))
    if isinstance(view.frames, _SAMPLED):
        return view.frames.n if num_frames else 0
    return len(view.frames)


def view_tokens(view: View, num_frames: int, height: int, width: int) -> int:
    """Tokens one view yields for a video of `num_frames` frames on a height x width grid."""
    selected = _selected(view, num_frames)
    if view.temporal is None:
        groups = selected
    elif view.temporal == "mean":
        groups = min(selected, 1)
    else:
        groups = -(-selected // view.temporal)
    return groups * _cells(view.spatial, view.mode, height, width)


def describe_view(view: View) -> str:
    """A short human name: 'SegmentCentres(16) frames, every token', 'all frames mean', ..."""
    if view.frames == "all":
        frames = "every frame"
    elif isinstance(view.frames, _SAMPLED):
        frames = f"{type(view.frames).__name__}({view.frames.n}) frames"
    elif isinstance(view.frames, Stride):
        frames = f"every {view.frames.step}th frame from {view.frames.start}"
    else:
        frames = f"frames {list(view.frames)}"
    temporal = {None: "", "mean": ", mean over time"}.get(view.temporal,
                                                          f", {view.temporal}-frame windows")
    spatial = view.spatial
    if spatial is None:
        space = "every token"
    elif spatial == "mean":
        space = "mean of the grid"
    elif isinstance(spatial, Adaptive):
        space = f"{spatial.h}x{spatial.w} grid"
    else:
        space = f"{spatial[0]}x{spatial[1]} windows"
    return f"{frames}{temporal}, {space}" + (f" ({view.mode})" if view.mode != "avg" else "")


def preset_tokens(name: str, num_frames: int, height: int, width: int) -> list[tuple[str, int]]:
    """(view description, tokens) of each view of the preset for one video."""
    preset = get_preset(name)
    if preset.views is None:
        per_frame = height * width // preset.merge
        what = "every token" if preset.merge == 1 else f"{preset.merge} tokens merged into one"
        return [(f"every frame, {what}", num_frames * per_frame)]
    return [(describe_view(v), view_tokens(v, num_frames, height, width))
            for v in preset.views(height, width)]


def min_frames(name: str, height: int, width: int) -> int:
    """Fewest frames the preset accepts (ST-LLM's segment centres must lie inside the video)."""
    preset = get_preset(name)
    views = preset.views(height, width) if preset.views else []
    bound = max([v.frames.n for v in views if isinstance(v.frames, SegmentCentres)], default=1)
    for frames in range(1, bound + 1):
        if all(all(0 <= f < frames for f in select_frames(v.frames, frames)) for v in views):
            return frames
    return bound
