"""Global-local pooling of video tokens in one pass (DESIGN.md op 2): ST-LLM's global-local
input, SlowFast-LLaVA, Video-ChatGPT, LLaVA-NeXT-Video and MiniGPT4-Video token layouts."""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_backend, check_int, check_tensor
from vidcore.ops.pool_cache import PoolPlan, pool_cache
from vidcore.ops.pool_views import View, check_selection, check_view, lower_views

__all__ = ["pool", "PooledTokens", "merge_tokens"]

_OP = "pool"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_METADATA = ("cu_seqlens", "frame_index", "row", "col", "view")


class PooledTokens:
    """tokens: [B, L, D] when x is [B, T, H, W, D] (every video has the same length L), else
    packed [sum L_b, D]. cu_seqlens [B + 1] int32 and max_seqlen delimit videos in the packed
    order. Per token (in packed order, int32): frame_index (first frame of its temporal window,
    within its video), row and col (in its view's pooled grid) and view (index into `views`).

    The metadata is the caller's own: each field is copied from the plan cache the first time it
    is read (and kept), so editing it in place changes nothing else, and a caller who reads only
    `tokens` pays for no copy."""

    __slots__ = ("_own", "_shared", "max_seqlen", "tokens")

    def __init__(self, tokens: Tensor, cu_seqlens: Tensor, max_seqlen: int, frame_index: Tensor,
                 row: Tensor, col: Tensor, view: Tensor) -> None:
        self.tokens, self.max_seqlen = tokens, max_seqlen
        self._shared = dict(zip(_METADATA, (cu_seqlens, frame_index, row, col, view),
                                strict=True))
        self._own: dict[str, Tensor] = {}

    def _field(self, name: str) -> Tensor:
        own = self._own.get(name)
        if own is None:
            own = self._own[name] = self._shared[name].clone()
        return own

    cu_seqlens = property(lambda self: self._field("cu_seqlens"))
    frame_index = property(lambda self: self._field("frame_index"))
    row = property(lambda self: self._field("row"))
    col = property(lambda self: self._field("col"))
    view = property(lambda self: self._field("view"))

    def __repr__(self) -> str:
        return (f"PooledTokens(tokens={self.tokens.dtype}{tuple(self.tokens.shape)}, "
                f"max_seqlen={self.max_seqlen}, videos={self._shared['cu_seqlens'].numel() - 1})")


def pool(x: Tensor, views: Sequence[View], *, num_frames: Sequence[int] | Tensor | None = None,
         backend: str = "auto") -> PooledTokens:
    """Every view of every video, read from x in one kernel launch, in the order given.

    Args:
        x: [B, T, H, W, D], or ragged [sum T_b, H, W, D] with `num_frames` (B host ints).
            Empty sizes work: B = 0, T_b = 0, H or W = 0 (views that reduce the grid then raise)
            and D = 0 give the tokens that exist, possibly none.
        views: View(frames, temporal, spatial, mode) per output view; tokens of a video come
            view after view, each in (temporal window, row, col) order. Checked on every call.
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        PooledTokens. Differentiable in x (mean, max, copy); max follows torch's max pooling
        (first maximum in scan order, last NaN), and gradients are computed as a gather, so they
        are bit-identical run to run and for any CPU thread count, like the forward.
    Backends: CPU -> csrc/cpu/pool.cpp (backward: pool_backward.cpp); CUDA ->
    csrc/cuda/pool.cu, one launch (backward: pool_backward.cu, two); else the reference.
    Lowered views are cached on x's device: see `vidcore.ops.pool_cache`.
    """
    check_backend(_OP, backend)
    frames = _check_layout(x, num_frames)
    if isinstance(views, (View, str)) or not isinstance(views, Sequence) or not views:
        raise ValueError(f"{_OP}: views must be a non-empty sequence of View, got {views!r}")
    views = tuple(check_view(_OP, i, v) for i, v in enumerate(views))
    height, width, channels = x.shape[-3], x.shape[-2], x.shape[-1]
    plan = _lower(views, tuple(frames), height, width, x.device)
    rows = x.reshape(sum(frames), height, width, channels)
    if backend == "torch":
        tokens = reference.pool(rows, plan.plan, plan.table, validate=False)
    else:
        tokens = _pool(rows if rows.is_contiguous() else rows.contiguous(), plan.plan, plan.table)
    if x.dim() == 5:
        per_video = plan.lengths[0] if plan.lengths else \
            _lower(views, (x.shape[1],), height, width, x.device).lengths[0]
        tokens = tokens.view(x.shape[0], per_video, channels)
    return PooledTokens(tokens, plan.cu_seqlens, plan.max_seqlen, *plan.meta.unbind(0))


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


def _lower(views: tuple[View, ...], frames: tuple[int, ...], height: int, width: int,
           device: torch.device) -> PoolPlan:
    """The checked views' plan on x's device, from the plan cache (so repeated calls skip the
    host work and copies); under torch.compile it is traced (and baked into the graph)."""
    def build() -> PoolPlan:
        check_selection(_OP, views, frames, height, width)
        plan, table, meta, lengths = lower_views(views, frames, height, width)
        cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        return PoolPlan(plan.to(device), table.to(device), meta.to(device),
                        cu_seqlens.to(device), max(lengths, default=0), tuple(lengths))

    if torch.compiler.is_compiling():
        return build()
    return pool_cache.get((views, frames, height, width, device), build)


def _check_layout(x: Tensor, num_frames: Sequence[int] | Tensor | None) -> list[int]:
    check_tensor(_OP, "x", x, dims=(4, 5), dtypes=_DTYPES)
    if x.dim() == 5:
        if num_frames is not None:
            raise ValueError(f"{_OP}: num_frames is only for ragged x [sum T_b, H, W, D]")
        return [x.shape[1]] * x.shape[0]
    if num_frames is None:
        raise ValueError(f"{_OP}: ragged x [sum T_b, H, W, D] needs num_frames")
    if isinstance(num_frames, Tensor):
        if num_frames.is_floating_point() or num_frames.dim() != 1 \
                or num_frames.device.type != "cpu":
            raise ValueError(f"{_OP}: num_frames as a tensor must be a 1-D integer CPU tensor "
                             f"(host metadata), got {num_frames.dtype} {tuple(num_frames.shape)} "
                             f"on {num_frames.device}")
        num_frames = num_frames.tolist()
    frames = list(num_frames)
    for t in frames:
        check_int(_OP, "num_frames", t, minimum=0)
    if sum(frames) != x.shape[0]:
        raise ValueError(f"{_OP}: num_frames {frames} sum to {sum(frames)}, but x has "
                         f"{x.shape[0]} frames")
    return frames


# Direct calls (torch.compile graphs, export, other frontends) reach the kernels with plans nobody
# checked: the C++ CPU kernels check every plan row and frame-table entry (RuntimeError), the
# CUDA kernels assert them on the device, and this default implementation (other devices, or no
# vidcore._C) checks them in reference.pool. See csrc/include/vidcore/pool.h for the contract.
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
