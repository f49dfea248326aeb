"""Varlen attention forward: GQA, bottom-right causal, sliding window, softcap, frame ranges.

One program per (query block, sequence, key split, query head), all on grid axis 0 (axes 1
and 2 stop at 65535 programs), heads fastest so the query heads of one key/value head run side
by side, and each sequence's last query block first: under a causal mask it sees the most keys,
so the longest programs start in the first wave instead of forming a tail.
Online softmax in the exp2 domain over key blocks in [lo, hi): the keys some query of the block
can see (causal bound, window, frame ranges), so cost falls with the window and with temporal
sparsity; whole key blocks every query sees run without a mask.
Short queries over long keys (text over a long video, decoding) launch too few programs to fill
the GPU: the launcher then splits the keys across programs and combines the partial results
with the merge_attention_states kernel, as flash-attention's split-KV does.
out = softmax(s) v, lse = logsumexp(s) (natural log), s = scale q.k (softcapped).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._attention_common import (
    INTERPRET,
    _load_rows,
    _query_tile,
    _scores,
    _seq_bounds,
    _store_rows,
    dot_precision,
    row_alignment,
    score_params,
    window_bounds,
)
from vidcore.kernels._attention_configs import fwd_autotune
from vidcore.kernels._launch import check_grid, launch
from vidcore.kernels._target import target_of
from vidcore.kernels.merge_attention_states import merge_states_into

__all__ = ["attention_fwd", "plan_key_splits"]

_MIN_KEYS_PER_SPLIT = 512  # below this a split's merge costs more than its parallelism gains
_MAX_SPLITS = 64


@triton.jit
def _attend(acc, row_max, row_sum, q, key0, row_lo, row_hi, k_ptr, v_ptr, k_start, k_len,
            kv_head, stride_k_n, stride_k_h, stride_v_n, stride_v_h, score_scale, cap_log2,
            MASKED: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
            DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr, ALIGN: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One online-softmax step over keys key0 : key0 + BLOCK_N; masked steps keep each row's
    keys [row_lo, row_hi)."""
    cols = key0 + tl.arange(0, BLOCK_N)
    k = _load_rows(k_ptr, k_start, key0, k_len, kv_head, stride_k_n, stride_k_h, HEAD_DIM,
                   BLOCK_N, BLOCK_D, ALIGN, UPCAST)
    scores, _ = _scores(q, tl.trans(k), score_scale, cap_log2, SOFTCAP, DOT_PRECISION)
    if MASKED:
        visible = (cols[None, :] >= row_lo[:, None]) & (cols[None, :] < row_hi[:, None])
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with no key yet
    probs = tl.exp2(scores - safe_max[:, None])
    rescale = tl.exp2(row_max - safe_max)
    row_sum = row_sum * rescale + tl.sum(probs, 1)
    # V is loaded where it is used: loaded earlier, its tile would sit in registers through the
    # softmax (and spill at 128-row tiles).
    v = _load_rows(v_ptr, k_start, key0, k_len, kv_head, stride_v_n, stride_v_h, HEAD_DIM,
                   BLOCK_N, BLOCK_D, ALIGN, UPCAST)
    # Accumulate in the MMA's own accumulator (a separate product would double its registers).
    acc = tl.dot(probs.to(v.dtype), v, acc * rescale[:, None], input_precision=DOT_PRECISION)
    return acc, new_max, row_sum


