"""Packing of kept video tokens (DESIGN.md op 1): gather them into [total_kept, D] for varlen
attention, scatter them back with a learnable mask token, and the fused mask-and-pack path."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_backend, check_tensor
from vidcore.ops.token_mask import TokenMask, make_mask

__all__ = ["pack", "unpack", "mask_and_pack"]


def _token_rows(op: str, name: str, x: Tensor, mask: TokenMask) -> Tensor:
    """x as [num_tokens, D] rows, after checking it has the layout the mask was made for:
    [B, T, H, W, D] (all T_b equal) or [sum_b T_b, H, W, D]."""
    check_tensor(op, name, x, dims=(4, 5), device=mask.keep_idx.device)
    height, width = mask.frame_size
    frames = mask.num_frames
    if x.dim() == 5:
        expected = (len(frames), frames[0] if frames else 0, height, width)
        equal_t = len(set(frames)) <= 1
    else:
        expected, equal_t = (sum(frames), height, width), True
    if not equal_t or tuple(x.shape[:-1]) != expected:
        raise ValueError(f"{op}: {name} of shape {tuple(x.shape)} does not match the mask's "
                         f"num_frames {list(frames)} and frame_size {mask.frame_size}: expected "
                         f"[B, T, H, W, D] with equal T or [sum T_b, H, W, D]")
    if not x.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (token rows are copied as bytes)")
    return x.view(-1, x.shape[-1])


def pack(x: Tensor, mask: TokenMask, *, backend: str = "auto") -> Tensor:
    """Gather the kept tokens: [B, T, H, W, D] or [sum T_b, H, W, D] -> [total_kept, D].

    Videos follow each other, each in ascending token order; `mask.cu_seqlens` delimits them.
    Any dtype; x must be contiguous. Differentiable in x (the gradient scatters back, zeros
    at masked tokens). Backends: CPU -> csrc/cpu/token_mask.cpp; CUDA -> csrc/cuda/token_mask.cu.
    """
    check_backend("pack", backend)
    rows = _token_rows("pack", "x", x, mask)
    return (reference.pack if backend == "torch" else _pack)(rows, mask.keep_idx)


def unpack(packed: Tensor, mask: TokenMask, fill: Tensor, *, backend: str = "auto") -> Tensor:
    """Scatter kept tokens back: [total_kept, D] -> [sum T_b, H, W, D], masked tokens = fill.

    `fill` [D] is typically a learnable mask token; gradients flow to packed and to fill (the
    sum over masked positions). Returns the ragged layout; `.view(B, T, H, W, D)` it when all
    T_b are equal. Backends as `pack`.
    """
    check_backend("unpack", backend)
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
    backend: str = "auto",
) -> tuple[Tensor, TokenMask]:
    """make_mask for x's layout, then pack: the training path of ST-LLM dynamic masking.

    Args:
        x: [B, T, H, W, D], or [sum T_b, H, W, D] with `num_frames` (B per-video counts).
        ratio, pattern, seed, block, backend: as `make_mask`.
    Returns:
        (packed [total_kept, D], TokenMask). Two launches on GPU: select (one block per video)
        then a full-bandwidth row gather.
    """
    check_tensor("mask_and_pack", "x", x, dims=(4, 5))
    if x.dim() == 5:
        if num_frames is not None:
            raise ValueError("mask_and_pack: num_frames is only for ragged x [sum T_b, H, W, D]")
        frames, batch = x.shape[1], x.shape[0]
    elif num_frames is None:
        raise ValueError("mask_and_pack: x [sum T_b, H, W, D] needs num_frames")
    else:
        frames, batch = num_frames, None
    mask = make_mask(frames, tuple(x.shape[-3:-1]), ratio, batch_size=batch, pattern=pattern,
                     block=block, seed=seed, device=x.device, backend=backend)
    return pack(x, mask, backend=backend), mask


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


def _pack_setup(ctx, inputs, output) -> None:
    x, keep_idx = inputs
    ctx.save_for_backward(keep_idx)
    ctx.num_rows = x.shape[0]


def _pack_backward(ctx, grad: Tensor):
    (keep_idx,) = ctx.saved_tensors
    zeros = grad.new_zeros(grad.shape[1])
    return _unpack(grad.contiguous(), keep_idx, zeros, ctx.num_rows), None


def _unpack_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])


def _unpack_backward(ctx, grad: Tensor):
    (keep_idx,) = ctx.saved_tensors
    grad = grad.contiguous()
    return _pack(grad, keep_idx), None, _unpack_fill_grad(grad, keep_idx), None


_pack.register_autograd(_pack_backward, setup_context=_pack_setup)
_unpack.register_autograd(_unpack_backward, setup_context=_unpack_setup)
