"""Pieces the attention kernels share: tile loads, the visibility rule, key/query spans, scores.

Visibility (CONTRACTS.md section 1): query i of a sequence with Lq queries and Lk keys, with
i' = i + Lk - Lq, sees key j iff (not causal or j <= i') and i' - left <= j <= i' + right and
(no ranges or start_i <= j // tokens_per_frame < end_i): an interval of keys per query, which
_row_bounds computes once per query block. The launchers pass an unbounded window side as
Lq + Lk (no |j - i'| reaches it), so the kernels need no sign tests. Scores live in the
log2 domain: s = scale * q.k * log2(e), or with a softcap c, s = c * tanh(scale * q.k / c) * log2(e).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRET", "LOG2E", "dot_precision", "row_alignment", "score_params",
           "window_bounds"]

LOG2E = 1.4426950408889634
# bf16 is computed wrongly by the Triton interpreter: upcast right after loads when interpreting.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: TF32 tensor cores when the user allows them for matmuls
    (torch.backends.cuda.matmul.allow_tf32), else exact fp32 products on small tiles (the
    config rules keep fp32-ieee tiles small; see _attention_configs). 16-bit inputs are exact
    in any mode."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def row_alignment(*tensors: torch.Tensor) -> int:
    """The largest of 8, 4, 2, 1 elements dividing every stride but the last of `tensors`. The
    kernels take strides divided by it and multiply back by the constexpr, so Triton knows the
    rows are aligned and vectorises loads for head dims like 72 whose strides are not multiples
    of 16."""
    align = 8
    while align > 1 and any(s % align for t in tensors for s in t.stride()[:-1]):
        align //= 2
    return align


def score_params(scale: float, softcap: float) -> tuple[float, float]:
    """(score_scale, cap_log2): q.k * score_scale is the log2-domain score without softcap; with
    softcap c it is the tanh argument (scale / c) and cap_log2 = c * log2(e)."""
    if softcap > 0:
        return scale / softcap, softcap * LOG2E
    return scale * LOG2E, 0.0


def window_bounds(name: str, window_left: int, window_right: int, max_seqlen_q: int,
                  max_seqlen_k: int) -> tuple[bool, int, int]:
    """(HAS_WINDOW, left, right) with an unbounded side (-1, or any reach past every key) as
    max_seqlen_q + max_seqlen_k. Positions within a sequence are int32 in the kernels, so that
    sum must stay below 2^30 (no sum of a position and a window then passes 2^31)."""
    unbounded = max_seqlen_q + max_seqlen_k
    if unbounded >= 2**30:
        raise ValueError(f"{name}: max_seqlen_q + max_seqlen_k must be below 2^30 per sequence, "
                         f"got {max_seqlen_q} + {max_seqlen_k}")
    has_window = window_left >= 0 or window_right >= 0
    return (has_window, unbounded if window_left < 0 else min(window_left, unbounded),
            unbounded if window_right < 0 else min(window_right, unbounded))


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _tanh(x):
    """tanh from exp2 (the interpreter has no libdevice): within 1.3e-7 of tanh in float32."""
    e = tl.exp2(tl.abs(x) * -2.8853900817779268)  # exp(-2|x|)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _scores(q, k_t, score_scale, cap_log2, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Log2-domain scores q k_t and, with a softcap, tanh of the capped argument (for the
    gradient's 1 - tanh^2); without one the second value is unused."""
    qk = _dot(q, k_t, DOT_PRECISION)
    if SOFTCAP:
        t = _tanh(qk * score_scale)
        return t * cap_log2, t
    return qk * score_scale, qk


@triton.jit
def _seq_bounds(cu_q_ptr, cu_k_ptr, seq):
    """First packed row (int64: offsets pass 2^31) and length (int32) of the sequence's queries
    and keys. Positions within a sequence are int32 (the launchers check Lq + Lk < 2^30), which
    halves the registers the [BLOCK_M, BLOCK_N] masks take."""
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    k_start = tl.load(cu_k_ptr + seq)
    k_len = tl.load(cu_k_ptr + seq + 1) - k_start
    return q_start.to(tl.int64), q_len, k_start.to(tl.int64), k_len


