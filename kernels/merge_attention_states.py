"""Merge of two partial attention results over disjoint key sets, forward and backward.

out = w_a * out_a + w_b * out_b,  w_x = exp(lse_x - lse),  lse = log(exp(lse_a) + exp(lse_b)).
One program per (BLOCK_N rows, head, batch), flattened onto grid axis 0 (axes 1 and 2 stop at
65535); the whole head dim is one tile (d <= 256), so each input element is read once and the
row reductions of the backward stay in registers. The attention forward's split-KV path merges
its partial results with `merge_states_into`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from vidcore.kernels._launch import check_grid, launch

__all__ = ["merge_attention_states_bwd", "merge_attention_states_fwd", "merge_states_into"]


@triton.jit
def _merge_weights(lse_a_ptr, lse_b_ptr, lse_offs, mask):
    """Weights (w_a, w_b) and merged lse of BLOCK_N rows; rows with no keys give 0, 0, -inf."""
    lse_a = tl.load(lse_a_ptr + lse_offs, mask=mask, other=float("-inf")).to(tl.float32)
    lse_b = tl.load(lse_b_ptr + lse_offs, mask=mask, other=float("-inf")).to(tl.float32)
    peak = tl.maximum(lse_a, lse_b)
    peak = tl.where(peak == float("-inf"), 0.0, peak)
    exp_a = tl.exp(lse_a - peak)
    exp_b = tl.exp(lse_b - peak)
    total = exp_a + exp_b
    has_keys = total > 0
    safe_total = tl.where(has_keys, total, 1.0)
    lse = tl.where(has_keys, peak + tl.log(safe_total), float("-inf"))
    return exp_a / safe_total, exp_b / safe_total, lse


@triton.jit
def _load_tile(
    out_a_ptr, lse_a_ptr, out_b_ptr, lse_b_ptr, N, D,
    stride_o_b, stride_o_n, stride_o_h, stride_l_b, stride_l_h, heads,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """This program's tile: offsets and masks of its [BLOCK_N, BLOCK_D] outputs and BLOCK_N lse
    entries, both partial outputs in fp32, and the merge weights."""
    pid = tl.program_id(0).to(tl.int64)
    row_blocks = tl.cdiv(N, BLOCK_N)
    head = pid // row_blocks % heads
    batch = pid // row_blocks // heads
    rows = pid % row_blocks * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < N
    lse_offs = batch * stride_l_b + head * stride_l_h + rows
    weight_a, weight_b, lse = _merge_weights(lse_a_ptr, lse_b_ptr, lse_offs, row_mask)
    offs = batch * stride_o_b + head * stride_o_h + rows[:, None] * stride_o_n + cols[None, :]
    mask = row_mask[:, None] & (cols[None, :] < D)
    out_a = tl.load(out_a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out_b = tl.load(out_b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return offs, mask, lse_offs, row_mask, out_a, out_b, weight_a, weight_b, lse


@triton.jit
def _merge_attention_states_fwd_kernel(
    out_ptr, lse_ptr, out_a_ptr, lse_a_ptr, out_b_ptr, lse_b_ptr,
    N, D,
    stride_o_b, stride_o_n, stride_o_h,  # out, out_a and out_b share strides (contiguous)
    stride_l_b, stride_l_h,  # lse, lse_a and lse_b: [B, H, N] with unit stride along N
    heads, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs, mask, lse_offs, row_mask, out_a, out_b, weight_a, weight_b, lse = _load_tile(
        out_a_ptr, lse_a_ptr, out_b_ptr, lse_b_ptr, N, D,
        stride_o_b, stride_o_n, stride_o_h, stride_l_b, stride_l_h, heads, BLOCK_N, BLOCK_D)
    out = weight_a[:, None] * out_a + weight_b[:, None] * out_b
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(lse_ptr + lse_offs, lse, mask=row_mask)


@triton.jit
def _merge_attention_states_bwd_kernel(
    grad_out_a_ptr, grad_lse_a_ptr, grad_out_b_ptr, grad_lse_b_ptr,
    grad_out_ptr, grad_lse_ptr, out_a_ptr, lse_a_ptr, out_b_ptr, lse_b_ptr,
    N, D,
    stride_o_b, stride_o_n, stride_o_h,
    stride_l_b, stride_l_h,
    heads, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs, mask, lse_offs, row_mask, out_a, out_b, weight_a, weight_b, _ = _load_tile(
        out_a_ptr, lse_a_ptr, out_b_ptr, lse_b_ptr, N, D,
        stride_o_b, stride_o_n, stride_o_h, stride_l_b, stride_l_h, heads, BLOCK_N, BLOCK_D)
    grad_out = tl.load(grad_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad_lse = tl.load(grad_lse_ptr + lse_offs, mask=row_mask, other=0.0).to(tl.float32)
    out = weight_a[:, None] * out_a + weight_b[:, None] * out_b
    # d lse_x = w_x * (g_lse + <g_out, out_x - out>)
    dot_a = tl.sum(grad_out * (out_a - out), axis=1)
    dot_b = tl.sum(grad_out * (out_b - out), axis=1)
    out_ty = grad_out_a_ptr.dtype.element_ty
    tl.store(grad_out_a_ptr + offs, (weight_a[:, None] * grad_out).to(out_ty), mask=mask)
    tl.store(grad_out_b_ptr + offs, (weight_b[:, None] * grad_out).to(out_ty), mask=mask)
    tl.store(grad_lse_a_ptr + lse_offs, weight_a * (grad_lse + dot_a), mask=row_mask)
    tl.store(grad_lse_b_ptr + lse_offs, weight_b * (grad_lse + dot_b), mask=row_mask)


def _launch_config(num_rows: int, head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps): about 4K elements per tile, the whole head dim in one."""
    block_d = triton.next_power_of_2(head_dim)
    block_n = max(1, min(4096 // block_d, triton.next_power_of_2(max(num_rows, 1))))
    return block_n, block_d, 4


def _batched(out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Views with a leading batch dim ([N, H, d] -> [1, N, H, d]) and unit stride on d and N."""
    if out.dim() == 3:
        out, lse = out.unsqueeze(0), lse.unsqueeze(0)
    return out.contiguous(), lse.contiguous()


def _grid(out: Tensor, block_n: int) -> tuple[int]:
    batch, num_rows, heads, _ = out.shape
    return (check_grid("merge_attention_states", triton.cdiv(num_rows, block_n) * heads * batch),)


def merge_states_into(out: Tensor, lse: Tensor, out_a: Tensor, lse_a: Tensor, out_b: Tensor,
                      lse_b: Tensor) -> None:
    """Writes the merge of (out_a, lse_a) and (out_b, lse_b) into out, lse: contiguous
    [B, N, H, d] and [B, H, N] tensors (out may be of another float dtype than the inputs)."""
    block_n, block_d, num_warps = _launch_config(out_a.shape[1], out_a.shape[3])
    if out.numel() > 0:
        launch(_merge_attention_states_fwd_kernel, _grid(out_a, block_n),
               out, lse, out_a, lse_a, out_b, lse_b, out_a.shape[1], out_a.shape[3],
               out_a.stride(0), out_a.stride(1), out_a.stride(2), lse_a.stride(0),
               lse_a.stride(1), out_a.shape[2], BLOCK_N=block_n, BLOCK_D=block_d,
               num_warps=num_warps, device=out.device)


def merge_attention_states_fwd(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Launcher: out [.., N, H, d] (dtype of out_a), lse [.., H, N] (float32 or wider). Inputs are
    assumed validated (vidcore.ops.merge_attention_states); strided inputs are made contiguous."""
    shape, lse_shape = out_a.shape, lse_a.shape
    (a, la), (b, lb) = _batched(out_a, lse_a), _batched(out_b, lse_b.to(lse_a.dtype))
    lse_dtype = torch.promote_types(lse_a.dtype, torch.float32)
    out, lse = torch.empty_like(a), torch.empty(la.shape, dtype=lse_dtype, device=a.device)
    merge_states_into(out, lse, a, la, b, lb)
    return out.view(shape), lse.view(lse_shape)


def merge_attention_states_bwd(
    grad_out: Tensor, grad_lse: Tensor, out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launcher: (grad_out_a, grad_lse_a, grad_out_b, grad_lse_b), shapes and dtypes of inputs."""
    shape, lse_shape = out_a.shape, lse_a.shape
    (a, la), (b, lb) = _batched(out_a, lse_a), _batched(out_b, lse_b)
    (g, gl) = _batched(grad_out, grad_lse)
    ga, gb = torch.empty_like(a), torch.empty_like(b)
    gla, glb = torch.empty_like(la), torch.empty_like(lb)
    block_n, block_d, num_warps = _launch_config(a.shape[1], a.shape[3])
    if a.numel() > 0:
        launch(_merge_attention_states_bwd_kernel, _grid(a, block_n),
               ga, gla, gb, glb, g, gl, a, la, b, lb, a.shape[1], a.shape[3],
               a.stride(0), a.stride(1), a.stride(2), la.stride(0), la.stride(1), a.shape[2],
               BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps, device=a.device)
    return ga.view(shape), gla.view(lse_shape), gb.view(shape), glb.view(lse_shape)
