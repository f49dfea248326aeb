"""Global-local pooling of video tokens in one pass (DESIGN.md op 2): ST-LLM's global-local
input, SlowFast-LLaVA, Video-ChatGPT, LLaVA-NeXT-Video and MiniGPT4-Video token layouts."""
from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_backend, check_int, check_tensor
from vidcore.ops.pool_views import (
    Adaptive,
    SegmentCentres,
    Uniform,
    View,
    lower_views,
    select_frames,
)

__all__ = ["pool", "PooledTokens", "merge_tokens"]

_OP = "pool"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True, eq=False)
class PooledTokens:
    """tokens: [B, L, D] when every video has the same length L, else packed [sum L_b, D].
    cu_seqlens [B + 1] int32 and max_seqlen delimit videos in the packed order. Per token (in
    packed order, int32): frame_index (first frame of its temporal window, within its video),
    row and col (in its view's pooled grid) and view (index into `views`)."""

    tokens: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    frame_index: Tensor
    row: Tensor
    col: Tensor
    view: Tensor


def pool(x: Tensor, views: Sequence[View], *, num_frames: Sequence[int] | Tensor | None = None,
         backend: str = "auto") -> PooledTokens:
    """Every view of every video, read from x in one kernel launch, in the order given.

    Args:
        x: [B, T, H, W, D], or ragged [sum T_b, H, W, D] with `num_frames` (B host ints).
        views: View(frames, temporal, spatial, mode) per output view; tokens of a video come
            view after view, each in (temporal window, row, col) order.
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        PooledTokens. Differentiable in x (mean, max, copy).
    Backends: CPU -> csrc/cpu/pool.cpp; CUDA -> csrc/cuda/pool.cu (one launch); else reference.
    """
    check_backend(_OP, backend)
    frames = _check_layout(x, num_frames)
    height, width = x.shape[-3], x.shape[-2]
    if isinstance(views, View) or not isinstance(views, Sequence) or not views:
        raise ValueError(f"{_OP}: views must be a non-empty sequence of View, got {views!r}")
    # Under torch.compile the lowering is traced (and baked into the graph) instead of cached.
    lower = _plan.__wrapped__ if torch.compiler.is_compiling() else _plan
    views = tuple(_hashable(i, v) for i, v in enumerate(views))
    plan, table, per_token, cu_seqlens, max_seqlen = lower(views, tuple(frames), height, width,
                                                           x.device)
    rows = x.reshape(-1, height, width, x.shape[-1])
    fn = reference.pool if backend == "torch" else _pool
    tokens = fn(rows if rows.is_contiguous() else rows.contiguous(), plan, table)
    if x.dim() == 5:
        tokens = tokens.view(x.shape[0], -1, x.shape[-1])
    return PooledTokens(tokens, cu_seqlens, max_seqlen, *per_token)


def merge_tokens(x: Tensor, group: int = 4) -> Tensor:
    """MiniGPT4-Video token merging: [..., N, D] -> [..., N / group, group * D], concatenating
    `group` consecutive raster-order tokens along channels (1 x group strips, not 2 x 2 blocks).
    A view of x when x is contiguous; gradients flow back through it."""
    check_tensor("merge_tokens", "x", x)
    check_int("merge_tokens", "group", group, minimum=1)
    if x.dim() < 2 or x.shape[-2] % group:
        raise ValueError(f"merge_tokens: the token dim of x {tuple(x.shape)} must be divisible "
                         f"by group={group}")
    return x.reshape(*x.shape[:-2], x.shape[-2] // group, group * x.shape[-1])


def _hashable(index: int, view: View) -> View:
    """The view with list-valued fields as tuples, so that it can key the plan cache."""
    if not isinstance(view, View):
        raise TypeError(f"{_OP}: views[{index}] must be a View, got {type(view).__name__}")
    frames, spatial = view.frames, view.spatial
    if not isinstance(frames, (str, Uniform, SegmentCentres)):
        frames = tuple(int(f) for f in frames)
    if isinstance(spatial, list):
        spatial = tuple(spatial)
    if frames is view.frames and spatial is view.spatial:
        return view  # already hashable: no copy on this per-call path
    return dataclasses.replace(view, frames=frames, spatial=spatial)


@functools.lru_cache(maxsize=64)
def _plan(views: tuple[View, ...], frames: tuple[int, ...], height: int, width: int,
          device: torch.device) -> tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor, int]:
    """Checked views lowered to device tensors, once per (views, frame counts, grid, device):
    repeated calls (every training step) skip the host work and the host-to-device copies, and
    a cached call issues no copy at all (it can run inside CUDA-graph capture)."""
    _check_views(views, list(frames))
    plan, table, meta, lengths = lower_views(views, frames, height, width)
    if plan.shape[0] == 0:
        raise ValueError(f"{_OP}: views yield no tokens for num_frames {list(frames)}")
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    per_token = meta.to(device).unbind(1)  # frame_index, row, col, view
    return plan.to(device), table.to(device), per_token, cu_seqlens.to(device), max(lengths)


