"""Multi-source attention (ActionLLM's Cross-Modality Interaction Block): every query source
attends to every key source with its own softmax, contexts averaged per query source."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.kernels.multi_source_attention_cpu import (
    multi_source_attention_cpu_bwd,
    multi_source_attention_cpu_fwd,
)
from vidcore.ops._validation import check_backend, check_tensor

__all__ = ["multi_source_attention"]

_OP = "multi_source_attention"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_HEAD_DIM = 256  # the Triton kernels hold a whole head in one tile


def multi_source_attention(
    queries: Sequence[Tensor],
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    *,
    scale: float | None = None,
    backend: str = "auto",
) -> list[Tensor]:
    """`out_a = mean_m softmax(q_a k_m^T * scale) v_m` for every query source a.

    ActionLLM's interaction block is this with the three modalities (text clues, video, future
    queries) as both query and key sources: nine attention maps, each with its own softmax, in
    one fused pass per direction. No mask; a key source with no keys contributes a zero context.

    Args:
        queries: A >= 1 tensors [B, H, S_a, d].
        keys, values: M >= 1 tensors each, keys[m] and values[m] both [B, H, S_m, d].
            B, H, d <= 256, dtype (float16, bfloat16, float32; float64 on CPU) and device
            shared by all; any strides. Differentiable in all of them.
        scale: softmax scale, default 1 / sqrt(d).
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        A tensors [B, H, S_a, d], contiguous, dtype of the inputs.
    Backends: CUDA -> kernels/multi_source_attention.py (Triton); CPU ->
        kernels/multi_source_attention_cpu.py (aten's CPU flash attention per pair); other
        devices -> reference.
    """
    check_backend(_OP, backend)
    queries, keys, values = _check_args(queries, keys, values)
    head_dim = queries[0].shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{_OP}: scale must be a finite float or None, got {scale!r}")
    fn = reference.multi_source_attention if backend == "torch" else _multi_source_attention
    outs, _, _ = fn(queries, keys, values, float(scale))
    return outs


def _check_list(name: str, tensors: object) -> list[Tensor]:
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"{_OP}: {name} must be a list of tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{_OP}: {name} must hold at least one tensor")
    return list(tensors)


def _check_args(queries: object, keys: object, values: object
                ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    queries, keys, values = (_check_list(n, t) for n, t in
                             (("queries", queries), ("keys", keys), ("values", values)))
    if len(keys) != len(values):
        raise ValueError(f"{_OP}: keys and values must have the same number of sources, got "
                         f"{len(keys)} and {len(values)}")
    first = check_tensor(_OP, "queries[0]", queries[0], dims=(4,), dtypes=_DTYPES)
    batch, heads, _, head_dim = first.shape
    if not 1 <= head_dim <= _MAX_HEAD_DIM:
        raise ValueError(f"{_OP}: head dim d must be in [1, {_MAX_HEAD_DIM}], got shape "
                         f"{tuple(first.shape)}")
    if first.device.type == "cuda" and first.dtype == torch.float64:
        raise TypeError(f"{_OP}: float64 runs on CPU only (the reference)")
    for group, tensors in (("queries", queries), ("keys", keys), ("values", values)):
        for i, t in enumerate(tensors):
            check_tensor(_OP, f"{group}[{i}]", t, dims=(4,), dtypes=(first.dtype,),
                         device=first.device)
            b, h, _, d = t.shape
            if (b, h, d) != (batch, heads, head_dim):
                raise ValueError(f"{_OP}: {group}[{i}] must be [B={batch}, H={heads}, S, "
                                 f"d={head_dim}] like queries[0], got {tuple(t.shape)}")
    for m, (k, v) in enumerate(zip(keys, values, strict=True)):
        if k.shape != v.shape:
            raise ValueError(f"{_OP}: values[{m}] must have the shape of keys[{m}] "
                             f"{tuple(k.shape)}, got {tuple(v.shape)}")
    return queries, keys, values


def _check_backward_args(grad_outs: list[Tensor], queries: list[Tensor], keys: list[Tensor],
                         values: list[Tensor], lse: list[Tensor], partials: list[Tensor]) -> None:
    """What the backward kernels read: the forward's lse and partials, contiguous."""
    _check_args(queries, keys, values)
    sources = len(keys)
    lse_dtype = torch.promote_types(queries[0].dtype, torch.float32)
    for group, tensors in (("grad_outs", grad_outs), ("lse", lse), ("partials", partials)):
        if len(_check_list(group, tensors)) != len(queries):
            raise ValueError(f"{_OP}: {group} must have one tensor per query source")
    for a, q in enumerate(queries):
        for name, t, shape, dtype in (
                (f"grad_outs[{a}]", grad_outs[a], q.shape, q.dtype),
                (f"lse[{a}]", lse[a], (sources, *q.shape[:-1]), lse_dtype),
                (f"partials[{a}]", partials[a], (sources, *q.shape), q.dtype)):
            check_tensor(_OP, name, t, dtypes=(dtype,), device=q.device)
            if tuple(t.shape) != tuple(shape) or not t.is_contiguous():
                raise ValueError(f"{_OP}: {name} must be contiguous {tuple(shape)}, got "
                                 f"{tuple(t.shape)}")


def _checked_forward(kernel):
    """`kernel` behind the argument checks: direct torch.ops calls skip the public function,
    and a wrong shape must raise, not read out of bounds."""
    def forward(queries: list[Tensor], keys: list[Tensor], values: list[Tensor], scale: float):
        _check_args(queries, keys, values)
        return kernel(queries, keys, values, scale)
    return forward


def _checked_backward(kernel):
    def backward(grad_outs, queries, keys, values, lse, partials, scale):
        _check_backward_args(grad_outs, queries, keys, values, lse, partials)
        return kernel(grad_outs, queries, keys, values, lse, partials, scale)
    return backward


@torch.library.custom_op("vidcore::multi_source_attention", mutates_args=())
def _multi_source_attention(queries: list[Tensor], keys: list[Tensor], values: list[Tensor],
                            scale: float) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    return _checked_forward(reference.multi_source_attention)(queries, keys, values, scale)


@_multi_source_attention.register_fake
def _(queries, keys, values, scale):
    _check_args(queries, keys, values)
    lse_dtype = torch.promote_types(queries[0].dtype, torch.float32)
    sources = len(keys)
    return ([q.new_empty(q.shape) for q in queries],
            [q.new_empty((sources, *q.shape[:-1]), dtype=lse_dtype) for q in queries],
            [q.new_empty((sources, *q.shape)) for q in queries])


@torch.library.custom_op("vidcore::multi_source_attention_backward", mutates_args=())
def _multi_source_attention_backward(
    grad_outs: list[Tensor], queries: list[Tensor], keys: list[Tensor], values: list[Tensor],
    lse: list[Tensor], partials: list[Tensor], scale: float,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    return _checked_backward(reference.multi_source_attention_backward)(
        grad_outs, queries, keys, values, lse, partials, scale)


@_multi_source_attention_backward.register_fake
def _(grad_outs, queries, keys, values, lse, partials, scale):
    return ([q.new_empty(q.shape) for q in queries], [k.new_empty(k.shape) for k in keys],
            [v.new_empty(v.shape) for v in values])


def _setup_context(ctx, inputs, output) -> None:
    queries, keys, values, scale = inputs
    _, lse, partials = output
    ctx.counts = (len(queries), len(keys))
    ctx.scale = scale
    ctx.save_for_backward(*queries, *keys, *values, *lse, *partials)
    ctx.set_materialize_grads(False)  # lse and partials never get gradients: no zero tensors


def _backward(ctx, grad_outs: list[Tensor | None], _grad_lse, _grad_partials):
    num_q, num_k = ctx.counts
    saved = list(ctx.saved_tensors)
    queries, saved = saved[:num_q], saved[num_q:]
    keys, values, saved = saved[:num_k], saved[num_k:2 * num_k], saved[2 * num_k:]
    lse, partials = saved[:num_q], saved[num_q:]
    grad_outs = [torch.zeros_like(q) if g is None else g.contiguous()
                 for g, q in zip(grad_outs, queries, strict=True)]
    grad_q, grad_k, grad_v = _multi_source_attention_backward(
        grad_outs, queries, keys, values, lse, partials, ctx.scale)
    return grad_q, grad_k, grad_v, None


_multi_source_attention.register_autograd(_backward, setup_context=_setup_context)

_multi_source_attention.register_kernel("cpu")(_checked_forward(multi_source_attention_cpu_fwd))
_multi_source_attention_backward.register_kernel("cpu")(
    _checked_backward(multi_source_attention_cpu_bwd))

if TRITON is not None:
    from vidcore.kernels.multi_source_attention import multi_source_attention_fwd
    from vidcore.kernels.multi_source_attention_backward import multi_source_attention_bwd

    _multi_source_attention.register_kernel("cuda")(_checked_forward(multi_source_attention_fwd))
    _multi_source_attention_backward.register_kernel("cuda")(
        _checked_backward(multi_source_attention_bwd))
