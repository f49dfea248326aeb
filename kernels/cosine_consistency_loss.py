"""Cosine consistency loss (ST-LLM's masked video modelling loss), forward and backward.

loss = (1 / N) sum_i (2 - 2 c_i),  c_i = <a_i, b_i> / (max(|a_i|, eps) max(|b_i|, eps)).
One program per BLOCK_N rows; it streams the rows in BLOCK_D column chunks and keeps only three
per-row sums (<a, b>, |a|^2, |b|^2), in fp32 (fp64 for fp64 inputs): no normalised copies. The
forward writes one partial sum per program (summed in a fixed order by the launcher, so the loss
is deterministic); the backward recomputes the three sums, then streams the rows again to write
  d a_i = s (b_i / (n_a n_b) - [|a_i| >= eps] c_i a_i / n_a^2),  s = -2 g / N  (b symmetric),
F.normalize's gradient: below eps the norm is the constant eps.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._attention_common import INTERPRET
from vidcore.kernels._launch import check_grid, launch

__all__ = ["cosine_consistency_loss_fwd", "cosine_consistency_loss_bwd"]

EPS = 1e-12  # F.normalize's default


def _launch_config(dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps): tiles of 4K elements (2K for fp64), whole rows up to
    D = 4096 (ST-LLM's width), at most 64 rows (the per-row sums live in registers too)."""
    if INTERPRET:
        return 4, 16, 4
    tile = 2048 if dtype == torch.float64 else 4096
    block_d = min(triton.next_power_of_2(max(dim, 1)), tile)
    return min(64, tile // block_d), block_d, 4 if block_d <= 1024 else 8


@triton.jit
def _load_pair(a_ptr, b_ptr, rows, row_mask, col0, D, stride_a, stride_b, ACC: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Columns col0 : col0 + BLOCK_D of the rows of a and b, in the accumulation dtype."""
    cols = col0 + tl.arange(0, BLOCK_D)
    mask = row_mask[:, None] & (cols < D)[None, :]
    a = tl.load(a_ptr + rows[:, None] * stride_a + cols[None, :], mask=mask, other=0.0)
    b = tl.load(b_ptr + rows[:, None] * stride_b + cols[None, :], mask=mask, other=0.0)
    return cols, mask, a.to(ACC), b.to(ACC)


@triton.jit
def _row_stats(a_ptr, b_ptr, N, D, stride_a, stride_b, EPS_: tl.constexpr, ACC: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows and, per row, <a, b>, |a|, |b|, max(|a|, eps) and max(|b|, eps)
    (eps in the accumulation dtype: a float literal would be rounded to fp32)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    dot = tl.zeros([BLOCK_N], ACC)
    sq_a = tl.zeros([BLOCK_N], ACC)
    sq_b = tl.zeros([BLOCK_N], ACC)
    for col0 in range(0, D, BLOCK_D):
        _, _, a, b = _load_pair(a_ptr, b_ptr, rows, row_mask, col0, D, stride_a, stride_b, ACC,
                                BLOCK_D)
        dot += tl.sum(a * b, 1)
        sq_a += tl.sum(a * a, 1)
        sq_b += tl.sum(b * b, 1)
    eps = tl.full([], EPS_, ACC)
    norm_a, norm_b = tl.sqrt(sq_a), tl.sqrt(sq_b)
    return rows, row_mask, dot, norm_a, norm_b, tl.maximum(norm_a, eps), tl.maximum(norm_b, eps)


@triton.jit
def _cosine_consistency_loss_fwd_kernel(
    partial_ptr, a_ptr, b_ptr, N, D, stride_a, stride_b,
    EPS_: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _, row_mask, dot, _, _, n_a, n_b = _row_stats(a_ptr, b_ptr, N, D, stride_a, stride_b, EPS_,
                                                  ACC, BLOCK_N, BLOCK_D)
    per_row = tl.where(row_mask, 2.0 - 2.0 * (dot / (n_a * n_b)), 0.0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(per_row, 0))


@triton.jit
def _cosine_consistency_loss_bwd_kernel(
    grad_a_ptr, grad_b_ptr, grad_ptr, a_ptr, b_ptr, N, D, stride_a, stride_b, stride_ga,
    stride_gb,
    EPS_: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask, dot, norm_a, norm_b, n_a, n_b = _row_stats(
        a_ptr, b_ptr, N, D, stride_a, stride_b, EPS_, ACC, BLOCK_N, BLOCK_D)
    cos = dot / (n_a * n_b)
    scale = tl.load(grad_ptr).to(ACC) * -2.0 / N  # (N, not a float 1/N: floats are fp32 args)
    cross = scale / (n_a * n_b)  # coefficient of b in d a (and of a in d b)
    # below eps F.normalize divides by the constant eps: no term through the norm
    self_a = tl.where(norm_a >= n_a, -scale * cos / (n_a * n_a), 0.0)
    self_b = tl.where(norm_b >= n_b, -scale * cos / (n_b * n_b), 0.0)
    for col0 in range(0, D, BLOCK_D):
        cols, mask, a, b = _load_pair(a_ptr, b_ptr, rows, row_mask, col0, D, stride_a, stride_b,
                                      ACC, BLOCK_D)
        grad_a = cross[:, None] * b + self_a[:, None] * a
        grad_b = cross[:, None] * a + self_b[:, None] * b
        tl.store(grad_a_ptr + rows[:, None] * stride_ga + cols[None, :],
                 grad_a.to(grad_a_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_b_ptr + rows[:, None] * stride_gb + cols[None, :],
                 grad_b.to(grad_b_ptr.dtype.element_ty), mask=mask)


def _acc_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _rows(x: Tensor) -> Tensor:
    """x with unit stride along D (a copy only for column-strided input)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def cosine_consistency_loss_fwd(a: Tensor, b: Tensor) -> Tensor:
    """Launcher: the 0-d loss (float32 for 16-bit inputs, else a's dtype) of a, b [N, D]."""
    a, b = _rows(a), _rows(b)
    rows, dim = a.shape
    out_dtype = torch.promote_types(a.dtype, torch.float32)
    if rows == 0:
        return torch.zeros((), dtype=out_dtype, device=a.device)
    block_n, block_d, num_warps = _launch_config(dim, a.dtype)
    programs = triton.cdiv(rows, block_n)
    partial = torch.empty(programs, dtype=out_dtype, device=a.device)
    launch(_cosine_consistency_loss_fwd_kernel, (check_grid("cosine_consistency_loss", programs),),
           partial, a, b, rows, dim, a.stride(0), b.stride(0), device=a.device,
           EPS_=EPS, ACC=_acc_dtype(a.dtype), BLOCK_N=block_n, BLOCK_D=block_d,
           num_warps=num_warps)
    return partial.sum() / rows


def cosine_consistency_loss_bwd(grad: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Launcher: (grad_a, grad_b) like a and b, for the loss's 0-d gradient `grad` (read on the
    device: no sync)."""
    a, b = _rows(a), _rows(b)
    rows, dim = a.shape
    grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
    if rows == 0 or dim == 0:
        return grad_a, grad_b
    block_n, block_d, num_warps = _launch_config(dim, a.dtype)
    programs = check_grid("cosine_consistency_loss_backward", triton.cdiv(rows, block_n))
    launch(_cosine_consistency_loss_bwd_kernel, (programs,),
           grad_a, grad_b, grad.contiguous(), a, b, rows, dim, a.stride(0), b.stride(0),
           grad_a.stride(0), grad_b.stride(0), device=a.device,
           EPS_=EPS, ACC=_acc_dtype(a.dtype), BLOCK_N=block_n, BLOCK_D=block_d,
           num_warps=num_warps)
    return grad_a, grad_b
