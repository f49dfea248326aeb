"""Varlen attention backward (FlashAttention-2 scheme) with GQA, causal and frame ranges.

With P = softmax(S), S = scale * q k^T (masked), delta_i = sum_d dO_i * O_i - dlse_i:
  dV = P^T dO,  dS = P * (dO V^T - delta),  dK = scale * dS^T Q,  dQ = scale * dS K.
Two kernels, no atomics: one program per (BLOCK_N keys, sequence, key/value head) accumulates
dK and dV over every query head of its group (the GQA reduction) and every query block that can
see its keys; one program per (BLOCK_M queries, sequence, query head) accumulates dQ over the
key span the forward visited. Blocks every query sees skip the mask, as in the forward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels.attention import (
    AUTOTUNE,
    INTERPRET,
    LOG2E,
    _dot,
    _frame_ranges,
    _key_block,
    _load_rows,
    _query_block,
    _seq_bounds,
    _tile,
    _unmasked_span,
    _visible,
    check_mask_features,
    dot_precision,
)

__all__ = ["attention_bwd"]


@triton.jit
def _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask):
    """lse in the log2 domain (+inf for rows that saw no key, so their P is 0) and delta."""
    lse = tl.load(lse_ptr + head * stride_l_h + q_start + rows, mask=row_mask, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(delta_ptr + head * stride_l_h + q_start + rows, mask=row_mask, other=0.0)
    return lse2, delta


@triton.jit
def _dkdv_step(dk, dv, k, v, cols, rows, row_mask, start, end, head, q_ptr, do_ptr, lse_ptr,
               delta_ptr, q_start, q_len, k_len, stride_q_n, stride_q_h, stride_l_h, dims,
               dim_mask, qk_scale, tokens_per_frame, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_RANGE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dv += P^T dO and dk += dS^T Q (unscaled) from the query rows `rows` of one head."""
    q = _load_rows(q_ptr, q_start, rows, row_mask, head, stride_q_n, stride_q_h, dims, dim_mask,
                   UPCAST)
    do = _load_rows(do_ptr, q_start, rows, row_mask, head, stride_q_n, stride_q_h, dims,
                    dim_mask, UPCAST)
    lse2, delta = _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask)
    probs = tl.exp2(_dot(q, tl.trans(k), DOT_PRECISION) * qk_scale - lse2[:, None])
    if MASKED:
        visible = _visible(rows, cols, q_len, k_len, start, end, tokens_per_frame,
                           CAUSAL, HAS_RANGE)
        probs = tl.where(visible, probs, 0.0)
    dv += _dot(tl.trans(probs).to(do.dtype), do, DOT_PRECISION)
    dscores = probs * (_dot(do, tl.trans(v), DOT_PRECISION) - delta[:, None])
    dk += _dot(tl.trans(dscores).to(q.dtype), q, DOT_PRECISION)
    return dk, dv


