"""Builders of `q_frame_range` for vidcore.ops.attention: which frames each query may see.

Each returns an int32 [num_queries, 2] tensor of [start, end) frame ranges for the queries of one
sequence; concatenate them (torch.cat) for a packed batch. Built on the host from host values.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vidcore.ops._validation import check_int

__all__ = ["stage_ranges", "window_ranges", "interleave_ranges"]


def _ranges(starts: list[int], ends: list[int], device: torch.device | str | None) -> Tensor:
    return torch.tensor([starts, ends], dtype=torch.int32).t().contiguous().to(device)


def stage_ranges(segment_lengths: Sequence[int], num_frames: int, *,
                 device: torch.device | str | None = None) -> Tensor:
    """Task-Adapter++ stage alignment: text segment i of S (segment_lengths[i] tokens) sees
    temporal stage i, frames [floor(i T / S), floor((i + 1) T / S))."""
    check_int("stage_ranges", "num_frames", num_frames, minimum=0)
    segments = len(segment_lengths)
    starts, ends = [], []
    for i, length in enumerate(segment_lengths):
        check_int("stage_ranges", "segment_lengths", length, minimum=0)
        starts += [i * num_frames // segments] * length
        ends += [(i + 1) * num_frames // segments] * length
    return _ranges(starts, ends, device)


def window_ranges(query_frames: Sequence[int], window: int, num_frames: int, *,
                  device: torch.device | str | None = None) -> Tensor:
    """Sliding window: a query at frame t (0 <= t < num_frames) sees frames
    [t - window, t + window] within [0, T)."""
    check_int("window_ranges", "window", window, minimum=0)
    check_int("window_ranges", "num_frames", num_frames, minimum=0)
    for i, t in enumerate(query_frames):
        check_int("window_ranges", f"query_frames[{i}]", t, minimum=0, below=num_frames)
    starts = [max(0, t - window) for t in query_frames]
    ends = [min(num_frames, t + window + 1) for t in query_frames]
    return _ranges(starts, ends, device)


def interleave_ranges(tokens_per_subtitle: Sequence[int], *,
                      device: torch.device | str | None = None) -> Tensor:
    """Frame-local subtitles, an optional restriction for interleaved frame + subtitle
    sequences: the tokens_per_subtitle[t] subtitle tokens of frame t see frame t only.

    MiniGPT4-Video itself has no such restriction: its language model attends causally over
    the whole interleaved sequence (`causal=True` without frame ranges gives the seed's
    attention)."""
    for t, count in enumerate(tokens_per_subtitle):
        check_int("interleave_ranges", f"tokens_per_subtitle[{t}]", count, minimum=0)
    starts = [t for t, n in enumerate(tokens_per_subtitle) for _ in range(n)]
    return _ranges(starts, [t + 1 for t in starts], device)
