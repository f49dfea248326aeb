"""Multi-source attention forward (ActionLLM's Cross-Modality Interaction Block).

out_a = (1 / M) sum_m softmax(scale * q_a k_m^T) v_m  for every query source a, M key sources.
One launch for every (query source, key source) pair: one program per (BLOCK_M rows of one query
source, batch x head) runs one online softmax per key source (exp2 domain) and averages the M
normalised contexts in registers. Sources travel as tuples of tensors, so the kernel is
specialised per source count and unrolls the pairs. It also writes what the backward needs:
each pair's context (partials) and log-sum-exp.

Tiny head dims: tl.dot needs an inner dim of at least 16, so head dims below 16 are zero-padded
to 16 in registers (masked loads: memory traffic stays d per row). At ActionLLM's d = 4 a score
costs one exp2 and 2 x 4 multiply-adds, so the kernel is bound by exp throughput, not by the
padded tensor-core products.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._attention_common import INTERPRET, dot_precision
from vidcore.kernels._launch import check_grid, launch

__all__ = ["multi_source_attention_fwd", "launch_config", "strides", "source_blocks"]

LOG2E = math.log2(math.e)
_LOG2E = tl.constexpr(LOG2E)  # (jit functions see only constexpr globals)


def launch_config(head_dim: int, dtype: torch.dtype, backward: bool = False
                  ) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps): the whole head dim in one tile (at least 16).
    16-bit tiles are the largest that compile for sm_80 / sm_90a without register spills
    (tests/kernels/test_aot_compile.py). Exact float32 runs its products on FMA units: at head
    dims 64-128 it spills 8-16 bytes with every tile tried, so it gets the smallest tiles;
    with TF32 allowed it takes the 16-bit path's registers."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if INTERPRET:
        return 16, 16, block_d, 4
    exact = dtype == torch.float32
    if block_d <= 16:
        block_m, block_n, warps = (64, 64, 8) if exact else (64, 64, 4)
    elif block_d <= 64:
        block_m, block_n, warps = (16, 32, 8) if exact else (64, 32, 8)
    elif block_d <= 128:
        block_m, block_n, warps = (16, 16, 8) if exact else (32, 32, 8) if backward else (64, 32, 8)
    else:
        block_m, block_n, warps = (16, 16, 8) if exact or backward else (16, 32, 8)
    return block_m, block_n, block_d, warps


def strides(tensors: list[Tensor]) -> tuple[tuple[int, int, int, int], ...]:
    """(batch, head, row, dim) strides of each [B, H, S, d] tensor (any layout)."""
    return tuple(tuple(t.stride()) for t in tensors)


def source_blocks(tensors: list[Tensor], block: int) -> int:
    """Programs for every source's rows in blocks of `block`."""
    return sum(triton.cdiv(t.shape[2], block) for t in tensors)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _tile(ptr, stride, b, h, rows, row_mask, dims, dim_mask, UPCAST: tl.constexpr):
    """[rows, :] of head (b, h) of a [B, H, S, d] tensor with `stride` = (sb, sh, ss, sd)."""
    offs = b * stride[0] + h * stride[1] + rows[:, None] * stride[2] + dims[None, :] * stride[3]
    tile = tl.load(ptr + offs, mask=row_mask[:, None] & dim_mask[None, :], other=0.0)
    return tile.to(tl.float32) if UPCAST else tile


@triton.jit
def _pair_offsets(m, b, h, batch, heads, length, rows, head_dim):
    """Row offsets into a pair buffer [M, B, H, length] (lse) and [M, B, H, length, d] (partials),
    both contiguous, for key source m."""
    row = ((m * batch + b) * heads + h) * length + rows
    return row, row * head_dim


@triton.jit
def _softmax_context(q, k_ptr, v_ptr, k_stride, v_stride, k_len, b, h, dims, dim_mask,
                     qk_scale, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """softmax(scale q k^T) v for one key source, and its lse (natural log, -inf without keys)."""
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for key0 in range(0, k_len, BLOCK_N):
        cols = key0 + tl.arange(0, BLOCK_N)
        col_mask = cols < k_len
        k = _tile(k_ptr, k_stride, b, h, cols, col_mask, dims, dim_mask, UPCAST)
        v = _tile(v_ptr, v_stride, b, h, cols, col_mask, dims, dim_mask, UPCAST)
        scores = _dot(q, tl.trans(k), PRECISION) * qk_scale  # log2 domain
        scores = tl.where(col_mask[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))  # finite: every block has a key
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, PRECISION)
        row_max = new_max
    has_keys = row_sum > 0
    context = acc / tl.where(has_keys, row_sum, 1.0)[:, None]
    lse = tl.where(has_keys, (row_max + tl.log2(tl.where(has_keys, row_sum, 1.0))) / _LOG2E,
                   float("-inf"))
    return context, lse


