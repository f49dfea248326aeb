"""Cross-modal and varlen attention with temporal frame ranges (DESIGN.md op 3)."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.kernels.attention_cpu import attention_cpu_bwd, attention_cpu_fwd
from vidcore.ops._attention_args import (
    DTYPES,
    MAX_HEAD_DIM,
    MAX_TOKENS,
    check_backward_args,
    check_offsets,
    check_op_args,
    normalise_mask_args,
)
from vidcore.ops._validation import check_backend, check_int, check_tensor

__all__ = ["attention"]

_OP = "attention"


def attention(
    q: Tensor, k: Tensor, v: Tensor, *,
    cu_seqlens_q: Tensor | None = None, cu_seqlens_k: Tensor | None = None,
    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None,
    causal: bool = False, scale: float | None = None,
    tokens_per_frame: int | None = None, q_frame_range: Tensor | None = None,
    window: tuple[int, int] | None = None, softcap: float | None = None,
    return_lse: bool = False, backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax attention over packed variable-length sequences, with GQA and temporal masks.

    Query i of a sequence (Lq queries, Lk keys), at key position i' = i + Lk - Lq, sees key j
    iff (causal off or j <= i', bottom-right aligned) and (left < 0 or j >= i' - left) and
    (right < 0 or j <= i' + right) and (no ranges or start_i <= j // tokens_per_frame < end_i).
    Scores are scale * <q_i, k_j>, capped to softcap * tanh(score / softcap) before the softmax
    when softcap is set (lse is then the logsumexp of the capped scores). Queries that see no
    key output zeros and lse -inf. Key blocks no query of a block sees are skipped, so cost falls
    with sparsity.

    Args:
        q: [total_q, Hq, d] packed with `cu_seqlens_q`, or [B, Lq, Hq, d] without offsets.
        k, v: [total_k, Hk, d] or [B, Lk, Hk, d]; Hq % Hk == 0 (GQA/MQA); d <= 256.
        cu_seqlens_q, cu_seqlens_k: [B + 1] int32 offsets (both or neither). Offsets on a GPU
            are not read (no host sync): they must start at 0, be non-decreasing and end at
            the packed length, with no sequence longer than max_seqlen (CPU offsets are
            checked, in eager mode here and under torch.compile by the CPU kernel).
        max_seqlen_q, max_seqlen_k: longest sequences (host ints; needed for CUDA offsets,
            derived from CPU offsets when omitted).
        causal: bottom-right aligned causal mask. scale: default 1 / sqrt(d).
        tokens_per_frame, q_frame_range: keys are grouped in frames of `tokens_per_frame` tokens
            within each sequence; `q_frame_range` [total_q, 2] int32 gives each query's [start,
            end) frame range (see vidcore.ops.frame_ranges for common layouts).
        window: (left, right) sliding window around i', ints >= -1 (-1 = unbounded); None =
            (-1, -1). softcap: float > 0, or None (off).
        return_lse: also return lse, float32 [Hq, total_q] ([B, Hq, Lq] for batched inputs;
            float64 for float64 inputs).
        backend: "auto" or "torch" (the reference).
    Returns:
        out like q (and lse). Both are differentiable in q, k, v (lse's gradient is what
        split-key attention merged by `merge_attention_states` needs).
    Backends: CUDA -> kernels/attention.py + kernels/attention_backward.py (Triton); CPU ->
    kernels/attention_cpu.py (aten's CPU flash attention per run of queries, on the key slice
    the run sees; softcap runs the reference).
    """
    check_backend(_OP, backend)
    batched = _check_tensors(q, k, v)
    if batched:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            raise ValueError(f"{_OP}: cu_seqlens_q/k are for packed [total, H, d] inputs")
        batch, len_q, len_k = q.shape[0], q.shape[1], k.shape[1]
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
        _check_totals(q, k)
        # Built on the device (no host-to-device copy: CUDA graphs can capture the call).
        cu_seqlens_q = torch.arange(batch + 1, dtype=torch.int32, device=q.device) * len_q
        cu_seqlens_k = torch.arange(batch + 1, dtype=torch.int32, device=q.device) * len_k
        max_seqlen_q, max_seqlen_k = len_q, len_k
    else:
        _check_totals(q, k)
        max_seqlen_q = _check_offsets("cu_seqlens_q", cu_seqlens_q, max_seqlen_q, q)
        max_seqlen_k = _check_offsets("cu_seqlens_k", cu_seqlens_k, max_seqlen_k, k)
        if cu_seqlens_q.shape != cu_seqlens_k.shape:
            raise ValueError(f"{_OP}: cu_seqlens_q and cu_seqlens_k must both have B + 1 entries")
    tokens_per_frame, window_left, window_right = normalise_mask_args(
        _check_ranges(tokens_per_frame, q_frame_range, q), *_check_window(window), q.shape[0],
        k.shape[0])
    scale = _check_scale(scale, q)
    softcap = _check_softcap(softcap)
    fn = reference.attention if backend == "torch" else _attention
    out, lse = fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal),
                  scale, tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    if batched:
        out = out.unflatten(0, (batch, len_q))
        lse = lse.unflatten(1, (batch, len_q)).transpose(0, 1)
    return (out, lse) if return_lse else out