@AUTOTUNE
@triton.jit
def _attention_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr, range_ptr,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_l_h,
    qk_scale, scale, tokens_per_frame, group, head_dim,
    CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(1)
    kv_head = tl.program_id(2).to(tl.int64)
    q_start, q_len, k_start, k_len = _seq_bounds(cu_q_ptr, cu_k_ptr, seq)
    first_col = tl.program_id(0).to(tl.int64) * BLOCK_N
    if first_col >= k_len:
        return
    cols, col_mask, dims, dim_mask = _tile(first_col, k_len, head_dim, BLOCK_N, BLOCK_D)
    k = _load_rows(k_ptr, k_start, cols, col_mask, kv_head, stride_k_n, stride_k_h, dims, dim_mask,
                   UPCAST)
    v = _load_rows(v_ptr, k_start, cols, col_mask, kv_head, stride_k_n, stride_k_h, dims, dim_mask,
                   UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    row_lo = 0
    if CAUSAL:  # query i sees key j only if i >= j - (k_len - q_len)
        row_lo = tl.maximum(first_col - (k_len - q_len), 0) // BLOCK_M * BLOCK_M
    first_frame = first_col // tokens_per_frame
    last_frame = (tl.minimum(first_col + BLOCK_N, k_len) - 1) // tokens_per_frame
    for member in range(group):
        head = kv_head * group + member
        for row0 in range(row_lo, q_len, BLOCK_M):
            rows = row0 + tl.arange(0, BLOCK_M)
            row_mask = rows < q_len
            start, end = _frame_ranges(range_ptr, q_start, rows, row_mask, HAS_RANGE)
            overlaps = True
            if HAS_RANGE:  # skip query blocks whose frame ranges miss these keys
                nonempty = row_mask & (start < end)
                overlaps = (tl.max(tl.where(nonempty, end, 0)) > first_frame) & (
                    tl.min(tl.where(nonempty, start, last_frame + 1)) <= last_frame)
            if overlaps:
                # Query blocks that see every key here skip the visibility mask: the key block
                # is then the forward's unmasked span of this query block, clipped to it.
                mid_lo, mid_hi = _unmasked_span(row0, row_mask, q_len, k_len, start, end,
                                                tokens_per_frame, first_col, first_col + BLOCK_N,
                                                CAUSAL, HAS_RANGE, BLOCK_N)
                if mid_hi - mid_lo == BLOCK_N:
                    dk, dv = _dkdv_step(
                        dk, dv, k, v, cols, rows, row_mask, start, end, head, q_ptr, do_ptr,
                        lse_ptr, delta_ptr, q_start, q_len, k_len, stride_q_n, stride_q_h,
                        stride_l_h, dims, dim_mask, qk_scale, tokens_per_frame, False, CAUSAL,
                        HAS_RANGE, UPCAST, DOT_PRECISION)
                else:
                    dk, dv = _dkdv_step(
                        dk, dv, k, v, cols, rows, row_mask, start, end, head, q_ptr, do_ptr,
                        lse_ptr, delta_ptr, q_start, q_len, k_len, stride_q_n, stride_q_h,
                        stride_l_h, dims, dim_mask, qk_scale, tokens_per_frame, True, CAUSAL,
                        HAS_RANGE, UPCAST, DOT_PRECISION)
    offs = (k_start + cols)[:, None] * stride_k_n + kv_head * stride_k_h + dims[None, :]
    mask = col_mask[:, None] & dim_mask[None, :]
    tl.store(dk_ptr + offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dq_step(dq, q, do, lse2, delta, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len, kv_head,
             stride_k_n, stride_k_h, dims, dim_mask, start, end, qk_scale, tokens_per_frame,
             MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
             UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq += dS K over keys key0 : key0 + BLOCK_N (unscaled); unmasked steps skip the mask."""
    cols, k, v = _key_block(k_ptr, v_ptr, k_start, k_len, key0, kv_head, stride_k_n, stride_k_h,
                            stride_k_n, stride_k_h, dims, dim_mask, UPCAST, BLOCK_N)
    probs = tl.exp2(_dot(q, tl.trans(k), DOT_PRECISION) * qk_scale - lse2[:, None])
    if MASKED:
        visible = _visible(rows, cols, q_len, k_len, start, end, tokens_per_frame,
                           CAUSAL, HAS_RANGE)
        probs = tl.where(visible, probs, 0.0)
    dscores = probs * (_dot(do, tl.trans(v), DOT_PRECISION) - delta[:, None])
    return dq + _dot(dscores.to(k.dtype), k, DOT_PRECISION)


@AUTOTUNE
@triton.jit
def _attention_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_q_ptr, cu_k_ptr, range_ptr,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_l_h,
    qk_scale, scale, tokens_per_frame, group, head_dim,
    CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)
    kv_head = head // group
    q_start, q_len, k_start, k_len = _seq_bounds(cu_q_ptr, cu_k_ptr, seq)
    first_row = tl.program_id(0).to(tl.int64) * BLOCK_M
    if first_row >= q_len:
        return
    rows, row_mask, dims, dim_mask, start, end, lo, hi, mid_lo, mid_hi = _query_block(
        range_ptr, q_start, q_len, k_len, first_row, head_dim, tokens_per_frame,
        CAUSAL, HAS_RANGE, BLOCK_M, BLOCK_N, BLOCK_D)
    q = _load_rows(q_ptr, q_start, rows, row_mask, head, stride_q_n, stride_q_h, dims, dim_mask,
                   UPCAST)
    do = _load_rows(do_ptr, q_start, rows, row_mask, head, stride_q_n, stride_q_h, dims, dim_mask,
                    UPCAST)
    lse2, delta = _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for key0 in range(lo, mid_lo, BLOCK_N):
        dq = _dq_step(dq, q, do, lse2, delta, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len,
                      kv_head, stride_k_n, stride_k_h, dims, dim_mask, start, end, qk_scale,
                      tokens_per_frame, True, CAUSAL, HAS_RANGE, UPCAST, DOT_PRECISION, BLOCK_N)
    for key0 in range(mid_lo, mid_hi, BLOCK_N):
        dq = _dq_step(dq, q, do, lse2, delta, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len,
                      kv_head, stride_k_n, stride_k_h, dims, dim_mask, start, end, qk_scale,
                      tokens_per_frame, False, CAUSAL, HAS_RANGE, UPCAST, DOT_PRECISION, BLOCK_N)
    for key0 in range(mid_hi, hi, BLOCK_N):
        dq = _dq_step(dq, q, do, lse2, delta, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len,
                      kv_head, stride_k_n, stride_k_h, dims, dim_mask, start, end, qk_scale,
                      tokens_per_frame, True, CAUSAL, HAS_RANGE, UPCAST, DOT_PRECISION, BLOCK_N)
    tl.store(dq_ptr + (q_start + rows)[:, None] * stride_q_n + head * stride_q_h + dims[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])


def attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                  max_seqlen_k: int, causal: bool, scale: float, tokens_per_frame: int,
                  q_frame_range: Tensor | None, window_left: int = -1, window_right: int = -1,
                  softcap: float = 0.0, grad_lse: Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher: (dq, dk, dv) like (q, k, v). q, k, v, out, grad_out are made contiguous so that
    q/out/grad_out and k/v share strides. `grad_lse` [Hq, total_q] (the gradient of lse, or
    None) enters only through delta."""
    check_mask_features(window_left, window_right, softcap)
    q, k, v, out = (t.contiguous() for t in (q, k, v, out))
    grad_out = grad_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    batch = cu_seqlens_q.shape[0] - 1
    if batch == 0 or (q.numel() == 0 and k.numel() == 0):
        return dq, dk.zero_(), dv.zero_()
    # delta_i = <dO_i, O_i>, the softmax-Jacobian term shared by both kernels: [Hq, total_q]
    delta = (grad_out.float() * out.float()).sum(-1).t()
    delta = (delta if grad_lse is None else delta - grad_lse.float()).contiguous()
    lse = lse.float().contiguous()
    has_range = q_frame_range is not None
    common = dict(
        CAUSAL=causal, HAS_RANGE=has_range, UPCAST=INTERPRET or q.dtype == torch.float32,
        DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[2])),
    )
    args = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), lse.stride(0), scale * LOG2E,
            scale, max(tokens_per_frame, 1), q.shape[1] // k.shape[1], q.shape[2])
    ranges = q_frame_range if has_range else cu_seqlens_q
    def grid_kv(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(max(max_seqlen_k, 1), meta["BLOCK_N"]), batch, k.shape[1]

    def grid_q(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(max(max_seqlen_q, 1), meta["BLOCK_M"]), batch, q.shape[1]

    _attention_bwd_dkdv_kernel[grid_kv](q, k, v, grad_out, lse, delta, dk, dv, cu_seqlens_q,
                                        cu_seqlens_k, ranges, *args, **common)
    _attention_bwd_dq_kernel[grid_q](q, k, v, grad_out, lse, delta, dq, cu_seqlens_q, cu_seqlens_k,
                                     ranges, *args, **common)
    return dq, dk, dv