@fwd_autotune
@triton.jit(do_not_specialize=["batch", "num_splits", "tokens_per_frame", "window_left",
                               "window_right"])
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr, range_ptr,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_v_n, stride_v_h,
    stride_o_split, stride_o_n, stride_o_h, stride_l_split, stride_l_h,
    batch, heads, group, num_splits,
    score_scale, cap_log2, tokens_per_frame, window_left, window_right,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
    HAS_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    head = pid % heads
    split = pid // heads % num_splits
    seq = pid // heads // num_splits % batch
    from_last = pid // heads // num_splits // batch  # 0: the sequence's last query block
    q_start, q_len, k_start, k_len = _seq_bounds(cu_q_ptr, cu_k_ptr, seq)
    first_row = (tl.cdiv(q_len, BLOCK_M) - 1 - from_last) * BLOCK_M
    if first_row < 0:
        return
    rows, row_mask, row_lo, row_hi, lo, hi, mid_lo, mid_hi = _query_tile(
        range_ptr, q_start, q_len, k_len, first_row, tokens_per_frame, window_left, window_right,
        CAUSAL, HAS_RANGE, HAS_WINDOW, BLOCK_M, BLOCK_N)
    # This split's share of the block's own key span: equal whole key blocks per split, so the
    # work divides evenly whatever the mask.
    chunk = tl.cdiv(tl.cdiv(tl.maximum(hi - lo, 0), num_splits), BLOCK_N) * BLOCK_N
    lo = lo + split * chunk
    hi = tl.minimum(hi, lo + chunk)
    mid_lo = tl.minimum(tl.maximum(mid_lo, lo), hi)
    mid_hi = tl.maximum(tl.minimum(mid_hi, hi), mid_lo)
    kv_head = head // group
    q = _load_rows(q_ptr, q_start, first_row, q_len, head, stride_q_n, stride_q_h, HEAD_DIM,
                   BLOCK_M, BLOCK_D, ALIGN, UPCAST)

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Key blocks in order: masked edge blocks, the unmasked middle, masked edge blocks.
    for key0 in range(lo, mid_lo, BLOCK_N):
        acc, row_max, row_sum = _attend(
            acc, row_max, row_sum, q, key0, row_lo, row_hi, k_ptr, v_ptr, k_start, k_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, score_scale, cap_log2, True, SOFTCAP,
            UPCAST, DOT_PRECISION, HEAD_DIM, ALIGN, BLOCK_N, BLOCK_D)
    for key0 in range(mid_lo, mid_hi, BLOCK_N):
        acc, row_max, row_sum = _attend(
            acc, row_max, row_sum, q, key0, row_lo, row_hi, k_ptr, v_ptr, k_start, k_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, score_scale, cap_log2, False, SOFTCAP,
            UPCAST, DOT_PRECISION, HEAD_DIM, ALIGN, BLOCK_N, BLOCK_D)
    for key0 in range(mid_hi, hi, BLOCK_N):
        acc, row_max, row_sum = _attend(
            acc, row_max, row_sum, q, key0, row_lo, row_hi, k_ptr, v_ptr, k_start, k_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, score_scale, cap_log2, True, SOFTCAP,
            UPCAST, DOT_PRECISION, HEAD_DIM, ALIGN, BLOCK_N, BLOCK_D)

    has_keys = row_sum > 0
    out = acc / tl.where(has_keys, row_sum, 1.0)[:, None]
    lse_log2 = row_max + tl.log2(tl.where(has_keys, row_sum, 1.0))
    lse = tl.where(has_keys, lse_log2 * 0.6931471805599453, float("-inf"))  # log2 -> ln
    split = split.to(tl.int64)  # products with the split and head strides may pass 2^31
    _store_rows(out_ptr + split * stride_o_split * ALIGN, out, q_start, first_row, q_len, head,
                stride_o_n, stride_o_h, HEAD_DIM, BLOCK_M, BLOCK_D, ALIGN)
    tl.store(lse_ptr + (split * stride_l_split + head.to(tl.int64) * stride_l_h) + q_start + rows,
             lse, mask=row_mask)


