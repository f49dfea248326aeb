"""Varlen attention backward (FlashAttention-2 scheme): GQA, causal, window, softcap, ranges.

With P = softmax(S), delta_i = sum_d dO_i * O_i - dlse_i and S the (softcapped) scores:
  dV = P^T dO,  dS = P * (dO V^T - delta) [* (1 - tanh^2) with a softcap],
  dK = scale * dS^T Q,  dQ = scale * dS K.
Three kernels, and the gradients are bit-identical run to run:
- delta: one pass over dO and O writing only [Hq, total_q] float32;
- the main kernel: one program per (key block, sequence, key/value head), five GEMMs per tile
  pair. It accumulates dK and dV over every query head of its group (the GQA reduction) and every
  query block that sees its keys, and adds each tile's dQ share to a float32 dQ buffer, the key
  blocks of a query block taking turns in key order (a lock per query block and head), so the
  sums are deterministic without recomputing S and dP in a second pass (the 7-GEMM scheme).
  Without frame ranges the query blocks that see a key block form one interval, walked by one
  loop whose Q/dO loads Triton software-pipelines (cp.async); with them each query block is
  tested first and the loads sit behind that test (not pipelined);
- dq: scales the float32 buffer into dQ's dtype.
Programs are flattened onto grid axis 0 (axes 1 and 2 stop at 65535), longest first.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._attention_common import (
    INTERPRET,
    _key_span,
    _load_rows,
    _row_bounds,
    _seq_bounds,
    _store_rows,
    dot_precision,
    row_alignment,
    score_params,
    window_bounds,
)
from vidcore.kernels._attention_configs import bwd_autotune
from vidcore.kernels._attention_steps import _bwd_step
from vidcore.kernels._launch import check_grid, launch

__all__ = ["attention_bwd"]

_ROWS = 64  # rows per program of the delta and dq passes
_LOCK_ROWS = 16  # the smallest BLOCK_M of any config: one lock per 16 packed query rows


@triton.jit
def _attention_bwd_delta_kernel(
    out_ptr, do_ptr, grad_lse_ptr, delta_ptr, total_q, heads, stride_n, stride_h, stride_l_h,
    HAS_GRAD_LSE: tl.constexpr, HEAD_DIM: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[h, i] = <dO[i, h], O[i, h]> - dlse[h, i], float32."""
    pid = tl.program_id(0).to(tl.int64)
    row_blocks = tl.cdiv(total_q, BLOCK_M)
    head = pid // row_blocks
    first = pid % row_blocks * BLOCK_M
    rows = first + tl.arange(0, BLOCK_M)
    row_mask = rows < total_q
    out = _load_rows(out_ptr, 0, first, total_q, head, stride_n, stride_h, HEAD_DIM, BLOCK_M,
                     BLOCK_D, ALIGN, True)
    grad = _load_rows(do_ptr, 0, first, total_q, head, stride_n, stride_h, HEAD_DIM, BLOCK_M,
                      BLOCK_D, ALIGN, True)
    delta = tl.sum(out * grad, 1)
    if HAS_GRAD_LSE:
        delta -= tl.load(grad_lse_ptr + head * stride_l_h + rows, mask=row_mask, other=0.0)
    tl.store(delta_ptr + head * stride_l_h + rows, delta, mask=row_mask)


