"""Multi-source attention backward, one launch, no atomics (FlashAttention-2's scheme per pair).

For query source a and key source m, with P = exp(scale q_a k_m^T - lse_am), dO = dout_a / M
(the mean's factor) and delta = rowsum(dO * partial_am):
  dV_m += P^T dO,  dS = P * (dO V_m^T - delta),  dK_m += scale dS^T Q_a,  dQ_a += scale dS K_m.
The products run on dout_a as stored; the 1/M and the scale are applied once, in fp32, at the end.
The grid holds two kinds of programs: one per (BLOCK_N keys of a key source, batch x head)
accumulates dK and dV over every query block of every query source; one per (BLOCK_M queries of
a query source, batch x head) accumulates dQ over every key block of every key source. Each
writes its rows once, so the result does not depend on scheduling. Head dims below 16 are
padded to 16 in registers as in the forward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._attention_common import INTERPRET, dot_precision
from vidcore.kernels._launch import check_grid, launch
from vidcore.kernels.multi_source_attention import (
    _LOG2E,
    LOG2E,
    _dot,
    _pair_offsets,
    _tile,
    launch_config,
    source_blocks,
    strides,
)

__all__ = ["multi_source_attention_bwd"]


@triton.jit
def _rows_of_two(x_ptr, x_stride, y_ptr, y_stride, length, b, h, first, dims, dim_mask,
                 UPCAST: tl.constexpr, BLOCK: tl.constexpr):
    """Rows first : first + BLOCK of head (b, h) of two tensors of one source (q and dO, or k
    and v): positions, mask and both tiles."""
    rows = first + tl.arange(0, BLOCK)
    row_mask = rows < length
    x = _tile(x_ptr, x_stride, b, h, rows, row_mask, dims, dim_mask, UPCAST)
    y = _tile(y_ptr, y_stride, b, h, rows, row_mask, dims, dim_mask, UPCAST)
    return rows, row_mask, x, y


@triton.jit
def _row_stats(lse_ptr, part_ptr, d_out, m, b, h, batch, heads, length, rows, row_mask, dims,
               dim_mask, head_dim):
    """lse of pair (., m)'s rows in the log2 domain (+inf past the rows, so P is 0 there) and
    delta = rowsum(dO * partial) (dO without the 1/M, which the caller applies at the end)."""
    lse_row, part_row = _pair_offsets(m, b, h, batch, heads, length, rows, head_dim)
    lse2 = tl.load(lse_ptr + lse_row, mask=row_mask, other=float("inf")) * _LOG2E
    partial = tl.load(part_ptr + part_row[:, None] + dims[None, :],
                      mask=row_mask[:, None] & dim_mask[None, :], other=0.0).to(tl.float32)
    return lse2, tl.sum(d_out.to(tl.float32) * partial, 1)


@triton.jit
def _probs_and_dscores(q, k, v, d_out, lse2, delta, col_mask, qk_scale,
                       PRECISION: tl.constexpr):
    """P [rows, cols] and dS = P * (dO V^T - delta) for one (query block, key block)."""
    scores = _dot(q, tl.trans(k), PRECISION) * qk_scale
    probs = tl.where(col_mask[None, :], tl.exp2(scores - lse2[:, None]), 0.0)
    d_probs = _dot(d_out, tl.trans(v), PRECISION)
    return probs, probs * (d_probs - delta[:, None])


@triton.jit
def _dkdv_block(k_ptr, v_ptr, k_stride, v_stride, k_len, dk_ptr, dv_ptr, m, q_ptrs, q_strides,
                q_lens, do_ptrs, do_strides, lse_ptrs, part_ptrs, b, h, batch, heads, col0,
                head_dim, qk_scale, scale, inv_sources, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr):
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    cols, col_mask, k, v = _rows_of_two(k_ptr, k_stride, v_ptr, v_stride, k_len, b, h, col0,
                                        dims, dim_mask, UPCAST, BLOCK_N)
    d_keys = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    d_values = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for a in tl.static_range(len(q_ptrs)):
        for row0 in range(0, q_lens[a], BLOCK_M):
            rows, row_mask, q, d_out = _rows_of_two(q_ptrs[a], q_strides[a], do_ptrs[a],
                                                    do_strides[a], q_lens[a], b, h, row0, dims,
                                                    dim_mask, UPCAST, BLOCK_M)
            lse2, delta = _row_stats(lse_ptrs[a], part_ptrs[a], d_out, m, b, h, batch, heads,
                                     q_lens[a], rows, row_mask, dims, dim_mask, head_dim)
            probs, d_scores = _probs_and_dscores(q, k, v, d_out, lse2, delta, col_mask,
                                                 qk_scale, PRECISION)
            d_values += _dot(tl.trans(probs).to(q.dtype), d_out, PRECISION)
            d_keys += _dot(tl.trans(d_scores).to(q.dtype), q, PRECISION)
    mask = col_mask[:, None] & dim_mask[None, :]
    offs = ((b * heads + h) * k_len + cols)[:, None] * head_dim + dims[None, :]
    tl.store(dk_ptr + offs, (d_keys * (scale * inv_sources)).to(dk_ptr.dtype.element_ty),
             mask=mask)
    tl.store(dv_ptr + offs, (d_values * inv_sources).to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dq_block(q_ptr, q_stride, q_len, do_ptr, do_stride, lse_ptr, part_ptr, dq_ptr, k_ptrs,
              v_ptrs, k_strides, v_strides, k_lens, b, h, batch, heads, row0, head_dim,
              qk_scale, scale, inv_sources, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    rows, row_mask, q, d_out = _rows_of_two(q_ptr, q_stride, do_ptr, do_stride, q_len, b, h,
                                            row0, dims, dim_mask, UPCAST, BLOCK_M)
    d_query = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for m in tl.static_range(len(k_ptrs)):
        lse2, delta = _row_stats(lse_ptr, part_ptr, d_out, m, b, h, batch, heads, q_len, rows,
                                 row_mask, dims, dim_mask, head_dim)
        for col0 in range(0, k_lens[m], BLOCK_N):
            _, col_mask, k, v = _rows_of_two(k_ptrs[m], k_strides[m], v_ptrs[m], v_strides[m],
                                             k_lens[m], b, h, col0, dims, dim_mask, UPCAST,
                                             BLOCK_N)
            _, d_scores = _probs_and_dscores(q, k, v, d_out, lse2, delta, col_mask, qk_scale,
                                             PRECISION)
            d_query += _dot(d_scores.to(q.dtype), k, PRECISION)
    offs = ((b * heads + h) * q_len + rows)[:, None] * head_dim + dims[None, :]
    tl.store(dq_ptr + offs, (d_query * (scale * inv_sources)).to(dq_ptr.dtype.element_ty),
             mask=row_mask[:, None] & dim_mask[None, :])


@triton.jit
def _multi_source_attention_bwd_kernel(
    q_ptrs, k_ptrs, v_ptrs, do_ptrs, lse_ptrs, part_ptrs, dq_ptrs, dk_ptrs, dv_ptrs,
    q_lens, k_lens, q_strides, k_strides, v_strides, do_strides,
    batch, heads, head_dim, qk_scale, scale, inv_sources,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid: (key blocks of all key sources + query blocks of all query sources, B * H)."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    first = 0
    for m in tl.static_range(len(k_ptrs)):
        count = tl.cdiv(k_lens[m], BLOCK_N)
        if (block >= first) & (block < first + count):
            _dkdv_block(k_ptrs[m], v_ptrs[m], k_strides[m], v_strides[m], k_lens[m], dk_ptrs[m],
                        dv_ptrs[m], m, q_ptrs, q_strides, q_lens, do_ptrs, do_strides, lse_ptrs,
                        part_ptrs, b, h, batch, heads, (block - first).to(tl.int64) * BLOCK_N,
                        head_dim, qk_scale, scale, inv_sources, UPCAST, PRECISION, BLOCK_M,
                        BLOCK_N, BLOCK_D)
        first += count
    for a in tl.static_range(len(q_ptrs)):
        count = tl.cdiv(q_lens[a], BLOCK_M)
        if (block >= first) & (block < first + count):
            _dq_block(q_ptrs[a], q_strides[a], q_lens[a], do_ptrs[a], do_strides[a], lse_ptrs[a],
                      part_ptrs[a], dq_ptrs[a], k_ptrs, v_ptrs, k_strides, v_strides, k_lens, b, h,
                      batch, heads, (block - first).to(tl.int64) * BLOCK_M, head_dim, qk_scale,
                      scale, inv_sources, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)
        first += count


def multi_source_attention_bwd(
    grad_outs: list[Tensor], queries: list[Tensor], keys: list[Tensor], values: list[Tensor],
    lse: list[Tensor], partials: list[Tensor], scale: float,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Launcher (vidcore::multi_source_attention_backward on CUDA): contiguous gradients in the
    inputs' dtypes. lse and partials are the forward's (contiguous)."""
    batch, heads, _, head_dim = queries[0].shape
    grads = [[torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in group]
             for group in (queries, keys, values)]
    block_m, block_n, block_d, num_warps = launch_config(head_dim, queries[0].dtype,
                                                           backward=True)
    blocks = source_blocks(keys, block_n) + source_blocks(queries, block_m)
    grid = (check_grid("multi_source_attention_backward", blocks),
            check_grid("multi_source_attention_backward", batch * heads, axis=1))
    if grid[0] * grid[1] > 0:
        launch(_multi_source_attention_bwd_kernel, grid,
               tuple(queries), tuple(keys), tuple(values), tuple(grad_outs), tuple(lse),
               tuple(partials), *(tuple(g) for g in grads),
               tuple(q.shape[2] for q in queries), tuple(k.shape[2] for k in keys),
               strides(queries), strides(keys), strides(values), strides(grad_outs),
               batch, heads, head_dim, scale * LOG2E, scale, 1.0 / len(keys),
               device=queries[0].device,
               UPCAST=INTERPRET, PRECISION=dot_precision(queries[0].dtype),
               BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps)
    return grads[0], grads[1], grads[2]
