"""The inner steps of the attention backward kernels (one query block x one key block).

`masked` is a constexpr where the caller knows it (the unmasked middle of a span) and a runtime
flag where it does not (frame ranges decide per query block).
"""
from __future__ import annotations

import triton
import triton.language as tl
from vidcore.kernels._attention_common import _frame_ranges, _load_rows, _scores, _visible

__all__ = ["_dkdv_step", "_dq_step", "_row_stats"]


@triton.jit
def _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask):
    """lse in the log2 domain (+inf for rows that saw no key, so their P is 0) and delta."""
    offs = head.to(tl.int64) * stride_l_h + q_start + rows
    lse = tl.load(lse_ptr + offs, mask=row_mask, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(delta_ptr + offs, mask=row_mask, other=0.0)
    return lse2, delta


@triton.jit
def _dkdv_step(dk, dv, k, v, cols, row0, head, q_ptr, do_ptr, lse_ptr, delta_ptr, range_ptr,
               q_start, q_len, k_len, stride_q_n, stride_q_h, stride_l_h, score_scale, cap_log2,
               tokens_per_frame, window_left, window_right, masked, CAUSAL: tl.constexpr,
               HAS_RANGE: tl.constexpr, HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
               UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
               ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """dv += P^T dO and dk += dS^T Q (unscaled) from query rows row0 : row0 + BLOCK_M of one
    head, computed transposed ([keys, queries]) so no tile needs a layout change."""
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    q = _load_rows(q_ptr, q_start, rows, row_mask, head, stride_q_n, stride_q_h, HEAD_DIM, BLOCK_D,
                   ALIGN, UPCAST)
    do = _load_rows(do_ptr, q_start, rows, row_mask, head, stride_q_n, stride_q_h, HEAD_DIM,
                    BLOCK_D, ALIGN, UPCAST)
    lse2, delta = _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask)
    scores_t, tanh_t = _scores(k, tl.trans(q), score_scale, cap_log2, SOFTCAP, DOT_PRECISION)
    probs_t = tl.exp2(scores_t - lse2[None, :])
    if masked:
        start, end = _frame_ranges(range_ptr, q_start, rows, row_mask, HAS_RANGE)
        visible = _visible(rows[None, :], cols[:, None], start[None, :], end[None, :], q_len,
                           k_len, tokens_per_frame, window_left, window_right, CAUSAL, HAS_RANGE,
                           HAS_WINDOW)
        probs_t = tl.where(visible, probs_t, 0.0)
    dv += tl.dot(probs_t.to(do.dtype), do, input_precision=DOT_PRECISION)
    dprobs_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    dscores_t = probs_t * (dprobs_t - delta[None, :])
    if SOFTCAP:
        dscores_t *= 1.0 - tanh_t * tanh_t
    dk += tl.dot(dscores_t.to(q.dtype), q, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dq_step(dq, q, do, lse2, delta, key0, rows, start, end, k_ptr, v_ptr, k_start, k_len, q_len,
             kv_head, stride_k_n, stride_k_h, score_scale, cap_log2, tokens_per_frame,
             window_left, window_right, masked, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
             HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
             DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr, ALIGN: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dq += dS K over keys key0 : key0 + BLOCK_N (unscaled)."""
    cols = key0 + tl.arange(0, BLOCK_N)
    col_mask = cols < k_len
    k = _load_rows(k_ptr, k_start, cols, col_mask, kv_head, stride_k_n, stride_k_h, HEAD_DIM,
                   BLOCK_D, ALIGN, UPCAST)
    v = _load_rows(v_ptr, k_start, cols, col_mask, kv_head, stride_k_n, stride_k_h, HEAD_DIM,
                   BLOCK_D, ALIGN, UPCAST)
    scores, tanh = _scores(q, tl.trans(k), score_scale, cap_log2, SOFTCAP, DOT_PRECISION)
    probs = tl.exp2(scores - lse2[:, None])
    if masked:
        visible = _visible(rows[:, None], cols[None, :], start[:, None], end[:, None], q_len,
                           k_len, tokens_per_frame, window_left, window_right, CAUSAL, HAS_RANGE,
                           HAS_WINDOW)
        probs = tl.where(visible, probs, 0.0)
    dscores = probs * (tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION) - delta[:, None])
    if SOFTCAP:
        dscores *= 1.0 - tanh * tanh
    return dq + tl.dot(dscores.to(k.dtype), k, input_precision=DOT_PRECISION)