def _check_tensors(q: Tensor, k: Tensor, v: Tensor) -> bool:
    check_tensor(_OP, "q", q, dims=(3, 4), dtypes=DTYPES)
    check_tensor(_OP, "k", k, dims=(q.dim(),), dtypes=(q.dtype,), device=q.device)
    check_tensor(_OP, "v", v, dims=(q.dim(),), dtypes=(q.dtype,), device=q.device)
    if k.shape != v.shape:
        raise ValueError(f"{_OP}: v must have the shape of k {tuple(k.shape)}, got "
                         f"{tuple(v.shape)}")
    if q.dim() == 4 and k.shape[0] != q.shape[0]:
        raise ValueError(f"{_OP}: q and k must have the same batch size, got {q.shape[0]} and "
                         f"{k.shape[0]}")
    heads_q, dim = q.shape[-2:]
    if k.shape[-1] != dim or not 1 <= dim <= MAX_HEAD_DIM:
        raise ValueError(f"{_OP}: head dim must be the same for q, k, v and at most "
                         f"{MAX_HEAD_DIM}, got q {dim} and k {k.shape[-1]}")
    if k.shape[-2] == 0 or heads_q % k.shape[-2]:
        raise ValueError(f"{_OP}: the number of query heads ({heads_q}) must be a multiple of the "
                         f"number of key/value heads ({k.shape[-2]})")
    if q.device.type == "cuda" and q.dtype == torch.float64:
        raise TypeError(f"{_OP}: float64 runs on CPU only (the reference)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{_OP}: {name} must have a contiguous last (head) dim")
    return q.dim() == 4


def _check_totals(q: Tensor, k: Tensor) -> None:
    for name, t in (("q", q), ("k", k)):
        if t.shape[0] > MAX_TOKENS:
            raise ValueError(f"{_OP}: {name} has {t.shape[0]} tokens; int32 offsets allow at "
                             f"most {MAX_TOKENS}")


def _check_offsets(name: str, cu: Tensor | None, max_seqlen: int | None, rows: Tensor) -> int:
    if cu is None:
        raise ValueError(f"{_OP}: packed [total, H, d] inputs need {name}")
    check_tensor(_OP, name, cu, dims=(1,), dtypes=(torch.int32,), device=rows.device)
    if cu.shape[0] < 1:
        raise ValueError(f"{_OP}: {name} must have B + 1 >= 1 entries")
    if max_seqlen is not None:
        check_int(_OP, f"max_seqlen for {name}", max_seqlen, minimum=0)
    if cu.device.type == "cpu" and not torch.compiler.is_compiling():  # no device sync here
        longest = check_offsets(name, cu.tolist(), rows.shape[0], max_seqlen)
        return longest if max_seqlen is None else max_seqlen
    if max_seqlen is None:
        raise ValueError(f"{_OP}: pass max_seqlen with {name} on {cu.device} (host ints keep "
                         f"attention sync-free)")
    # What can be checked without reading the offsets: B sequences hold all the rows.
    if max_seqlen * (cu.shape[0] - 1) < rows.shape[0]:
        raise ValueError(f"{_OP}: max_seqlen for {name} is {max_seqlen}, but {cu.shape[0] - 1} "
                         f"sequences of at most that length cannot hold {rows.shape[0]} rows")
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


