"""The inner step of the attention backward kernel (one query block x one key block).

`masked` is a constexpr where the caller knows it (the unmasked middle of a span) and a runtime
flag where it does not (frame ranges decide per query block).
"""
from __future__ import annotations

import triton
import triton.language as tl
from vidcore.kernels._attention_common import _load_rows, _scores, _tile

__all__ = ["_bwd_step", "_row_stats"]


@triton.jit
def _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask):
    """lse in the log2 domain (+inf for rows that saw no key, so their P is 0) and delta."""
    offs = head.to(tl.int64) * stride_l_h + q_start + rows
    lse = tl.load(lse_ptr + offs, mask=row_mask, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(delta_ptr + offs, mask=row_mask, other=0.0)
    return lse2, delta


@triton.jit
def _wait_turn(lock_ptr, turn, INTERPRETED: tl.constexpr):
    """Spins until the lock holds `turn` (acquire: the adds of earlier turns are visible). On
    the GPU the spin is one inline PTX loop, so Triton still software-pipelines the loop around
    it (a Python `while` would be a nested loop, which its pipeliner skips); the interpreter,
    which cannot run PTX, spins in Python."""
    if INTERPRETED:
        while tl.atomic_add(lock_ptr, 0, sem="acquire") != turn:
            pass
    else:
        tl.inline_asm_elementwise(
            """{
            .reg .pred not_yet;
            $$WAIT${:uid}:
            ld.acquire.gpu.global.b32 $0, [$1];
            setp.ne.s32 not_yet, $0, $2;
            @not_yet bra $$WAIT${:uid};
            }""",
            "=r,l,r", [lock_ptr, turn], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _block_barrier(INTERPRETED: tl.constexpr):
    """bar.sync across the program's threads. As inline PTX, not tl.debug_barrier: Triton's
    software pipeliner skips loops that hold its barrier op (the interpreter needs none)."""
    if not INTERPRETED:
        tl.inline_asm_elementwise("bar.sync 0; mov.b32 $0, 0;", "=r", [], dtype=tl.int32,
                                  is_pure=False, pack=1)


@triton.jit
def _accumulate_dq(dq_acc_ptr, dq, lock_ptr, turn, q_start, row0, q_len, head, stride_q_n,
                   stride_q_h, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_D: tl.constexpr, ALIGN: tl.constexpr, INTERPRETED: tl.constexpr):
    """dq_acc[rows, head] += dq in a fixed order: the key blocks that contribute to a query
    block take turns, lowest first, so the float32 sums are identical run to run. `turn` is this
    key block's rank among them; the lock counts the contributions added so far. Only lower
    program ids are waited on (they were started first), so the wait always ends."""
    _wait_turn(lock_ptr, turn, INTERPRETED)
    ptrs, mask = _tile(dq_acc_ptr, q_start, row0, q_len, head, stride_q_n, stride_q_h, HEAD_DIM,
                       BLOCK_M, BLOCK_D, ALIGN)
    tl.atomic_add(ptrs, dq, mask=mask, sem="relaxed")
    _block_barrier(INTERPRETED)  # every thread's adds precede the release
    tl.atomic_xchg(lock_ptr, turn + 1, sem="release")


@triton.jit
def _bwd_step(dk, dv, k, v, cols, row0, head, row_lo, row_hi, masked, turn, contributes,
              lock_ptr, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_acc_ptr, q_start, q_len,
              stride_q_n, stride_q_h, stride_l_h, score_scale, cap_log2, SOFTCAP: tl.constexpr,
              UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, HEAD_DIM: tl.constexpr,
              ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
              INTERPRETED: tl.constexpr):
    """One query block (rows, each seeing keys [row_lo, row_hi)) x one key block, five GEMMs:
    S^T = K Q^T, dP^T = V dO^T, then dv += P^T dO, dk += dS^T Q (unscaled) and, if the key
    block `contributes` to the query block's dq (the forward visits it), dq_acc += dS K
    (unscaled, in turn). Computed transposed ([keys, queries]) so the key-side tiles need no
    layout change."""
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    q = _load_rows(q_ptr, q_start, row0, q_len, head, stride_q_n, stride_q_h, HEAD_DIM, BLOCK_M,
                   BLOCK_D, ALIGN, UPCAST)
    do = _load_rows(do_ptr, q_start, row0, q_len, head, stride_q_n, stride_q_h, HEAD_DIM, BLOCK_M,
                    BLOCK_D, ALIGN, UPCAST)
    lse2, delta = _row_stats(lse_ptr, delta_ptr, stride_l_h, head, q_start, rows, row_mask)
    scores_t, tanh_t = _scores(k, tl.trans(q), score_scale, cap_log2, SOFTCAP, DOT_PRECISION)
    probs_t = tl.exp2(scores_t - lse2[None, :])
    if masked:
        visible = (cols[:, None] >= row_lo[None, :]) & (cols[:, None] < row_hi[None, :])
        probs_t = tl.where(visible, probs_t, 0.0)
    dv = tl.dot(probs_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # in place
    dprobs_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    dscores_t = probs_t * (dprobs_t - delta[None, :])
    if SOFTCAP:
        dscores_t *= 1.0 - tanh_t * tanh_t
    dscores_t = dscores_t.to(q.dtype)
    dk = tl.dot(dscores_t, q, dk, input_precision=DOT_PRECISION)
    dq = tl.dot(tl.trans(dscores_t), k, input_precision=DOT_PRECISION)
    if contributes:
        _accumulate_dq(dq_acc_ptr, dq, lock_ptr, turn, q_start, row0, q_len, head, stride_q_n,
                       stride_q_h, HEAD_DIM, BLOCK_M, BLOCK_D, ALIGN, INTERPRETED)
    return dk, dv
