"""Varlen attention forward with GQA, bottom-right causal masking and per-query frame ranges.

One program per (BLOCK_M query rows, sequence, query head). Online softmax in the exp2 domain
over key blocks; the key loop runs only over [lo, hi): the union of what the block's queries can
see (causal bound and frame ranges), so the cost falls with temporal sparsity. Blocks every
query sees (below the causal diagonal, inside the ranges' intersection) skip the mask.
out = softmax(scale * q k^T + mask) v,  lse = logsumexp(scale * q k^T + mask) (natural log).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["attention_fwd", "check_mask_features", "dot_precision", "AUTOTUNE", "INTERPRET"]

LOG2E = 1.4426950408889634
# bf16 is computed wrongly by the Triton interpreter: upcast right after loads when interpreting.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list[triton.Config]:
    """Block sizes to try on Hopper/Ampere; one small tile when interpreting on CPU."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    tiles = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 8, 4), (128, 128, 8, 2),
             (64, 64, 4, 3), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in tiles]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Large tiles of a 256-wide head spill registers: keep the small ones for d > 128."""
    if named_args["head_dim"] <= 128:
        return configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return small or configs[-1:]


def check_mask_features(window_left: int, window_right: int, softcap: float) -> None:
    """Sliding windows and softcap are not in the Triton kernels yet."""
    if window_left >= 0 or window_right >= 0 or softcap > 0:
        raise NotImplementedError("attention: window and softcap are not implemented in the "
                                  "Triton kernels yet")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tl.dot would round them to tf32); 16-bit inputs are
    exact in any mode."""
    return "ieee" if dtype == torch.float32 else "tf32"


# Tuned once per head dim and mask kind; varlen shapes change every call, so lengths are not
# part of the key. Every kernel fully overwrites its outputs, so benchmark reruns are harmless.
AUTOTUNE = triton.autotune(configs=_configs(), key=["head_dim", "CAUSAL", "HAS_RANGE"],
                           prune_configs_by={"early_config_prune": _prune})


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _seq_bounds(cu_q_ptr, cu_k_ptr, seq):
    q_start = tl.load(cu_q_ptr + seq).to(tl.int64)
    q_len = tl.load(cu_q_ptr + seq + 1).to(tl.int64) - q_start
    k_start = tl.load(cu_k_ptr + seq).to(tl.int64)
    k_len = tl.load(cu_k_ptr + seq + 1).to(tl.int64) - k_start
    return q_start, q_len, k_start, k_len


