"""Views of video tokens for vidcore.ops.pool: what a view is, how its fields are checked, and
its lowering to plan rows on the host.

A view = frame selection x temporal pooling x spatial pooling, reduced by mean or max. Lowering
turns every output token into one plan row (a box of frames x rows x cols, see
csrc/include/vidcore/pool.h), so one kernel launch computes every view of a batch.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["View", "Uniform", "Linspace", "SegmentCentres", "Stride", "Adaptive", "check_view",
           "select_frames", "lower_views"]


@dataclass(frozen=True)
class Uniform:
    """n frames at int(i * (T / n)), i < n, computed in float64: NumPy's
    `linspace(0, T, n + 1).astype(int)[:-1]`. That is floor(i * T / n) except where float64
    rounding lands just below an integer (T = 2, n = 98: i = 49 gives frame 0, not 1).
    SlowFast-LLaVA's own code rounds in float32 instead: `Linspace(n)` picks exactly its frames.
    A video of 0 frames selects none."""

    n: int


@dataclass(frozen=True)
class Linspace:
    """n frames at `torch.linspace(0, T, n + 1)` (float32) truncated to int, the last dropped:
    SlowFast-LLaVA's slow-pathway rule (llava_arch.py, prepare_slowfast), computed by that very
    call. Differs from Uniform(n) for some n >= 14 (T = 2, n = 14: eight frame-0s and six
    frame-1s, where Uniform takes seven of each). A video of 0 frames selects none."""

    n: int


@dataclass(frozen=True)
class SegmentCentres:
    """n frames at int(seg / 2 + round(seg * i)), seg = T / n (ST-LLM's global-local input;
    Python's round, half to even). A video of 0 frames selects none; a centre at or past T
    (videos much shorter than n) is an error, where the seed would index out of range."""

    n: int


@dataclass(frozen=True)
class Stride:
    """Every `step`-th frame from `start`: range(start, T, step)."""

    step: int
    start: int = 0


@dataclass(frozen=True)
class Adaptive:
    """An h x w output grid with PyTorch's adaptive-pool windows:
    [floor(i * H / h), ceil((i + 1) * H / h))."""

    h: int
    w: int


@dataclass(frozen=True)
class View:
    """frames: "all", Uniform(n), Linspace(n), SegmentCentres(n), Stride(step, start) or
    explicit frame indices (ints). temporal: None (every frame), "mean" (over all selected
    frames) or kt (windows of kt frames; the last may be shorter). spatial: None (every token),
    (kh, kw) windows with stride = kernel (border windows reduce their valid cells),
    Adaptive(h, w), or "mean" (the whole grid). mode: "avg" or "max" (over the whole
    frames x window box; max follows torch's max pooling: the first maximum in scan order, the
    last NaN, for values and gradients). Fields are checked by `pool` on every call: no field is
    coerced (1.7, True or "2" are errors)."""

    frames: str | Uniform | Linspace | SegmentCentres | Stride | tuple[int, ...] = "all"
    temporal: str | int | None = None
    spatial: str | tuple[int, int] | Adaptive | None = None
    mode: str = "avg"


_SAMPLED = (Uniform, Linspace, SegmentCentres)
_FRAMES_HELP = ("'all', Uniform(n), Linspace(n), SegmentCentres(n), Stride(step, start) or a "
                "sequence of frame indices")


def _int(op: str, name: str, value: object, minimum: int) -> int:
    """value as a Python int, if it is an integer (never a bool, float or string) >= minimum."""
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} "
                            f"{value!r}")
        value = int(value)
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


def _indices(op: str, name: str, frames: object) -> tuple[int, ...]:
    if type(frames) is tuple and all(type(f) is int and f >= 0 for f in frames):
        return frames  # already canonical: the per-call case keeps its View
    if isinstance(frames, Tensor):
        if frames.dim() != 1 or frames.is_floating_point() or frames.is_complex() \
                or frames.dtype == torch.bool:
            raise TypeError(f"{op}: {name} as a tensor must be 1-D with an integer dtype, got "
                            f"{frames.dtype} with shape {tuple(frames.shape)}")
        if frames.device.type != "cpu":
            raise ValueError(f"{op}: {name} are host metadata: pass ints or a CPU tensor, got a "
                             f"tensor on {frames.device}")
        frames = frames.tolist()
    elif type(frames).__module__ == "numpy" and hasattr(frames, "dtype"):  # without numpy
        if frames.ndim != 1 or frames.dtype.kind not in "iu":
            raise TypeError(f"{op}: {name} as an array must be 1-D with an integer dtype, got "
                            f"{frames.dtype} with shape {frames.shape}")
        frames = frames.tolist()
    elif not isinstance(frames, (tuple, list, range)):
        raise TypeError(f"{op}: {name} must be {_FRAMES_HELP}, got {type(frames).__name__} "
                        f"{frames!r}")
    return tuple(_int(op, f"{name}[{i}]", f, 0) for i, f in enumerate(frames))


def _frames(op: str, name: str, frames: object) -> object:
    if isinstance(frames, str):
        if frames != "all":
            raise ValueError(f"{op}: {name} must be {_FRAMES_HELP}, got {frames!r}")
        return frames
    if isinstance(frames, _SAMPLED):
        n = _int(op, f"{name}.n", frames.n, 1)
        return frames if type(frames.n) is int else type(frames)(n)
    if isinstance(frames, Stride):
        step = _int(op, f"{name}.step", frames.step, 1)
        start = _int(op, f"{name}.start", frames.start, 0)
        return frames if type(frames.step) is int and type(frames.start) is int \
            else Stride(step, start)
    return _indices(op, name, frames)


def _spatial(op: str, name: str, spatial: object) -> object:
    if spatial is None or (isinstance(spatial, str) and spatial == "mean"):
        return spatial
    if isinstance(spatial, Adaptive):
        h, w = _int(op, f"{name}.h", spatial.h, 1), _int(op, f"{name}.w", spatial.w, 1)
        return spatial if type(spatial.h) is int and type(spatial.w) is int else Adaptive(h, w)
    if not isinstance(spatial, (tuple, list)) or len(spatial) != 2:
        raise ValueError(f"{op}: {name} must be None, 'mean', (kh, kw) or Adaptive(h, w), got "
                         f"{spatial!r}")
    kernel = (_int(op, name, spatial[0], 1), _int(op, name, spatial[1], 1))
    return spatial if type(spatial) is tuple and all(type(k) is int for k in spatial) \
        else kernel


def check_view(op: str, index: int, view: object) -> View:
    """The view with every field checked and in canonical form (ints, tuples), so that equal
    views key the plan cache alike and an invalid one fails whether or not an equal view was
    cached. Returns `view` itself when it is already canonical (the common, per-call case)."""
    if not isinstance(view, View):
        raise TypeError(f"{op}: views[{index}] must be a View, got {type(view).__name__}")
    name = f"views[{index}]"
    if not isinstance(view.mode, str) or view.mode not in ("avg", "max"):
        raise ValueError(f"{op}: {name}.mode must be 'avg' or 'max', got {view.mode!r}")
    temporal = view.temporal
    if not (temporal is None or (isinstance(temporal, str) and temporal == "mean")):
        if isinstance(temporal, str):
            raise ValueError(f"{op}: {name}.temporal must be None, 'mean' or an int kt >= 1, "
                             f"got {temporal!r}")
        temporal = _int(op, f"{name}.temporal", temporal, 1)
    frames = _frames(op, f"{name}.frames", view.frames)
    spatial = _spatial(op, f"{name}.spatial", view.spatial)
    if frames is view.frames and spatial is view.spatial and temporal is view.temporal:
        return view
    return dataclasses.replace(view, frames=frames, temporal=temporal, spatial=spatial)


def select_frames(frames: object, num_frames: int) -> list[int]:
    """Frame indices of a (checked) view's selection in a video of `num_frames` frames."""
    if frames == "all":
        return list(range(num_frames))
    if isinstance(frames, Stride):
        return list(range(frames.start, num_frames, frames.step))
    if isinstance(frames, _SAMPLED) and num_frames == 0:
        return []
    if isinstance(frames, Uniform):
        step = num_frames / frames.n  # NumPy's linspace: i * step, truncated like the seed
        return [int(i * step) for i in range(frames.n)]
    if isinstance(frames, Linspace):
        return torch.linspace(0, num_frames, frames.n + 1).to(torch.int32).tolist()[:-1]
    if isinstance(frames, SegmentCentres):
        seg = num_frames / frames.n
        return [int(seg / 2 + round(seg * i)) for i in range(frames.n)]
    return list(frames)


def _windows(spatial: object, height: int, width: int) -> tuple[list[tuple[int, ...]], int, int]:
    """(r0, r1, c0, c1) windows in raster order, and the pooled grid's size."""
    if spatial is None:
        rows, cols = [(r, r + 1) for r in range(height)], [(c, c + 1) for c in range(width)]
    elif spatial == "mean":
        rows, cols = [(0, height)], [(0, width)]
    elif isinstance(spatial, Adaptive):
        rows = [(i * height // spatial.h, math.ceil((i + 1) * height / spatial.h))
                for i in range(spatial.h)]
        cols = [(j * width // spatial.w, math.ceil((j + 1) * width / spatial.w))
                for j in range(spatial.w)]
    else:
        kh, kw = spatial
        rows = [(r, min(r + kh, height)) for r in range(0, height, kh)]
        cols = [(c, min(c + kw, width)) for c in range(0, width, kw)]
    return [(*r, *c) for r in rows for c in cols], len(rows), len(cols)


def _groups(temporal: object, count: int) -> list[tuple[int, int]]:
    """[begin, end) slices of the selected frames reduced together."""
    if temporal is None:
        return [(i, i + 1) for i in range(count)]
    if temporal == "mean":
        return [(0, count)] if count else []
    return [(i, min(i + temporal, count)) for i in range(0, count, temporal)]


def check_selection(op: str, views: Sequence[View], num_frames: Sequence[int], height: int,
                    width: int) -> None:
    """What depends on the video sizes: selected frames inside every video, and a non-empty
    grid for views that reduce it."""
    for i, view in enumerate(views):
        if height * width == 0 and (view.spatial == "mean" or isinstance(view.spatial, Adaptive)):
            raise ValueError(f"{op}: views[{i}].spatial={view.spatial!r} reduces the H x W grid, "
                             f"but x has an empty {height} x {width} grid")
        for t in num_frames:
            selected = select_frames(view.frames, t)
            if any(not 0 <= f < t for f in selected):
                raise ValueError(f"{op}: views[{i}] selects frames {selected} outside a video "
                                 f"of {t} frames")


def lower_views(views: Sequence[View], num_frames: Sequence[int], height: int,
                width: int) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Plan rows [L, 7] int64, frame table, per-token metadata [4, L] int32 (frame index within
    its video, pooled-grid row, column, view id) and the token count of every video. Rows come
    video by video, view by view, temporal window by window, window by window in raster order:
    the order csrc/include/vidcore/pool.h requires."""
    plans, tables, metas, lengths = [], [], [], []
    table_size, frame_offset = 0, 0
    for frames_b in num_frames:
        tokens_b = 0
        for view_id, view in enumerate(views):
            selected = select_frames(view.frames, frames_b)
            windows, _grid_h, grid_w = _windows(view.spatial, height, width)
            groups = _groups(view.temporal, len(selected))
            if not groups or not windows:
                continue
            tables.append(torch.tensor(selected, dtype=torch.int64) + frame_offset)
            group_t = torch.tensor(groups, dtype=torch.int64) + table_size
            window_t = torch.tensor(windows, dtype=torch.int64)
            mode = torch.full((len(groups) * len(windows), 1), int(view.mode == "max"))
            plans.append(torch.cat([group_t.repeat_interleave(len(windows), 0),
                                    window_t.repeat(len(groups), 1), mode], 1))
            first_frame = torch.tensor([selected[g0] for g0, _ in groups])
            cell = torch.arange(len(windows))
            metas.append(torch.stack([
                first_frame.repeat_interleave(len(windows)),
                (cell // grid_w).repeat(len(groups)), (cell % grid_w).repeat(len(groups)),
                torch.full((len(groups) * len(windows),), view_id)]).to(torch.int32))
            table_size += len(selected)
            tokens_b += len(groups) * len(windows)
        lengths.append(tokens_b)
        frame_offset += frames_b
    empty = torch.empty(0, 7, dtype=torch.int64)
    return (torch.cat(plans) if plans else empty,
            torch.cat(tables) if tables else torch.empty(0, dtype=torch.int64),
            torch.cat(metas, 1) if metas else torch.empty(4, 0, dtype=torch.int32), lengths)