def _check_layout(x: Tensor, num_frames: Sequence[int] | Tensor | None) -> list[int]:
    check_tensor(_OP, "x", x, dims=(4, 5), dtypes=_DTYPES)
    if x.dim() == 5:
        if num_frames is not None:
            raise ValueError(f"{_OP}: num_frames is only for ragged x [sum T_b, H, W, D]")
        return [x.shape[1]] * x.shape[0]
    if num_frames is None:
        raise ValueError(f"{_OP}: ragged x [sum T_b, H, W, D] needs num_frames")
    frames = num_frames.tolist() if isinstance(num_frames, Tensor) else list(num_frames)
    for t in frames:
        check_int(_OP, "num_frames", t, minimum=0)
    if sum(frames) != x.shape[0]:
        raise ValueError(f"{_OP}: num_frames {frames} sum to {sum(frames)}, but x has "
                         f"{x.shape[0]} frames")
    return frames


def _check_views(views: Sequence[View], frames: list[int]) -> None:
    for i, view in enumerate(views):
        if view.mode not in ("avg", "max"):
            raise ValueError(f"{_OP}: views[{i}].mode must be 'avg' or 'max', got {view.mode!r}")
        if isinstance(view.frames, (Uniform, SegmentCentres)):
            check_int(_OP, f"views[{i}].frames.n", view.frames.n, minimum=1)
        temporal, spatial = view.temporal, view.spatial
        if temporal not in (None, "mean"):
            check_int(_OP, f"views[{i}].temporal", temporal, minimum=1)
        if isinstance(spatial, Adaptive):
            check_int(_OP, f"views[{i}].spatial.h", spatial.h, minimum=1)
            check_int(_OP, f"views[{i}].spatial.w", spatial.w, minimum=1)
        elif spatial not in (None, "mean"):
            if not (isinstance(spatial, tuple) and len(spatial) == 2):
                raise ValueError(f"{_OP}: views[{i}].spatial must be None, 'mean', (kh, kw) or "
                                 f"Adaptive(h, w), got {spatial!r}")
            for size in spatial:
                check_int(_OP, f"views[{i}].spatial", size, minimum=1)
        for t in frames:
            selected = select_frames(view.frames, t)
            if any(not 0 <= f < t for f in selected):
                raise ValueError(f"{_OP}: views[{i}] selects frames {selected} outside a video "
                                 f"of {t} frames")


@torch.library.custom_op("vidcore::pool", mutates_args=())
def _pool(x: Tensor, plan: Tensor, frame_table: Tensor) -> Tensor:
    return reference.pool(x, plan, frame_table)


@_pool.register_fake
def _(x, plan, frame_table):
    return x.new_empty(plan.shape[0], x.shape[-1])


@torch.library.custom_op("vidcore::pool_backward", mutates_args=())
def _pool_backward(grad: Tensor, x: Tensor, plan: Tensor, frame_table: Tensor) -> Tensor:
    return reference.pool_backward(grad, x, plan, frame_table)


@_pool_backward.register_fake
def _(grad, x, plan, frame_table):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor):
    x, plan, frame_table = ctx.saved_tensors
    return _pool_backward(grad.contiguous(), x, plan, frame_table), None, None


_pool.register_autograd(_backward, setup_context=_setup_context)