@triton.jit
def _forward_block(q_ptr, q_stride, q_len, o_ptr, lse_ptr, part_ptr, k_ptrs, v_ptrs, k_lens,
                   k_strides, v_strides, b, h, batch, heads, row0, head_dim, qk_scale,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = row0 + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_mask, dim_mask = rows < q_len, dims < head_dim
    mask = row_mask[:, None] & dim_mask[None, :]
    q = _tile(q_ptr, q_stride, b, h, rows, row_mask, dims, dim_mask, UPCAST)
    total = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for m in tl.static_range(len(k_ptrs)):
        context, lse = _softmax_context(q, k_ptrs[m], v_ptrs[m], k_strides[m], v_strides[m],
                                        k_lens[m], b, h, dims, dim_mask, qk_scale, UPCAST,
                                        PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)
        lse_row, part_row = _pair_offsets(m, b, h, batch, heads, q_len, rows, head_dim)
        tl.store(lse_ptr + lse_row, lse, mask=row_mask)
        tl.store(part_ptr + part_row[:, None] + dims[None, :],
                 context.to(part_ptr.dtype.element_ty), mask=mask)
        total += context
    out_row = ((b * heads + h) * q_len + rows) * head_dim
    tl.store(o_ptr + out_row[:, None] + dims[None, :],
             (total / len(k_ptrs)).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _multi_source_attention_fwd_kernel(
    q_ptrs, k_ptrs, v_ptrs, o_ptrs, lse_ptrs, part_ptrs,  # tuples: one tensor per source
    q_lens, k_lens, q_strides, k_strides, v_strides,  # tuples of ints / of 4 strides
    batch, heads, head_dim, qk_scale,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid: (query blocks of all query sources, B * H). Program 0 axis enumerates the blocks of
    query source 0, then of source 1, ...; the static loop finds this program's source."""
    block = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // heads, bh % heads
    first = 0
    for a in tl.static_range(len(q_ptrs)):
        count = tl.cdiv(q_lens[a], BLOCK_M)
        if (block >= first) & (block < first + count):
            row0 = (block - first).to(tl.int64) * BLOCK_M
            _forward_block(q_ptrs[a], q_strides[a], q_lens[a], o_ptrs[a], lse_ptrs[a],
                           part_ptrs[a], k_ptrs, v_ptrs, k_lens, k_strides, v_strides, b, h,
                           batch, heads, row0, head_dim, qk_scale, UPCAST, PRECISION,
                           BLOCK_M, BLOCK_N, BLOCK_D)
        first += count


def multi_source_attention_fwd(queries: list[Tensor], keys: list[Tensor], values: list[Tensor],
                               scale: float) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Launcher (vidcore::multi_source_attention on CUDA): (outs, lse, partials) as
    vidcore.reference.multi_source_attention. Inputs are assumed validated; any strides."""
    batch, heads, _, head_dim = queries[0].shape
    sources = len(keys)
    outs = [torch.empty(q.shape, dtype=q.dtype, device=q.device) for q in queries]
    lse = [q.new_empty((sources, *q.shape[:-1]), dtype=torch.float32) for q in queries]
    partials = [q.new_empty((sources, *q.shape)) for q in queries]
    block_m, block_n, block_d, num_warps = launch_config(head_dim, queries[0].dtype)
    grid = (check_grid("multi_source_attention", source_blocks(queries, block_m)),
            check_grid("multi_source_attention", batch * heads, axis=1))  # blocks: the larger
    if grid[0] * grid[1] > 0:
        launch(_multi_source_attention_fwd_kernel, grid,
               tuple(queries), tuple(keys), tuple(values), tuple(outs), tuple(lse), tuple(partials),
               tuple(q.shape[2] for q in queries), tuple(k.shape[2] for k in keys),
               strides(queries), strides(keys), strides(values),
               batch, heads, head_dim, scale * LOG2E, device=queries[0].device,
               UPCAST=INTERPRET, PRECISION=dot_precision(queries[0].dtype),
               BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps)
    return outs, lse, partials