def plan_key_splits(batch: int, heads: int, max_seqlen_q: int, keys_seen: int,
                    device: torch.device) -> int:
    """How many key splits (a power of two) a call needs to fill the GPU: 1 unless its query
    blocks (counted at 64 rows) are fewer than the SMs and the keys a query block sees
    (`keys_seen`) are enough that each split keeps at least _MIN_KEYS_PER_SPLIT of them."""
    programs = batch * heads * triton.cdiv(max_seqlen_q, 64)
    num_sms = target_of(device).num_sms
    splits = 1
    while (programs * splits < num_sms and splits < _MAX_SPLITS
           and keys_seen >= 2 * splits * _MIN_KEYS_PER_SPLIT):
        splits *= 2
    return splits


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                  max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                  tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int = -1,
                  window_right: int = -1, softcap: float = 0.0) -> tuple[Tensor, Tensor]:
    """Launcher: out [total_q, Hq, d] (dtype of q), lse [Hq, total_q] float32. Inputs are
    validated by vidcore.ops.attention; the last dim of q, k, v must be contiguous."""
    return attention_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                             causal, scale, tokens_per_frame, q_frame_range, window_left,
                             window_right, softcap)


def attention_forward(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                      tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int,
                      window_right: int, softcap: float, num_splits: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """attention_fwd with the number of key splits chosen by the caller (tests) or planned."""
    total_q, heads, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(heads, total_q, dtype=torch.float32, device=q.device)
    batch = cu_seqlens_q.shape[0] - 1
    if total_q == 0 or batch == 0:
        return out, lse.fill_(float("-inf"))
    has_window, left, right = window_bounds("attention", window_left, window_right, max_seqlen_q,
                                            max_seqlen_k)
    keys_seen = min(max_seqlen_k, left + right + 64)  # what a 64-row query block sees at most
    splits = num_splits or plan_key_splits(batch, heads, max_seqlen_q, keys_seen, q.device)
    if splits == 1:
        dst, dst_lse = out.unsqueeze(0), lse.unsqueeze(0)
    else:  # fp32 partial results, merged below
        dst = torch.empty(splits, *q.shape, dtype=torch.float32, device=q.device)
        dst_lse = torch.empty(splits, heads, total_q, dtype=torch.float32, device=q.device)
    align = row_alignment(q, k, v, dst)
    score_scale, cap_log2 = score_params(scale, softcap)

    def grid(meta: dict) -> tuple[int]:
        blocks = triton.cdiv(max(max_seqlen_q, 1), meta["BLOCK_M"])
        return (check_grid("attention", blocks * batch * splits * heads),)

    has_range = q_frame_range is not None
    launch(_attention_fwd_kernel, grid,
           q, k, v, dst, dst_lse, cu_seqlens_q, cu_seqlens_k,
           q_frame_range if has_range else cu_seqlens_q,
           *(s // align for s in (q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                  v.stride(0), v.stride(1), dst.stride(0), dst.stride(1),
                                  dst.stride(2))),
           dst_lse.stride(0), dst_lse.stride(1),
           batch, heads, heads // k.shape[1], splits,
           score_scale, cap_log2, max(tokens_per_frame, 1), left, right,
           HEAD_DIM=head_dim, CAUSAL=bool(causal), HAS_RANGE=has_range, HAS_WINDOW=has_window,
           SOFTCAP=softcap > 0, UPCAST=INTERPRET or q.dtype == torch.float32,
           DOT_PRECISION=dot_precision(q.dtype), ALIGN=align,
           BLOCK_D=max(16, triton.next_power_of_2(head_dim)), device=q.device)
    if splits > 1:
        _merge_splits(dst, dst_lse, out, lse)
    return out, lse


def _merge_splits(parts: Tensor, parts_lse: Tensor, out: Tensor, lse: Tensor) -> None:
    """Pairwise merge tree over the split dim (a power of two), the last level into out/lse."""
    while parts.shape[0] > 2:
        half = parts.shape[0] // 2
        merged, merged_lse = torch.empty_like(parts[:half]), torch.empty_like(parts_lse[:half])
        merge_states_into(merged, merged_lse, parts[:half], parts_lse[:half], parts[half:],
                          parts_lse[half:])
        parts, parts_lse = merged, merged_lse
    merge_states_into(out.unsqueeze(0), lse.unsqueeze(0), parts[:1], parts_lse[:1], parts[1:],
                      parts_lse[1:])