@triton.jit
def _tile(first, length, head_dim, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Indices and masks of a [BLOCK, BLOCK_D] tile starting at row `first` of a sequence."""
    rows = first + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    return rows, rows < length, dims, dims < head_dim


@triton.jit
def _load_rows(ptr, seq_start, rows, row_mask, head, stride_n, stride_h, dims, dim_mask,
               UPCAST: tl.constexpr):
    """[rows, head, :] of a packed [total, H, d] tensor (0 outside the masks)."""
    tile = tl.load(ptr + (seq_start + rows)[:, None] * stride_n + head * stride_h + dims[None, :],
                   mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _frame_ranges(range_ptr, q_start, rows, row_mask, HAS_RANGE: tl.constexpr):
    """Per-row [start, end) frame range (int64), or an unbounded range without ranges."""
    if HAS_RANGE:
        start = tl.load(range_ptr + (q_start + rows) * 2, mask=row_mask, other=0).to(tl.int64)
        end = tl.load(range_ptr + (q_start + rows) * 2 + 1, mask=row_mask, other=0).to(tl.int64)
    else:
        start = tl.zeros(rows.shape, tl.int64)
        end = tl.full(rows.shape, 1 << 62, tl.int64)
    return start, end


@triton.jit
def _visible(rows, cols, q_len, k_len, start, end, tokens_per_frame,
             CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr):
    """[BLOCK_M, BLOCK_N] mask: key col visible to query row (see vidcore.reference.attention)."""
    visible = (rows[:, None] < q_len) & (cols[None, :] < k_len)
    if CAUSAL:
        visible &= cols[None, :] <= rows[:, None] + (k_len - q_len)
    if HAS_RANGE:
        frame = cols // tokens_per_frame
        visible &= (start[:, None] <= frame[None, :]) & (frame[None, :] < end[:, None])
    return visible


@triton.jit
def _key_span(rows, row_mask, q_len, k_len, start, end, tokens_per_frame,
              CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi) key positions that any query of the block can see; lo aligned to BLOCK_N."""
    lo = 0
    hi = k_len
    if CAUSAL:
        hi = tl.minimum(hi, tl.max(tl.where(row_mask, rows, 0)) + 1 + k_len - q_len)
    if HAS_RANGE:
        nonempty = row_mask & (start < end)
        # Frame indices below k_len keep the products under 2^62 (ranges are int32).
        first = tl.min(tl.where(nonempty, tl.minimum(start, k_len), k_len)) * tokens_per_frame
        last = tl.max(tl.where(nonempty, tl.minimum(end, k_len), 0)) * tokens_per_frame
        lo = tl.maximum(lo, tl.minimum(first, k_len))
        hi = tl.minimum(hi, last)
    lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _unmasked_span(first_row, row_mask, q_len, k_len, start, end, tokens_per_frame, lo, hi,
                   CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, BLOCK_N: tl.constexpr):
    """[mid_lo, mid_hi): whole key blocks inside [lo, hi) that every query of the block sees
    (below the causal bound of its first row, inside the intersection of its ranges). These
    need no mask; an empty range in the block makes the span empty."""
    full_lo = 0
    full_hi = k_len
    if CAUSAL:
        full_hi = tl.minimum(full_hi, first_row + 1 + k_len - q_len)
    if HAS_RANGE:
        common_start = tl.max(tl.where(row_mask, start, 0))
        common_end = tl.min(tl.where(row_mask, end, k_len))
        full_lo = tl.minimum(common_start, k_len) * tokens_per_frame
        full_hi = tl.minimum(full_hi, tl.minimum(common_end, k_len) * tokens_per_frame)
    mid_lo = tl.minimum(tl.maximum((full_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi // BLOCK_N * BLOCK_N, hi), mid_lo)
    return mid_lo, mid_hi


@triton.jit
def _query_block(range_ptr, q_start, q_len, k_len, first_row, head_dim, tokens_per_frame,
                 CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """A query block's tile, frame ranges, the key span [lo, hi) its rows can see and the
    unmasked part [mid_lo, mid_hi) of it."""
    rows, row_mask, dims, dim_mask = _tile(first_row, q_len, head_dim, BLOCK_M, BLOCK_D)
    start, end = _frame_ranges(range_ptr, q_start, rows, row_mask, HAS_RANGE)
    lo, hi = _key_span(rows, row_mask, q_len, k_len, start, end, tokens_per_frame,
                       CAUSAL, HAS_RANGE, BLOCK_N)
    mid_lo, mid_hi = _unmasked_span(first_row, row_mask, q_len, k_len, start, end,
                                    tokens_per_frame, lo, hi, CAUSAL, HAS_RANGE, BLOCK_N)
    return rows, row_mask, dims, dim_mask, start, end, lo, hi, mid_lo, mid_hi


@triton.jit
def _key_block(k_ptr, v_ptr, k_start, k_len, key0, kv_head, stride_k_n, stride_k_h, stride_v_n,
               stride_v_h, dims, dim_mask, UPCAST: tl.constexpr, BLOCK_N: tl.constexpr):
    """Positions, keys and values of the key block key0 : key0 + BLOCK_N (0 past k_len)."""
    cols = key0 + tl.arange(0, BLOCK_N)
    col_mask = cols < k_len
    k = _load_rows(k_ptr, k_start, cols, col_mask, kv_head, stride_k_n, stride_k_h, dims,
                   dim_mask, UPCAST)
    v = _load_rows(v_ptr, k_start, cols, col_mask, kv_head, stride_v_n, stride_v_h, dims,
                   dim_mask, UPCAST)
    return cols, k, v


@triton.jit
def _attend(acc, row_max, row_sum, q, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, dims, dim_mask, start, end,
            qk_scale, tokens_per_frame, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
            HAS_RANGE: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
            BLOCK_N: tl.constexpr):
    """One online-softmax step over keys key0 : key0 + BLOCK_N (exp2 domain). Unmasked steps
    skip building the visibility mask (integer divisions for frame ranges)."""
    cols, k, v = _key_block(k_ptr, v_ptr, k_start, k_len, key0, kv_head, stride_k_n, stride_k_h,
                            stride_v_n, stride_v_h, dims, dim_mask, UPCAST, BLOCK_N)
    scores = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale  # log2 domain
    if MASKED:
        visible = _visible(rows, cols, q_len, k_len, start, end, tokens_per_frame,
                           CAUSAL, HAS_RANGE)
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # rows with no key yet
    probs = tl.exp2(scores - safe_max[:, None])
    rescale = tl.exp2(row_max - safe_max)
    row_sum = row_sum * rescale + tl.sum(probs, 1)
    acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, DOT_PRECISION)
    return acc, new_max, row_sum


@AUTOTUNE
@triton.jit
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr, range_ptr,
    stride_q_n, stride_q_h, stride_k_n, stride_k_h, stride_v_n, stride_v_h,
    stride_o_n, stride_o_h, stride_l_h,
    qk_scale, tokens_per_frame, group, head_dim,
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

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Key blocks in order: masked edge blocks, the unmasked middle, masked edge blocks.
    for key0 in range(lo, mid_lo, BLOCK_N):
        acc, row_max, row_sum = _attend(
            acc, row_max, row_sum, q, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, dims, dim_mask, start, end,
            qk_scale, tokens_per_frame, True, CAUSAL, HAS_RANGE, UPCAST, DOT_PRECISION, BLOCK_N)
    for key0 in range(mid_lo, mid_hi, BLOCK_N):
        acc, row_max, row_sum = _attend(
            acc, row_max, row_sum, q, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, dims, dim_mask, start, end,
            qk_scale, tokens_per_frame, False, CAUSAL, HAS_RANGE, UPCAST, DOT_PRECISION, BLOCK_N)
    for key0 in range(mid_hi, hi, BLOCK_N):
        acc, row_max, row_sum = _attend(
            acc, row_max, row_sum, q, key0, rows, k_ptr, v_ptr, k_start, k_len, q_len, kv_head,
            stride_k_n, stride_k_h, stride_v_n, stride_v_h, dims, dim_mask, start, end,
            qk_scale, tokens_per_frame, True, CAUSAL, HAS_RANGE, UPCAST, DOT_PRECISION, BLOCK_N)

    has_keys = row_sum > 0
    out = acc / tl.where(has_keys, row_sum, 1.0)[:, None]
    lse_log2 = row_max + tl.log2(tl.where(has_keys, row_sum, 1.0))
    lse = tl.where(has_keys, lse_log2 * 0.6931471805599453, float("-inf"))  # log2 -> ln
    tl.store(out_ptr + (q_start + rows)[:, None] * stride_o_n + head * stride_o_h + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & dim_mask[None, :])
    tl.store(lse_ptr + head * stride_l_h + q_start + rows, lse, mask=row_mask)


def attention_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                  max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                  tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int = -1,
                  window_right: int = -1, softcap: float = 0.0) -> tuple[Tensor, Tensor]:
    """Launcher: out [total_q, Hq, d] (dtype of q), lse [Hq, total_q] float32. Inputs are
    validated by vidcore.ops.attention; the last dim of q, k, v must be contiguous."""
    check_mask_features(window_left, window_right, softcap)
    total_q, heads, head_dim = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(heads, total_q, dtype=torch.float32, device=q.device)
    batch = cu_seqlens_q.shape[0] - 1
    if total_q == 0 or batch == 0:
        return out, lse.fill_(float("-inf"))

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(max(max_seqlen_q, 1), meta["BLOCK_M"]), batch, heads

    has_range = q_frame_range is not None
    _attention_fwd_kernel[grid](
        q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, q_frame_range if has_range else q,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        scale * LOG2E, max(tokens_per_frame, 1), heads // k.shape[1], head_dim,
        CAUSAL=causal, HAS_RANGE=has_range, UPCAST=INTERPRET or q.dtype == torch.float32,
        DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
    )
    return out, lse
