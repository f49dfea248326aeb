"""Axis attention: softmax self-attention along one axis of a token grid, every other axis and
every head an independent sequence, read through strides (no permuted copies). Task-Adapter++
runs a frozen ViT block's attention along the frames of each video, within each frame and
across the videos of an episode: three calls of this op on views of one QKV projection."""
from __future__ import annotations

import math
from functools import reduce
from operator import mul

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.kernels import axis_attention_cpu as _cpu
from vidcore.ops._axis_attention_args import (
    DTYPES,
    OP,
    check_backward_args,
    check_op_args,
    lse_dtype,
)
from vidcore.ops._validation import check_backend, check_same_shape, check_tensor

__all__ = ["axis_attention"]

def axis_attention(q: Tensor, k: Tensor, v: Tensor, *, dim: int, scale: float | None = None,
                   backend: str = "auto") -> Tensor:
    """Attention along axis `dim` of a grid of tokens.

    For every index of the other grid axes and every head h, the tokens along `dim` attend to
    each other: `out[.., i, .., h] = sum_j softmax_j(scale <q[.., i, .., h], k[.., j, .., h]>)
    v[.., j, .., h]` (no mask). On ViT tokens x [B, T, L, H, d] (B videos, T frames, L tokens):
    dim=1 is Task-Adapter++'s temporal attention, dim=2 the spatial one, dim=0 its task
    attention across the videos of an episode.

    Args:
        q, k, v: [*grid, H, d] (at least one grid axis), one shape, dtype (float16, bfloat16,
            float32, float64) and device; any strides, e.g. slices of one fused QKV projection.
            The axes before `dim` (and those after it) are read as one when their strides
            allow (always for views of a contiguous projection); otherwise they are copied.
        dim: the grid axis to attend along (negative counts from the end, -3 = the last grid
            axis).
        scale: softmax scale, default 1 / sqrt(d).
        backend: "auto" (the device's kernel) or "torch" (the reference).
    Returns:
        [*grid, H, d] contiguous, dtype of q. Differentiable in q, k and v.
    Backends: CUDA -> kernels/axis_attention.py (Triton); CPU -> aten's CPU flash attention
        (kernels/axis_attention_cpu.py); other devices -> reference.
    """
    check_backend(OP, backend)
    axis = _check_args(q, k, v, dim)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{OP}: scale must be a finite float or None, got {scale!r}")
    q5, k5, v5 = (_canonical(t, axis) for t in (q, k, v))
    fn = reference.axis_attention if backend == "torch" else _axis_attention
    out, _ = fn(q5, k5, v5, float(scale))
    return out.view(q.shape)


def _check_args(q: object, k: object, v: object, dim: object) -> int:
    check_tensor(OP, "q", q, dtypes=DTYPES)
    if q.dim() < 3:
        raise ValueError(f"{OP}: q must be [*grid, H, d] with at least one grid axis, got "
                         f"shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        check_tensor(OP, name, t, dtypes=(q.dtype,), device=q.device)
        check_same_shape(OP, name, t, "q", q)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{OP}: dim must be an int, got {type(dim).__name__}")
    grid = q.dim() - 2
    axis = dim + q.dim() if dim < 0 else dim
    if not 0 <= axis < grid:
        raise ValueError(f"{OP}: dim must name a grid axis of q {tuple(q.shape)} (in "
                         f"[{-q.dim()}, {grid - 1}] and not H or d), got {dim}")
    return axis


def _canonical(t: Tensor, axis: int) -> Tensor:
    """[*grid, H, d] -> [P, S, R, H, d]: the axes before `axis` as P, after it as R."""
    shape = (reduce(mul, t.shape[:axis], 1), t.shape[axis],
             reduce(mul, t.shape[axis + 1:-2], 1), *t.shape[-2:])
    try:
        return t.view(shape)
    except RuntimeError:  # axes whose strides cannot merge: one copy
        return t.reshape(shape)


@torch.library.custom_op("vidcore::axis_attention", mutates_args=())
def _axis_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    check_op_args(q, k, v, scale)
    return reference.axis_attention(q, k, v, scale)


@_axis_attention.register_fake
def _(q, k, v, scale):
    check_op_args(q, k, v, scale)
    return (q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=lse_dtype(q.dtype)))


@torch.library.custom_op("vidcore::axis_attention_backward", mutates_args=())
def _axis_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                             lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    check_backward_args(grad_out, q, k, v, out, lse, scale)
    return reference.axis_attention_backward(grad_out, q, k, v, out, lse, scale)


@_axis_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, scale):
    check_backward_args(grad_out, q, k, v, out, lse, scale)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.set_materialize_grads(False)  # lse gets no gradient: no zero tensor for it


def _backward(ctx, grad_out: Tensor | None, _grad_lse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None
    grad_q, grad_k, grad_v = _axis_attention_backward(grad_out.contiguous(), q, k, v, out, lse,
                                                      ctx.scale)
    return grad_q, grad_k, grad_v, None


_axis_attention.register_autograd(_backward, setup_context=_setup_context)

_axis_attention.register_kernel("cpu")(_cpu.axis_attention_cpu_fwd)
_axis_attention_backward.register_kernel("cpu")(_cpu.axis_attention_cpu_bwd)

if TRITON is not None:
    from vidcore.kernels import axis_attention as _triton

    _axis_attention.register_kernel("cuda")(_triton.axis_attention_fwd)
    _axis_attention_backward.register_kernel("cuda")(_triton.axis_attention_bwd)
