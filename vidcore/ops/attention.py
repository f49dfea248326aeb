"""Cross-modal and varlen attention with temporal frame ranges (DESIGN.md op 3)."""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.ops._validation import check_backend, check_int, check_tensor

__all__ = ["attention"]

_OP = "attention"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_HEAD_DIM = 256


def attention(
    q: Tensor, k: Tensor, v: Tensor, *,
    cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
    causal: bool = False, scale: float | None = None,
    tokens_per_frame: int | None = None, q_frame_range: Tensor | None = None,
    return_lse: bool = False, backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention over packed variable-length sequences, with GQA and temporal masks.

    Query i of a sequence (Lq queries, Lk keys) sees key j iff (causal off or
    j <= i + Lk - Lq, bottom-right aligned) and (no ranges or
    start_i <= j // tokens_per_frame < end_i). Queries that see no key output zeros and lse -inf.
    Key blocks outside every range of a query block are skipped, so cost falls with sparsity.

    Args:
        q: [total_q, Hq, d] packed with `cu_seqlens_q`, or [B, Lq, Hq, d] without offsets.
        k, v: [total_k, Hk, d] or [B, Lk, Hk, d]; Hq % Hk == 0 (GQA/MQA); d <= 256.
        cu_seqlens_q, cu_seqlens_k: [B + 1] int32 offsets (both or neither).
        max_seqlen_q, max_seqlen_k: longest sequences (host ints; needed for CUDA offsets,
            derived from CPU offsets when omitted).
        causal: bottom-right aligned causal mask. scale: default 1 / sqrt(d).
        tokens_per_frame, q_frame_range: keys are grouped in frames of `tokens_per_frame` tokens
            within each sequence; `q_frame_range` [total_q, 2] int32 gives each query's [start,
            end) frame range (see vidcore.ops.frame_ranges for common layouts).
        return_lse: also return lse, float32 [Hq, total_q] ([B, Hq, Lq] for batched inputs).
        backend: "auto" or "torch" (the reference).
    Returns:
        out like q (and lse). Both are differentiable in q, k, v (lse's gradient is what
        split-key attention merged by `merge_attention_states` needs).
    Backends: CUDA -> kernels/attention.py + kernels/attention_backward.py (Triton); CPU ->
    reference (per-sequence blocks, never a [total_q, total_k] matrix).
    """
    check_backend(_OP, backend)
    batched = _check_tensors(q, k, v)
    if batched:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            raise ValueError(f"{_OP}: cu_seqlens_q/k are for packed [total, H, d] inputs")
        batch, len_q, len_k = q.shape[0], q.shape[1], k.shape[1]
        cu_seqlens_q = torch.arange(0, (batch + 1) * len_q, len_q, dtype=torch.int32).to(q.device)
        cu_seqlens_k = torch.arange(0, (batch + 1) * len_k, len_k, dtype=torch.int32).to(q.device)
        max_seqlen_q, max_seqlen_k = len_q, len_k
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
    else:
        max_seqlen_q = _check_offsets("cu_seqlens_q", cu_seqlens_q, max_seqlen_q, q)
        max_seqlen_k = _check_offsets("cu_seqlens_k", cu_seqlens_k, max_seqlen_k, k)
        if cu_seqlens_q.shape != cu_seqlens_k.shape:
            raise ValueError(f"{_OP}: cu_seqlens_q and cu_seqlens_k must both have B + 1 entries")
    tokens_per_frame = _check_ranges(tokens_per_frame, q_frame_range, q)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    fn = reference.attention if backend == "torch" else _attention
    out, lse = fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal),
                  scale, tokens_per_frame, q_frame_range)
    if batched:
        out = out.unflatten(0, (batch, len_q))
        lse = lse.unflatten(1, (batch, len_q)).transpose(0, 1)
    return (out, lse) if return_lse else out


def _check_tensors(q: Tensor, k: Tensor, v: Tensor) -> bool:
    check_tensor(_OP, "q", q, dims=(3, 4), dtypes=_DTYPES)
    check_tensor(_OP, "k", k, dims=(q.dim(),), dtypes=(q.dtype,), device=q.device)
    check_tensor(_OP, "v", v, dims=(q.dim(),), dtypes=(q.dtype,), device=q.device)
    if k.shape != v.shape:
        raise ValueError(f"{_OP}: v must have the shape of k {tuple(k.shape)}, got "
                         f"{tuple(v.shape)}")
    if q.dim() == 4 and k.shape[0] != q.shape[0]:
        raise ValueError(f"{_OP}: q and k must have the same batch size, got {q.shape[0]} and "
                         f"{k.shape[0]}")
    heads_q, dim = q.shape[-2:]
    if k.shape[-1] != dim or not 1 <= dim <= _MAX_HEAD_DIM:
        raise ValueError(f"{_OP}: head dim must be the same for q, k, v and at most "
                         f"{_MAX_HEAD_DIM}, got q {dim} and k {k.shape[-1]}")
    if k.shape[-2] == 0 or heads_q % k.shape[-2]:
        raise ValueError(f"{_OP}: the number of query heads ({heads_q}) must be a multiple of the "
                         f"number of key/value heads ({k.shape[-2]})")
    if q.device.type == "cuda" and q.dtype == torch.float64:
        raise TypeError(f"{_OP}: float64 runs on CPU only (the reference)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{_OP}: {name} must have a contiguous last (head) dim")
    return q.dim() == 4


def _check_offsets(name: str, cu: Tensor | None, max_seqlen: int | None, rows: Tensor) -> int:
    if cu is None:
        raise ValueError(f"{_OP}: packed [total, H, d] inputs need {name}")
    check_tensor(_OP, name, cu, dims=(1,), dtypes=(torch.int32,), device=rows.device)
    if cu.shape[0] < 1:
        raise ValueError(f"{_OP}: {name} must have B + 1 >= 1 entries")
    if cu.device.type == "cpu" and not torch.compiler.is_compiling():  # no device sync here
        offsets = cu.tolist()
        if offsets[0] != 0 or offsets[-1] != rows.shape[0] or any(
                b < a for a, b in itertools.pairwise(offsets)):
            raise ValueError(f"{_OP}: {name} must start at 0, be non-decreasing and end at "
                             f"{rows.shape[0]} (the packed length), got {offsets}")
        longest = max((b - a for a, b in itertools.pairwise(offsets)), default=0)
        max_seqlen = longest if max_seqlen is None else max_seqlen
        if max_seqlen < longest:
            raise ValueError(f"{_OP}: max_seqlen for {name} is {max_seqlen} < {longest}")
    if max_seqlen is None:
        raise ValueError(f"{_OP}: pass max_seqlen with {name} on {cu.device} (host ints keep "
                         f"attention sync-free)")
    check_int(_OP, f"max_seqlen for {name}", max_seqlen, minimum=0)
    return max_seqlen


def _check_ranges(tokens_per_frame: int | None, q_frame_range: Tensor | None, q: Tensor) -> int:
    if (tokens_per_frame is None) != (q_frame_range is None):
        raise ValueError(f"{_OP}: tokens_per_frame and q_frame_range go together")
    if q_frame_range is None:
        return 0
    check_int(_OP, "tokens_per_frame", tokens_per_frame, minimum=1)
    check_tensor(_OP, "q_frame_range", q_frame_range, dims=(2,), dtypes=(torch.int32,),
                 device=q.device)
    if q_frame_range.shape != (q.shape[0], 2) or not q_frame_range.is_contiguous():
        raise ValueError(f"{_OP}: q_frame_range must be contiguous [total_q={q.shape[0]}, 2], "
                         f"got {tuple(q_frame_range.shape)}")
    return tokens_per_frame


@torch.library.custom_op("vidcore::attention", mutates_args=())
def _attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
               max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
               tokens_per_frame: int, q_frame_range: Tensor | None) -> tuple[Tensor, Tensor]:
    return reference.attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               causal, scale, tokens_per_frame, q_frame_range)


@_attention.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
      tokens_per_frame, q_frame_range):
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)


@torch.library.custom_op("vidcore::attention_backward", mutates_args=())
def _attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                        lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                        max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                        tokens_per_frame: int, q_frame_range: Tensor | None,
                        grad_lse: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    return reference.attention_backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                        max_seqlen_q, max_seqlen_k, causal, scale,
                                        tokens_per_frame, q_frame_range, grad_lse)


@_attention_backward.register_fake
def _(grad_out, q, k, v, *rest):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_q, cu_k, *scalars, q_frame_range = inputs
    ctx.save_for_backward(q, k, v, *output, cu_q, cu_k, q_frame_range)
    ctx.scalars = scalars  # max_seqlen_q, max_seqlen_k, causal, scale, tokens_per_frame
    ctx.set_materialize_grads(False)  # an unused lse (the common case) costs nothing


def _backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    q, k, v, out, lse, cu_q, cu_k, q_frame_range = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    if grad_lse is not None:  # rows that saw no key have lse = -inf and no gradient to pass on
        grad_lse = grad_lse.masked_fill(torch.isneginf(lse), 0).contiguous()
    dq, dk, dv = _attention_backward(grad_out, q, k, v, out, lse, cu_q, cu_k, *ctx.scalars,
                                     q_frame_range, grad_lse)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_attention.register_autograd(_backward, setup_context=_setup_context)

if TRITON is not None:
    from vidcore.kernels.attention import attention_fwd
    from vidcore.kernels.attention_backward import attention_bwd

    _attention.register_kernel("cuda")(attention_fwd)
    _attention_backward.register_kernel("cuda")(attention_bwd)