def _check_window(window: object) -> tuple[int, int]:
    if window is None:
        return -1, -1
    if not isinstance(window, tuple | list) or len(window) != 2:
        raise TypeError(f"{_OP}: window must be a (left, right) pair of ints, got {window!r}")
    for name, value in zip(("window[0] (left)", "window[1] (right)"), window, strict=True):
        check_int(_OP, name, value, minimum=-1)
    return window[0], window[1]


def _check_scale(scale: object, q: Tensor) -> float:
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{_OP}: scale must be a real number (a Python float), got "
                        f"{type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"{_OP}: scale must be finite, got {scale}")
    return float(scale)


def _check_softcap(softcap: object) -> float:
    if softcap is None:
        return 0.0
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"{_OP}: softcap must be a real number or None, got "
                        f"{type(softcap).__name__}")
    if not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"{_OP}: softcap must be finite and > 0 (None = off), got {softcap}")
    return float(softcap)


@torch.library.custom_op("vidcore::attention", mutates_args=())
def _attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
               max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
               tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int,
               window_right: int, softcap: float) -> tuple[Tensor, Tensor]:
    return reference.attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                               causal, scale, tokens_per_frame, q_frame_range, window_left,
                               window_right, softcap)


@_attention.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
      tokens_per_frame, q_frame_range, window_left, window_right, softcap):
    check_op_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                  tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)


@torch.library.custom_op("vidcore::attention_backward", mutates_args=())
def _attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                        lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                        max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                        tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int,
                        window_right: int, softcap: float, grad_lse: Tensor | None
                        ) -> tuple[Tensor, Tensor, Tensor]:
    return reference.attention_backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                        max_seqlen_q, max_seqlen_k, causal, scale,
                                        tokens_per_frame, q_frame_range, window_left,
                                        window_right, softcap, grad_lse)


@_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
      scale, tokens_per_frame, q_frame_range, window_left, window_right, softcap, grad_lse):
    check_op_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                  tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    check_backward_args(grad_out, q, out, lse, grad_lse)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, tpf, q_frame_range, *rest = inputs
    ctx.save_for_backward(q, k, v, *output, cu_q, cu_k, q_frame_range)
    # max_seqlen_q, max_seqlen_k, causal, scale, tokens_per_frame | window_left, window_right,
    # softcap
    ctx.scalars, ctx.mask_scalars = (max_q, max_k, causal, scale, tpf), rest
    ctx.set_materialize_grads(False)  # an unused lse (the common case) costs nothing


def _backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    q, k, v, out, lse, cu_q, cu_k, q_frame_range = ctx.saved_tensors
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out.contiguous()
    if grad_lse is not None:  # rows that saw no key have lse = -inf and no gradient to pass on
        grad_lse = grad_lse.masked_fill(torch.isneginf(lse), 0).contiguous()
    dq, dk, dv = _attention_backward(grad_out, q, k, v, out, lse, cu_q, cu_k, *ctx.scalars,
                                     q_frame_range, *ctx.mask_scalars, grad_lse)
    return dq, dk, dv, *(None,) * 11


_attention.register_autograd(_backward, setup_context=_setup_context)
_attention.register_kernel("cpu")(attention_cpu_fwd)
_attention_backward.register_kernel("cpu")(attention_cpu_bwd)

if TRITON is not None:
    from vidcore.kernels.attention import attention_fwd
    from vidcore.kernels.attention_backward import attention_bwd

    _attention.register_kernel("cuda")(attention_fwd)
    _attention_backward.register_kernel("cuda")(attention_bwd)