@triton.jit
def _visible_rows(first_col, q_len, k_len, window_left, window_right, CAUSAL: tl.constexpr,
                  HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[row_lo, row_hi): the query rows that may see a key of the block first_col : +BLOCK_N
    under the causal bound and the window (frame ranges are tested per query block); row_lo
    aligned to BLOCK_M."""
    last_col = tl.minimum(first_col + BLOCK_N, k_len) - 1
    shift = k_len - q_len
    row_lo = tl.zeros([], tl.int32)
    row_hi = q_len
    if CAUSAL:  # i sees j iff j <= i + shift
        row_lo = tl.maximum(row_lo, first_col - shift)
    if HAS_WINDOW:  # i + shift - left <= j <= i + shift + right
        row_lo = tl.maximum(row_lo, first_col - window_right - shift)
        row_hi = tl.minimum(row_hi, last_col + window_left + 1 - shift)
    return row_lo // BLOCK_M * BLOCK_M, row_hi


@bwd_autotune
@triton.jit(do_not_specialize=["batch", "tokens_per_frame", "window_left", "window_right"])
def _attention_bwd_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, dq_acc_ptr, lock_ptr,
    cu_q_ptr, cu_k_ptr, range_ptr,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_l_h,
    batch, heads_kv, group, score_scale, cap_log2, scale, tokens_per_frame,
    window_left, window_right,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
    HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ALIGN: tl.constexpr, LOCK_ROWS: tl.constexpr,
    INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    kv_head = pid % heads_kv
    seq = pid // heads_kv % batch
    # Key block 0 first: under a causal mask the first keys are seen by the most queries; and
    # a key block only waits on lower ones, which were started before it.
    first_col = pid // heads_kv // batch * BLOCK_N
    q_start, q_len, k_start, k_len = _seq_bounds(cu_q_ptr, cu_k_ptr, seq)
    if first_col >= k_len:
        return
    cols = first_col + tl.arange(0, BLOCK_N)
    k = _load_rows(k_ptr, k_start, first_col, k_len, kv_head, stride_k_n, stride_k_h, HEAD_DIM,
                   BLOCK_N, BLOCK_D, ALIGN, UPCAST)
    v = _load_rows(v_ptr, k_start, first_col, k_len, kv_head, stride_k_n, stride_k_h, HEAD_DIM,
                   BLOCK_N, BLOCK_D, ALIGN, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    rows_lo, rows_hi = _visible_rows(first_col, q_len, k_len, window_left, window_right, CAUSAL,
                                     HAS_WINDOW, BLOCK_M, BLOCK_N)
    heads = heads_kv * group
    for member in range(group):
        head = kv_head * group + member
        for row0 in range(rows_lo, rows_hi, BLOCK_M):
            rows = row0 + tl.arange(0, BLOCK_M)
            # The forward's view of this query block: which key blocks it visits (this one's
            # rank among them is its turn to add to dq) and which it runs unmasked.
            row_lo, row_hi = _row_bounds(range_ptr, q_start, rows, q_len, k_len,
                                         tokens_per_frame, window_left, window_right, CAUSAL,
                                         HAS_RANGE, HAS_WINDOW)
            lo, hi, mid_lo, mid_hi = _key_span(rows < q_len, row_lo, row_hi, k_len, BLOCK_N)
            visits = (lo <= first_col) & (first_col < hi)
            masked = (first_col < mid_lo) | (first_col + BLOCK_N > mid_hi)
            # One lock per (query block, head) at slot packed_row // LOCK_ROWS + seq: distinct
            # within a sequence (BLOCK_M >= LOCK_ROWS) and across (the + seq).
            slot = (q_start + row0) // LOCK_ROWS + seq
            lock = lock_ptr + slot * heads + head
            if HAS_RANGE:  # frame ranges may skip query blocks inside [rows_lo, rows_hi)
                if visits:
                    dk, dv = _bwd_step(
                        dk, dv, k, v, cols, row0, head, row_lo, row_hi, masked,
                        (first_col - lo) // BLOCK_N, True, lock, q_ptr, do_ptr, lse_ptr,
                        delta_ptr, dq_acc_ptr, q_start, q_len, stride_q_n, stride_q_h,
                        stride_l_h, score_scale, cap_log2, SOFTCAP, UPCAST, DOT_PRECISION,
                        HEAD_DIM, ALIGN, BLOCK_M, BLOCK_D, INTERPRETED)
            else:  # an unconditional step: its loads are software-pipelined
                dk, dv = _bwd_step(
                    dk, dv, k, v, cols, row0, head, row_lo, row_hi, masked,
                    (first_col - lo) // BLOCK_N, visits, lock, q_ptr, do_ptr, lse_ptr, delta_ptr,
                    dq_acc_ptr, q_start, q_len, stride_q_n, stride_q_h, stride_l_h, score_scale,
                    cap_log2, SOFTCAP, UPCAST, DOT_PRECISION, HEAD_DIM, ALIGN, BLOCK_M, BLOCK_D,
                    INTERPRETED)
    _store_rows(dk_ptr, dk * scale, k_start, first_col, k_len, kv_head, stride_k_n, stride_k_h,
                HEAD_DIM, BLOCK_N, BLOCK_D, ALIGN)
    _store_rows(dv_ptr, dv, k_start, first_col, k_len, kv_head, stride_k_n, stride_k_h, HEAD_DIM,
                BLOCK_N, BLOCK_D, ALIGN)


@triton.jit
def _attention_bwd_dq_kernel(
    dq_acc_ptr, dq_ptr, total_q, heads, stride_n, stride_h, scale,
    HEAD_DIM: tl.constexpr, ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dq = scale * dq_acc in dq's dtype."""
    pid = tl.program_id(0).to(tl.int64)
    row_blocks = tl.cdiv(total_q, BLOCK_M)
    head = pid // row_blocks
    first = pid % row_blocks * BLOCK_M
    dq = _load_rows(dq_acc_ptr, 0, first, total_q, head, stride_n, stride_h, HEAD_DIM, BLOCK_M,
                    BLOCK_D, ALIGN, False)
    _store_rows(dq_ptr, dq * scale, 0, first, total_q, head, stride_n, stride_h, HEAD_DIM,
                BLOCK_M, BLOCK_D, ALIGN)


def attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                  cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, max_seqlen_q: int,
                  max_seqlen_k: int, causal: bool, scale: float, tokens_per_frame: int,
                  q_frame_range: Tensor | None, window_left: int = -1, window_right: int = -1,
                  softcap: float = 0.0, grad_lse: Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher: (dq, dk, dv) like (q, k, v). q, k, v, out, grad_out are made contiguous so that
    q/out/grad_out and k/v share strides. `grad_lse` [Hq, total_q] (the gradient of lse, or
    None) enters only through delta. Extra memory: delta [Hq, total_q] and a float32 dQ
    buffer like q (as flash-attention's dq_accum), plus one int32 lock per query block and head."""
    q, k, v, out, grad_out = (t.contiguous() for t in (q, k, v, out, grad_out))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    batch = cu_seqlens_q.shape[0] - 1
    if batch == 0 or (q.numel() == 0 and k.numel() == 0):
        return dq.zero_(), dk.zero_(), dv.zero_()
    total_q, heads, head_dim = q.shape
    heads_kv = k.shape[1]
    align = row_alignment(q, k)
    block_d = max(16, triton.next_power_of_2(head_dim))
    rows_grid = (check_grid("attention_backward", triton.cdiv(total_q, _ROWS) * heads),)
    lse = lse.float().contiguous()
    delta = torch.empty_like(lse)  # [Hq, total_q] float32
    if total_q > 0:
        launch(_attention_bwd_delta_kernel, rows_grid, out, grad_out,
               grad_lse.float().contiguous() if grad_lse is not None else lse, delta, total_q,
               heads, q.stride(0) // align, q.stride(1) // align, lse.stride(0),
               HAS_GRAD_LSE=grad_lse is not None, HEAD_DIM=head_dim, ALIGN=align, BLOCK_M=_ROWS,
               BLOCK_D=block_d, device=q.device)
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    locks = torch.zeros(triton.cdiv(total_q, _LOCK_ROWS) + batch, heads, dtype=torch.int32,
                        device=q.device)
    has_window, left, right = window_bounds("attention_backward", window_left, window_right,
                                            max_seqlen_q, max_seqlen_k)
    score_scale, cap_log2 = score_params(scale, softcap)
    has_range = q_frame_range is not None

    def grid(meta: dict) -> tuple[int]:
        blocks = triton.cdiv(max(max_seqlen_k, 1), meta["BLOCK_N"])
        return (check_grid("attention_backward", blocks * batch * heads_kv),)

    launch(_attention_bwd_kernel, grid, q, k, v, grad_out, lse, delta, dk, dv, dq_acc, locks,
           cu_seqlens_q, cu_seqlens_k, q_frame_range if has_range else cu_seqlens_q,
           q.stride(0) // align, q.stride(1) // align, k.stride(0) // align,
           k.stride(1) // align, lse.stride(0), batch, heads_kv, heads // heads_kv,
           score_scale, cap_log2, scale, max(tokens_per_frame, 1), left, right,
           HEAD_DIM=head_dim, CAUSAL=bool(causal), HAS_RANGE=has_range, HAS_WINDOW=has_window,
           SOFTCAP=softcap > 0, UPCAST=INTERPRET or q.dtype == torch.float32,
           DOT_PRECISION=dot_precision(q.dtype), ALIGN=align, LOCK_ROWS=_LOCK_ROWS,
           INTERPRETED=INTERPRET, BLOCK_D=block_d, device=q.device)
    if total_q > 0:
        launch(_attention_bwd_dq_kernel, rows_grid, dq_acc, dq, total_q, heads,
               q.stride(0) // align, q.stride(1) // align, scale, HEAD_DIM=head_dim, ALIGN=align,
               BLOCK_M=_ROWS, BLOCK_D=block_d, device=q.device)
    return dq, dk, dv
