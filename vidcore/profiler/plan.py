"""`vidcore plan`: how many frames of a video fit a language model's context under each pooling
preset: MiniGPT4-Video's frame budget generalised.

MiniGPT4-Video gives the video 80% of its prompt budget (`max_context_len`): 45 frames x 64
tokens = 2,880 of Llama-2's 3,600, 90 x 64 = 5,760 of Mistral's 7,200; the other 20% holds the
instruction and subtitles. The planner keeps that split by default (`visual_share=0.8`, or
`text_tokens` reserved explicitly) and, for any preset, finds the largest frame count whose
tokens fit the video's share, counting each view's tokens as the preset would pool them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

from vidcore.profiler.presets import PRESETS, get_preset, min_frames, preset_tokens

__all__ = ["FramePlan", "plan", "DEFAULT_VISUAL_SHARE"]

DEFAULT_VISUAL_SHARE = 0.8  # MiniGPT4-Video: 2880 / 3600 = 5760 / 7200
_SEARCH_LIMIT = 1 << 40  # frame counts searched when tokens grow with frames


@dataclass(frozen=True)
class FramePlan:
    """One preset's budget. frames: the most frames that fit (None: the token count does not
    depend on the frame count, so any video length fits as long as `fits`); views: (view,
    tokens) at that frame count (at `min_frames` when frames is None); fps: frames / duration."""

    preset: str
    context: int
    text_tokens: int
    visual_budget: int
    tokens_per_frame: int
    min_frames: int
    frames: int | None
    fits: bool
    visual_tokens: int
    views: list[tuple[str, int]]
    duration_s: float | None = None
    fps: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _total(name: str, frames: int, height: int, width: int) -> int:
    return sum(tokens for _, tokens in preset_tokens(name, frames, height, width))


def _largest_fitting(name: str, budget: int, low: int, height: int, width: int) -> int:
    """Largest frame count >= low whose tokens fit `budget` (token counts never fall as frames
    grow), given that `low` fits."""
    high = low
    while _total(name, high * 2, height, width) <= budget:
        high *= 2
        if high >= _SEARCH_LIMIT:
            return high
    top = high * 2  # does not fit
    while top - high > 1:
        mid = (high + top) // 2
        high, top = (mid, top) if _total(name, mid, height, width) <= budget else (high, mid)
    return high


def _budget(context: int, text_tokens: int | None, visual_share: float | None) -> tuple[int, int]:
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"plan: context must be a positive number of tokens, got {context!r}")
    if text_tokens is not None and visual_share is not None:
        raise ValueError("plan: give text_tokens or visual_share, not both")
    if text_tokens is None:
        share = Fraction(str(DEFAULT_VISUAL_SHARE if visual_share is None else visual_share))
        if not 0 < share <= 1:
            raise ValueError(f"plan: visual_share must be in (0, 1], got {visual_share}")
        visual = int(context * share)  # exact: 3600 * 4/5 = 2880, never 2879.999...
        return context - visual, visual
    if not isinstance(text_tokens, int) or not 0 <= text_tokens < context:
        raise ValueError(f"plan: text_tokens must be an integer in [0, context={context}), got "
                         f"{text_tokens!r}")
    return text_tokens, context - text_tokens


def plan(context: int, *, preset: str | None = None, grid: tuple[int, int] = (16, 16),
         text_tokens: int | None = None, visual_share: float | None = None,
         duration: float | None = None) -> list[FramePlan]:
    """Frames that fit a `context`-token prompt under `preset` (default: every preset).

    Args:
        context: tokens the prompt may take (MiniGPT4-Video's max_context_len: 3600 for
            Llama-2, 7200 for Mistral).
        grid: the vision model's frame grid (tokens per frame = h * w; CLIP ViT-L/14 at
            224 px: 16 x 16).
        text_tokens: tokens kept for text; default: what `visual_share` (default 0.8) leaves.
        duration: a video's length in seconds, to turn frames into a sampling rate.
    Returns:
        One FramePlan per preset.
    """
    height, width = grid
    if height < 1 or width < 1:
        raise ValueError(f"plan: grid must be positive, got {height}x{width}")
    if duration is not None and not duration > 0:
        raise ValueError(f"plan: duration must be > 0 seconds, got {duration}")
    text, budget = _budget(context, text_tokens, visual_share)
    plans = []
    for name in [get_preset(preset).name] if preset else list(PRESETS):
        try:
            get_preset(name).check_grid(height, width)
        except ValueError:
            if preset:
                raise
            continue  # listing every preset: skip those this grid cannot take
        low = min_frames(name, height, width)
        fits = _total(name, low, height, width) <= budget
        grows = _total(name, low + 1, height, width) > _total(name, low, height, width)
        frames = (_largest_fitting(name, budget, low, height, width) if fits else 0) if grows \
            else None
        shown = frames or low
        views = preset_tokens(name, shown, height, width)
        plans.append(FramePlan(
            preset=name, context=context, text_tokens=text, visual_budget=budget,
            tokens_per_frame=height * width, min_frames=low, frames=frames, fits=fits,
            visual_tokens=sum(t for _, t in views), views=views,
            duration_s=duration,
            fps=frames / duration if duration and frames is not None else None))
    return plans
