"""Views of video tokens for vidcore.ops.pool, and their lowering to plan rows on the host.

A view = frame selection x temporal pooling x spatial pooling, reduced by mean or max. Lowering
turns every output token into one plan row (a box of frames x rows x cols, see
csrc/include/vidcore/pool.h), so one kernel launch computes every view of a batch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["View", "Uniform", "SegmentCentres", "Adaptive", "select_frames", "lower_views"]


@dataclass(frozen=True)
class Uniform:
    """n frames at int(linspace(0, T, n + 1))[:-1] (SlowFast-LLaVA), i.e. floor(i * T / n)."""

    n: int


@dataclass(frozen=True)
class SegmentCentres:
    """n frames at int(seg / 2 + round(seg * i)), seg = T / n (ST-LLM's global-local input;
    Python's round, half to even)."""

    n: int


@dataclass(frozen=True)
class Adaptive:
    """An h x w output grid with PyTorch's adaptive-pool windows:
    [floor(i * H / h), ceil((i + 1) * H / h))."""

    h: int
    w: int


@dataclass(frozen=True)
class View:
    """frames: "all", Uniform(n), SegmentCentres(n) or explicit frame indices.
    temporal: None (every frame), "mean" (over all selected frames) or kt (windows of kt frames;
    the last may be shorter). spatial: None (every token), (kh, kw) windows with stride = kernel
    (border windows reduce their valid cells), Adaptive(h, w), or "mean" (the whole grid).
    mode: "avg" or "max" (over the whole frames x window box)."""

    frames: str | Uniform | SegmentCentres | tuple[int, ...] = "all"
    temporal: str | int | None = None
    spatial: str | tuple[int, int] | Adaptive | None = None
    mode: str = "avg"


def _linspace_floor(num_frames: int, n: int) -> list[int]:
    # NumPy's linspace: i * step with step = T / n, truncated by int() as the seed does.
    step = num_frames / n
    return [int(i * step) for i in range(n)]


def select_frames(frames: object, num_frames: int) -> list[int]:
    """Frame indices of a view's selection in a video of `num_frames` frames (host ints)."""
    if frames == "all":
        return list(range(num_frames))
    if isinstance(frames, Uniform):
        return _linspace_floor(num_frames, frames.n)
    if isinstance(frames, SegmentCentres):
        seg = num_frames / frames.n
        return [int(seg / 2 + round(seg * i)) for i in range(frames.n)]
    return [int(f) for f in frames]


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


def lower_views(views: Sequence[View], num_frames: Sequence[int], height: int,
                width: int) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Plan rows [L, 7] int64, frame table, per-token metadata [L, 4] int32 (frame index within
    its video, pooled-grid row, column, view id) and the token count of every video."""
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
                torch.full((len(groups) * len(windows),), view_id)], 1).to(torch.int32))
            table_size += len(selected)
            tokens_b += len(groups) * len(windows)
        lengths.append(tokens_b)
        frame_offset += frames_b
    empty = torch.empty(0, 7, dtype=torch.int64)
    return (torch.cat(plans) if plans else empty,
            torch.cat(tables) if tables else torch.empty(0, dtype=torch.int64),
            torch.cat(metas) if metas else torch.empty(0, 4, dtype=torch.int32), lengths)
