"""Packing of kept video tokens (DESIGN.md op 1): gather them into [total_kept, D] for varlen
attention, scatter them back with a learnable mask token, and the fused mask-and-pack op."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._mask_plan import plan_mask
from vidcore.ops._validation import check_backend, check_tensor
from vidcore.ops.token_mask import TokenMask, mask_of

__all__ = ["pack", "unpack", "mask_and_pack"]


def _token_rows(op: str, name: str, x: Tensor, frames: Sequence[int],
                frame_size: tuple[int, int], device: torch.device | None) -> Tensor:
    """x as [num_tokens, D] rows, after checking it has the layout of the batch: [B, T, H, W, D]
    (all T_b equal; any T when B = 0) or [sum_b T_b, H, W, D]."""
    check_tensor(op, name, x, dims=(4, 5), device=device)
    height, width = frame_size
    if x.dim() == 5:
        batch_frames = x.shape[1] if len(frames) == 0 else frames[0]
        expected = (len(frames), batch_frames, height, width)
        equal_t = len(set(frames)) <= 1
    else:
        expected, equal_t = (sum(frames), height, width), True
    if not equal_t or tuple(x.shape[:-1]) != expected:
        raise ValueError(f"{op}: {name} of shape {tuple(x.shape)} does not match the mask's "
                         f"num_frames {list(frames)} and frame_size {frame_size}: expected "
                         f"[B, T, H, W, D] with equal T or [sum T_b, H, W, D]")
    if not x.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (token rows are copied as bytes)")
    return x.view(sum(frames) * height * width, x.shape[-1])


def pack(x: Tensor, mask: TokenMask, *, backend: str = "auto") -> Tensor:
    """Gather the kept tokens: [B, T, H, W, D] or [sum T_b, H, W, D] -> [total_kept, D].

    Videos follow each other, each in ascending token order; `mask.cu_seqlens` delimits them.
    Any dtype; x must be contiguous. Differentiable in x (the gradient scatters back, zeros
    at masked tokens). Backends: CPU -> csrc/cpu/token_pack.cpp; CUDA -> csrc/cuda/token_pack.cu.
    """
    check_backend("pack", backend)
    mask = _checked_mask("pack", mask)
    rows = _token_rows("pack", "x", x, mask.num_frames, mask.frame_size, mask.keep_idx.device)
    return (reference.pack if backend == "torch" else _pack)(rows, mask.keep_idx)


def unpack(packed: Tensor, mask: TokenMask, fill: Tensor, *, backend: str = "auto") -> Tensor:
    """Scatter kept tokens back: [total_kept, D] -> [sum T_b, H, W, D], masked tokens = fill.

    `fill` [D] is typically a learnable mask token; gradients flow to packed and to fill (the
    sum over masked positions, in one fixed order: bit-identical on every backend and thread
    count). Returns the ragged layout; `.view(B, T, H, W, D)` it when all T_b are equal.
    Backends as `pack`.
    """
    check_backend("unpack", backend)
    mask = _checked_mask("unpack", mask)
    check_tensor("unpack", "packed", packed, dims=(2,), device=mask.keep_idx.device)
    if packed.shape[0] != mask.total_kept or not packed.is_contiguous():
        raise ValueError(f"unpack: packed must be contiguous [total_kept={mask.total_kept}, D], "
                         f"got {tuple(packed.shape)}")
    check_tensor("unpack", "fill", fill, dims=(1,), dtypes=(packed.dtype,), device=packed.device)
    if fill.shape[0] != packed.shape[1]:
        raise ValueError(f"unpack: fill must have shape ({packed.shape[1]},), got "
                         f"{tuple(fill.shape)}")
    fn = reference.unpack if backend == "torch" else _unpack
    rows = fn(packed, mask.keep_idx, fill.contiguous(), mask.num_tokens)
    return rows.view(sum(mask.num_frames), *mask.frame_size, packed.shape[1])


def mask_and_pack(
    x: Tensor,
    ratio: float | Sequence[float] | Tensor,
    *,
    pattern: str = "random",
    seed: int = 0,
    num_frames: Sequence[int] | Tensor | None = None,
    block: tuple[int, int, int] = (1, 2, 2),
    count_rule: str = "round",
    backend: str = "auto",
) -> tuple[Tensor, TokenMask]:
    """make_mask for x's layout and pack, in one op and one pass: the training path of ST-LLM
    dynamic masking. Equal, bit for bit, to make_mask followed by pack.

    Args:
        x: [B, T, H, W, D], or [sum T_b, H, W, D] with `num_frames` (B per-video counts).
        ratio, pattern, seed, block, count_rule, backend: as `make_mask`.
    Returns:
        (packed [total_kept, D], TokenMask); gradients flow to x as for `pack`.
    Backends: CPU -> csrc/cpu/token_mask.cpp (selection, compaction and row copy in one pass);
    CUDA -> csrc/cuda/token_mask.cu.
    """
    op = "mask_and_pack"
    check_backend(op, backend)
    check_tensor(op, "x", x, dims=(4, 5))
    if x.dim() == 5:
        if num_frames is not None:
            raise ValueError(f"{op}: num_frames is only for ragged x [sum T_b, H, W, D]")
        frames, batch = x.shape[1], x.shape[0]
    elif num_frames is None:
        raise ValueError(f"{op}: x [sum T_b, H, W, D] needs num_frames")
    else:
        frames, batch = num_frames, None
    plan = plan_mask(op, frames, tuple(x.shape[-3:-1]), ratio, batch_size=batch, pattern=pattern,
                     block=block, seed=seed, count_rule=count_rule, device=x.device)
    rows = _token_rows(op, "x", x, plan.frames, plan.frame_size, x.device)
    fn = reference.mask_and_pack if backend == "torch" else _mask_and_pack
    packed, keep_idx = fn(rows, plan.video_meta, *plan.op_args)
    return packed, mask_of(plan, keep_idx)


def _checked_mask(op: str, mask: object) -> TokenMask:
    if not isinstance(mask, TokenMask):
        raise TypeError(f"{op}: mask must be a TokenMask, got {type(mask).__name__}")
    return mask.checked(op)


@torch.library.custom_op("vidcore::pack", mutates_args=())
def _pack(x: Tensor, keep_idx: Tensor) -> Tensor:
    return reference.pack(x, keep_idx)


@_pack.register_fake
def _(x, keep_idx):
    return x.new_empty(keep_idx.shape[0], x.shape[1])


@torch.library.custom_op("vidcore::unpack", mutates_args=())
def _unpack(packed: Tensor, keep_idx: Tensor, fill: Tensor, num_rows: int) -> Tensor:
    return reference.unpack(packed, keep_idx, fill, num_rows)


@_unpack.register_fake
def _(packed, keep_idx, fill, num_rows):
    return packed.new_empty(num_rows, packed.shape[1])


@torch.library.custom_op("vidcore::unpack_fill_grad", mutates_args=())
def _unpack_fill_grad(grad_out: Tensor, keep_idx: Tensor) -> Tensor:
    return reference.unpack_fill_grad(grad_out, keep_idx)


@_unpack_fill_grad.register_fake
def _(grad_out, keep_idx):
    return grad_out.new_empty(grad_out.shape[1])


@torch.library.custom_op("vidcore::mask_and_pack", mutates_args=())
def _mask_and_pack(x: Tensor, video_meta: Tensor, height: int, width: int, pattern: str,
                   block: list[int], seed: int, total_kept: int,
                   max_frames: int) -> tuple[Tensor, Tensor]:
    return reference.mask_and_pack(x, video_meta, height, width, pattern, block, seed, total_kept,
                                   max_frames)


@_mask_and_pack.register_fake
def _(x, video_meta, height, width, pattern, block, seed, total_kept, max_frames):
    return x.new_empty(total_kept, x.shape[1]), video_meta.new_empty(total_kept)


def _scatter_setup(ctx, inputs, output) -> None:
    """pack and mask_and_pack: x's gradient scatters the packed gradient back by keep_idx."""
    keep_idx = output[1] if isinstance(output, tuple) else inputs[1]
    ctx.save_for_backward(keep_idx)
    ctx.num_rows = inputs[0].shape[0]
    ctx.num_inputs = len(inputs)


def _scatter_backward(ctx, grad: Tensor, *unused_grads):
    (keep_idx,) = ctx.saved_tensors
    zeros = grad.new_zeros(grad.shape[1])
    grad_x = _unpack(grad.contiguous(), keep_idx, zeros, ctx.num_rows)
    return (grad_x,) + (None,) * (ctx.num_inputs - 1)


def _unpack_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])


def _unpack_backward(ctx, grad: Tensor):
    (keep_idx,) = ctx.saved_tensors
    grad = grad.contiguous()
    return _pack(grad, keep_idx), None, _unpack_fill_grad(grad, keep_idx), None


_pack.register_autograd(_scatter_backward, setup_context=_scatter_setup)
_mask_and_pack.register_autograd(_scatter_backward, setup_context=_scatter_setup)
_unpack.register_autograd(_unpack_backward, setup_context=_unpack_setup)
