"""Pieces the attention kernels share: tile loads, the visibility rule, key/query spans, scores.

Visibility (CONTRACTS.md section 1): query i of a sequence with Lq queries and Lk keys, with
i' = i + Lk - Lq, sees key j iff (not causal or j <= i') and i' - left <= j <= i' + right and
(no ranges or start_i <= j // tokens_per_frame < end_i). The launchers pass an unbounded window
side as Lq + Lk (no |j - i'| reaches it), so the kernels need no sign tests. Scores live in the
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
def _load_rows(ptr, seq_start, rows, row_mask, head, stride_n, stride_h,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr,
               UPCAST: tl.constexpr):
    """[rows, head, :HEAD_DIM] of a packed [total, H, d] tensor, zero-padded to BLOCK_D columns
    (0 outside row_mask). Strides are in units of ALIGN elements."""
    dims = tl.arange(0, BLOCK_D)
    offs = ((seq_start + rows)[:, None] * stride_n + head * stride_h) * ALIGN + dims[None, :]
    tile = tl.load(ptr + offs, mask=row_mask[:, None] & (dims[None, :] < HEAD_DIM), other=0.0)
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _store_rows(ptr, value, seq_start, rows, row_mask, head, stride_n, stride_h,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    dims = tl.arange(0, BLOCK_D)
    offs = ((seq_start + rows)[:, None] * stride_n + head * stride_h) * ALIGN + dims[None, :]
    tl.store(ptr + offs, value.to(ptr.dtype.element_ty),
             mask=row_mask[:, None] & (dims[None, :] < HEAD_DIM))


@triton.jit
def _key_bounds(range_ptr, q_start, rows, row_mask, k_len, tokens_per_frame,
                HAS_RANGE: tl.constexpr):
    """Per-row keys [key_lo, key_hi) that the frame range [start, end) allows:
    start <= j // tokens_per_frame < end  <=>  start * tpf <= j < end * tpf (for j >= 0), the
    frames clamped to [0, k_len] first so the int64 products end within int32. Without ranges,
    every key ([0, k_len))."""
    if HAS_RANGE:
        start = tl.load(range_ptr + (q_start + rows) * 2, mask=row_mask, other=0)
        end = tl.load(range_ptr + (q_start + rows) * 2 + 1, mask=row_mask, other=0)
        key_lo = _frames_to_keys(start, tokens_per_frame, k_len)
        key_hi = _frames_to_keys(end, tokens_per_frame, k_len)
    else:
        key_lo = tl.zeros(rows.shape, tl.int32)
        key_hi = tl.zeros(rows.shape, tl.int32) + k_len
    return key_lo, key_hi


@triton.jit
def _frames_to_keys(frames, tokens_per_frame, k_len):
    """clamp(frames, 0, k_len) * tokens_per_frame, clamped to k_len, as int32 (the product in
    int64: a frame index below k_len times tokens_per_frame stays far below 2^63)."""
    frames = tl.minimum(tl.maximum(frames, 0), k_len).to(tl.int64)
    return tl.minimum(frames * tokens_per_frame, k_len).to(tl.int32)


@triton.jit
def _visible(rows, cols, key_lo, key_hi, q_len, k_len, window_left, window_right,
             CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Which keys the query rows see (the module docstring's rule), elementwise over operands
    that broadcast to the tile: rows, key_lo, key_hi as [M, 1] and cols as [1, N] give an [M, N]
    mask, rows as [1, M] and cols as [N, 1] the transposed one."""
    diagonal = rows + (k_len - q_len)  # i'
    visible = (rows < q_len) & (cols < k_len)
    if CAUSAL:
        visible &= cols <= diagonal
    if HAS_WINDOW:
        visible &= (cols >= diagonal - window_left) & (cols <= diagonal + window_right)
    if HAS_RANGE:
        visible &= (cols >= key_lo) & (cols < key_hi)
    return visible


@triton.jit
def _key_span(first_row, row_mask, q_len, k_len, key_lo, key_hi, window_left, window_right,
              CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr, HAS_WINDOW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the keys that some query of the block sees, and [mid_lo, mid_hi) inside it:
    whole key blocks that every query of the block sees, which need no mask. lo and the middle
    are aligned to BLOCK_N; an empty range in the block makes the middle empty."""
    last_row = tl.minimum(first_row + BLOCK_M, q_len) - 1
    shift = k_len - q_len
    lo = tl.zeros([], tl.int32)
    hi = k_len
    full_lo = tl.zeros([], tl.int32)
    full_hi = k_len
    if CAUSAL:
        hi = tl.minimum(hi, last_row + 1 + shift)
        full_hi = tl.minimum(full_hi, first_row + 1 + shift)
    if HAS_WINDOW:
        hi = tl.minimum(hi, last_row + window_right + 1 + shift)
        full_hi = tl.minimum(full_hi, first_row + window_right + 1 + shift)
        lo = tl.maximum(lo, first_row - window_left + shift)
        full_lo = tl.maximum(full_lo, last_row - window_left + shift)
    if HAS_RANGE:
        nonempty = row_mask & (key_lo < key_hi)
        lo = tl.maximum(lo, tl.min(tl.where(nonempty, key_lo, k_len)))
        hi = tl.minimum(hi, tl.max(tl.where(nonempty, key_hi, 0)))
        full_lo = tl.maximum(full_lo, tl.max(tl.where(row_mask, key_lo, 0)))
        full_hi = tl.minimum(full_hi, tl.min(tl.where(row_mask, key_hi, k_len)))
    lo = lo // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum((full_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, lo), hi)
    mid_hi = tl.maximum(tl.minimum(full_hi // BLOCK_N * BLOCK_N, hi), mid_lo)
    return lo, hi, mid_lo, mid_hi


@triton.jit
def _query_tile(range_ptr, q_start, q_len, k_len, first_row, tokens_per_frame, window_left,
                window_right, CAUSAL: tl.constexpr, HAS_RANGE: tl.constexpr,
                HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A query block's rows, frame ranges and key spans (see _key_span)."""
    rows = first_row + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    key_lo, key_hi = _key_bounds(range_ptr, q_start, rows, row_mask, k_len, tokens_per_frame,
                                 HAS_RANGE)
    lo, hi, mid_lo, mid_hi = _key_span(first_row, row_mask, q_len, k_len, key_lo, key_hi,
                                       window_left, window_right, CAUSAL, HAS_RANGE, HAS_WINDOW,
                                       BLOCK_M, BLOCK_N)
    return rows, row_mask, key_lo, key_hi, lo, hi, mid_lo, mid_hi