@triton.jit
def _tile(ptr, seq_start, first, length, head, stride_n, stride_h, HEAD_DIM: tl.constexpr,
          BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """Pointers and mask of rows first : first + BLOCK (those below `length`), columns
    :HEAD_DIM, of one head of a packed [total, H, d] tensor whose strides are in units of ALIGN
    elements. One int64 base per tile plus int32 offsets that do not change from tile to tile,
    so a loop over tiles keeps no 64-bit address per element."""
    base = ptr + ((seq_start + first) * stride_n + head * stride_h) * ALIGN
    rows = tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    mask = (first + rows < length)[:, None]
    if HEAD_DIM < BLOCK_D:
        mask = mask & (dims[None, :] < HEAD_DIM)
    return base + (rows[:, None] * stride_n * ALIGN + dims[None, :]), mask


@triton.jit
def _load_rows(ptr, seq_start, first, length, head, stride_n, stride_h, HEAD_DIM: tl.constexpr,
               BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr,
               UPCAST: tl.constexpr):
    """The tile of _tile, zero outside its mask (and upcast to float32 if UPCAST)."""
    ptrs, mask = _tile(ptr, seq_start, first, length, head, stride_n, stride_h, HEAD_DIM, BLOCK,
                       BLOCK_D, ALIGN)
    tile = tl.load(ptrs, mask=mask, other=0.0)
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _store_rows(ptr, value, seq_start, first, length, head, stride_n, stride_h,
                HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
                ALIGN: tl.constexpr):
    ptrs, mask = _tile(ptr, seq_start, first, length, head, stride_n, stride_h, HEAD_DIM, BLOCK,
                       BLOCK_D, ALIGN)
    tl.store(ptrs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _row_bounds(range_ptr, q_start, rows, q_len, k_len, tokens_per_frame, window_left,
                window_right, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
                HAS_WINDOW: tl.constexpr):
    """Keys [lo_i, hi_i) that each query row sees: every mask feature bounds an interval of
    keys per query (rows past the sequence get an empty one), so a tile's mask is two compares
    per element. Frame ranges: start <= j // tokens_per_frame < end  <=>
    start * tokens_per_frame <= j < end * tokens_per_frame, with frames clamped to [0, k_len]
    first and the product taken in int64, so the bounds end within int32."""
    diagonal = rows + (k_len - q_len)  # i'
    lo = tl.zeros(rows.shape, tl.int32)
    hi = tl.where(rows < q_len, k_len, 0)
    if CAUSAL:
        hi = tl.minimum(hi, diagonal + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, diagonal - window_left)
        hi = tl.minimum(hi, diagonal + window_right + 1)
    if HAS_RANGE:
        row_mask = rows < q_len
        start = tl.load(range_ptr + (q_start + rows) * 2, mask=row_mask, other=0)
        end = tl.load(range_ptr + (q_start + rows) * 2 + 1, mask=row_mask, other=0)
        lo = tl.maximum(lo, _frames_to_keys(start, tokens_per_frame, k_len))
        hi = tl.minimum(hi, _frames_to_keys(end, tokens_per_frame, k_len))
    return lo, hi


@triton.jit
def _frames_to_keys(frames, tokens_per_frame, k_len):
    frames = tl.minimum(tl.maximum(frames, 0), k_len).to(tl.int64)
    return tl.minimum(frames * tokens_per_frame, k_len).to(tl.int32)


@triton.jit
def _key_span(row_mask, row_lo, row_hi, k_len, BLOCK_N: tl.constexpr):
    """[lo, hi): the keys that some query of the block sees, and [mid_lo, mid_hi) inside it:
    whole key blocks that every query of the block sees, which need no mask (a valid row that
    sees nothing makes it empty). lo and the middle are aligned to BLOCK_N."""
    nonempty = row_lo < row_hi
    lo = tl.min(tl.where(nonempty, row_lo, k_len))
    hi = tl.max(tl.where(nonempty, row_hi, 0))
    full_lo = tl.max(tl.where(row_mask, row_lo, 0))
    full_hi = tl.min(tl.where(row_mask, row_hi, k_len))
    lo = lo // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum((full_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi // BLOCK_N * BLOCK_N, hi), mid_lo)
    return lo, hi, mid_lo, mid_hi


@triton.jit
def _query_tile(range_ptr, q_start, q_len, k_len, first_row, tokens_per_frame, window_left,
                window_right, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
                HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A query block's rows, their visible keys [row_lo, row_hi) and the block's key spans
    (see _key_span)."""
    rows = first_row + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    row_lo, row_hi = _row_bounds(range_ptr, q_start, rows, q_len, k_len, tokens_per_frame,
                                 window_left, window_right, CAUSAL, HAS_RANGE, HAS_WINDOW)
    lo, hi, mid_lo, mid_hi = _key_span(row_mask, row_lo, row_hi, k_len, BLOCK_N)
    return rows, row_mask, row_lo, row_hi, lo, hi, mid_lo, mid_hi
