"""Axis attention on CUDA, forward and backward: softmax self-attention along axis S of a token
grid [P, S, R, H, d] read through its strides, so temporal / spatial / cross-video attention on
views of one QKV projection runs with no permuted copies.

One program per (sequence, BLOCK rows of it); a sequence is one (p, r, h). The
forward keeps an online softmax over BLOCK_N-key steps (exp2 domain) and writes out and the
log-sum-exp; the backward recomputes probabilities from the lse: one kernel accumulates dK, dV
for a key block over all query blocks, another dQ for a query block over all key blocks (no
atomics, so results are deterministic). delta = rowsum(dO * O) is recomputed where needed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._launch import launch
from vidcore.kernels.attention import INTERPRET, dot_precision

__all__ = ["axis_attention_fwd", "axis_attention_bwd"]

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # jit functions see only constexpr globals (the interpreter: any)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _sequence_base(R, H, sp, sr, sh):
    """Offset of this program's sequence (p, r, h) with strides (sp, sr, sh)."""
    seq = tl.program_id(0).to(tl.int64)
    h = seq % H
    r = (seq // H) % R
    p = seq // (H * R)
    return p * sp + r * sr + h * sh


@triton.jit
def _load(ptr, base, rows, stride_s, stride_d, dims, S, D, UPCAST: tl.constexpr):
    """[len(rows), BLOCK_D] tile; zero outside the sequence and past d."""
    mask = (rows[:, None] < S) & (dims[None, :] < D)
    tile = tl.load(ptr + base + rows[:, None] * stride_s + dims[None, :] * stride_d, mask=mask,
                   other=0.0)
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _axis_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, S, R, H, D, qk_scale,
    sq_p, sq_s, sq_r, sq_h, sq_d, sk_p, sk_s, sk_r, sk_h, sk_d, sv_p, sv_s, sv_r, sv_h, sv_d,
    so_p, so_s, so_r, so_h, sl_p, sl_s, sl_r,  # out [P, S, R, H, d], lse [P, S, R, H]: contiguous
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load(q_ptr, _sequence_base(R, H, sq_p, sq_r, sq_h), rows, sq_s, sq_d, dims, S, D,
              UPCAST)
    k_base = _sequence_base(R, H, sk_p, sk_r, sk_h)
    v_base = _sequence_base(R, H, sv_p, sv_r, sv_h)
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for key0 in range(0, S, BLOCK_N):
        cols = key0 + tl.arange(0, BLOCK_N)
        k = _load(k_ptr, k_base, cols, sk_s, sk_d, dims, S, D, UPCAST)
        v = _load(v_ptr, v_base, cols, sv_s, sv_d, dims, S, D, UPCAST)
        scores = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale
        scores = tl.where(cols[None, :] < S, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, DOT_PRECISION)
        row_max = new_max
    out = acc / row_sum[:, None]  # every row sees S >= 1 keys
    row_mask = rows < S
    o_base = _sequence_base(R, H, so_p, so_r, so_h)
    tl.store(out_ptr + o_base + rows[:, None] * so_s + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & (dims[None, :] < D))
    l_base = _sequence_base(R, H, sl_p, sl_r, 1)
    lse = (row_max + tl.log2(row_sum)) * 0.6931471805599453  # log2 -> ln
    tl.store(lse_ptr + l_base + rows * sl_s, lse, mask=row_mask)


@triton.jit
def _row_terms(do_ptr, out_ptr, lse_ptr, o_base, l_base, rows, so_s, sl_s, dims, S, D,
               UPCAST: tl.constexpr):
    """dO tile, delta = rowsum(dO * O) and the lse (log2 domain) of query rows `rows`."""
    d_out = _load(do_ptr, o_base, rows, so_s, 1, dims, S, D, UPCAST)
    out = _load(out_ptr, o_base, rows, so_s, 1, dims, S, D, True)
    delta = tl.sum(d_out.to(tl.float32) * out, 1)
    lse = tl.load(lse_ptr + l_base + rows * sl_s, mask=rows < S, other=0.0) * _LOG2E
    return d_out, delta, lse


@triton.jit
def _axis_attention_dkdv_kernel(
    do_ptr, q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dk_ptr, dv_ptr, S, R, H, D, qk_scale, scale,
    sq_p, sq_s, sq_r, sq_h, sq_d, sk_p, sk_s, sk_r, sk_h, sk_d, sv_p, sv_s, sv_r, sv_h, sv_d,
    so_p, so_s, so_r, so_h, sl_p, sl_s, sl_r,  # dO, out, dk, dv contiguous like out
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k = _load(k_ptr, _sequence_base(R, H, sk_p, sk_r, sk_h), cols, sk_s, sk_d, dims, S, D, UPCAST)
    v = _load(v_ptr, _sequence_base(R, H, sv_p, sv_r, sv_h), cols, sv_s, sv_d, dims, S, D, UPCAST)
    q_base = _sequence_base(R, H, sq_p, sq_r, sq_h)
    o_base = _sequence_base(R, H, so_p, so_r, so_h)
    l_base = _sequence_base(R, H, sl_p, sl_r, 1)
    grad_k = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    grad_v = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for row0 in range(0, S, BLOCK_M):
        rows = row0 + tl.arange(0, BLOCK_M)
        q = _load(q_ptr, q_base, rows, sq_s, sq_d, dims, S, D, UPCAST)
        d_out, delta, lse = _row_terms(do_ptr, out_ptr, lse_ptr, o_base, l_base, rows, so_s,
                                       sl_s, dims, S, D, UPCAST)
        scores = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale
        probs = tl.exp2(scores - lse[:, None])
        probs = tl.where((rows[:, None] < S) & (cols[None, :] < S), probs, 0.0)
        grad_v += _dot(tl.trans(probs).to(d_out.dtype), d_out, DOT_PRECISION)
        d_probs = _dot(d_out, tl.trans(v), DOT_PRECISION)
        d_scores = probs * (d_probs - delta[:, None])
        grad_k += _dot(tl.trans(d_scores).to(q.dtype), q, DOT_PRECISION)
    mask = (cols[:, None] < S) & (dims[None, :] < D)
    offs = o_base + cols[:, None] * so_s + dims[None, :]
    tl.store(dk_ptr + offs, (grad_k * scale).to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + offs, grad_v.to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _axis_attention_dq_kernel(
    do_ptr, q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dq_ptr, S, R, H, D, qk_scale, scale,
    sq_p, sq_s, sq_r, sq_h, sq_d, sk_p, sk_s, sk_r, sk_h, sk_d, sv_p, sv_s, sv_r, sv_h, sv_d,
    so_p, so_s, so_r, so_h, sl_p, sl_s, sl_r,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(1).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    q = _load(q_ptr, _sequence_base(R, H, sq_p, sq_r, sq_h), rows, sq_s, sq_d, dims, S, D, UPCAST)
    o_base = _sequence_base(R, H, so_p, so_r, so_h)
    d_out, delta, lse = _row_terms(do_ptr, out_ptr, lse_ptr, o_base,
                                   _sequence_base(R, H, sl_p, sl_r, 1), rows, so_s, sl_s, dims,
                                   S, D, UPCAST)
    k_base = _sequence_base(R, H, sk_p, sk_r, sk_h)
    v_base = _sequence_base(R, H, sv_p, sv_r, sv_h)
    grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for key0 in range(0, S, BLOCK_N):
        cols = key0 + tl.arange(0, BLOCK_N)
        k = _load(k_ptr, k_base, cols, sk_s, sk_d, dims, S, D, UPCAST)
        v = _load(v_ptr, v_base, cols, sv_s, sv_d, dims, S, D, UPCAST)
        scores = _dot(q, tl.trans(k), DOT_PRECISION) * qk_scale
        probs = tl.where(cols[None, :] < S, tl.exp2(scores - lse[:, None]), 0.0)
        d_scores = probs * (_dot(d_out, tl.trans(v), DOT_PRECISION) - delta[:, None])
        grad_q += _dot(d_scores.to(k.dtype), k, DOT_PRECISION)
    tl.store(dq_ptr + o_base + rows[:, None] * so_s + dims[None, :],
             (grad_q * scale).to(dq_ptr.dtype.element_ty),
             mask=(rows[:, None] < S) & (dims[None, :] < D))


def _launch_config(length: int, head_dim: int, dtype: torch.dtype, backward: bool) -> dict:
    """Tiles no longer than the sequence (short temporal / cross-video axes waste nothing past
    16 rows, tl.dot's minimum), else the largest that compile for sm_80 and sm_90a without
    register spills (checked ahead of time for d 32-256): float32 tiles are upcast and run
    their products on FMA units (no TF32) or hold twice the registers (TF32), so past head dim
    32 they are 16 rows; the backward keeps four tiles live, so 16-bit ones are 32 rows (16 at
    d 256)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if INTERPRET:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d, num_warps=4, num_stages=1)
    if dtype == torch.float32:
        block = 32 if block_d <= 32 and not backward else 16
    elif backward:
        block = 32 if block_d <= 128 else 16
    else:
        block = 64 if block_d <= 64 else 32
    block = min(block, max(16, triton.next_power_of_2(length)))
    exact = dtype == torch.float32
    warps = 8 if backward or exact or block > 32 else 4  # more threads, fewer registers each
    return dict(BLOCK_M=block, BLOCK_N=block, BLOCK_D=block_d, num_warps=warps,
                num_stages=1 if exact and backward else 2)


def _strides(*tensors: Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()]


def _flags(q: Tensor) -> dict:
    return dict(UPCAST=INTERPRET or q.dtype == torch.float32,
                DOT_PRECISION=dot_precision(q.dtype))


def axis_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Launcher: out [P, S, R, H, d] contiguous (dtype of q), lse [P, S, R, H] float32. Inputs
    are validated by vidcore.ops.axis_attention; any strides."""
    p, s, r, h, d = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    config = _launch_config(s, d, q.dtype, backward=False)
    grid = (p * r * h, triton.cdiv(s, config["BLOCK_M"]))
    launch(_axis_attention_fwd_kernel, grid,
           q, k, v, out, lse, s, r, h, d, scale * LOG2E, *_strides(q, k, v), *out.stride()[:4],
           *lse.stride()[:3], device=q.device, **_flags(q), **config)
    return out, lse


def axis_attention_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                       lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Launcher: (dq, dk, dv) [P, S, R, H, d], contiguous, dtypes of q, k, v."""
    p, s, r, h, d = q.shape
    grad_q, grad_k, grad_v = (torch.empty(q.shape, dtype=q.dtype, device=q.device)
                              for _ in range(3))
    if q.numel() == 0:
        return grad_q, grad_k, grad_v
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    config = _launch_config(s, d, q.dtype, backward=True)
    common = (s, r, h, d, scale * LOG2E, scale, *_strides(q, k, v), *out.stride()[:4],
              *lse.stride()[:3])
    launch(_axis_attention_dkdv_kernel, (p * r * h, triton.cdiv(s, config["BLOCK_N"])),
           grad_out, q, k, v, out, lse, grad_k, grad_v, *common, device=q.device, **_flags(q),
           **config)
    launch(_axis_attention_dq_kernel, (p * r * h, triton.cdiv(s, config["BLOCK_M"])),
           grad_out, q, k, v, out, lse, grad_q, *common, device=q.device, **_flags(q), **config)
    return grad_q, grad_k, grad_v
