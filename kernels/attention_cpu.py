"""CPU attention on aten's flash kernel, called per group of pieces of the packed batch that
kernels/attention_cpu_plan.py finds, so cost falls with the mask's sparsity.

`torch.ops.aten._scaled_dot_product_flash_attention_for_cpu` (and its backward) computes
[B, Hq, R, d] x [B, Hk, n, d] with GQA and returns out and lse; a group of pieces is one such
call per part on strided views of the packed q, k, v (no copies), and parts of the same rows
are merged by lse. The backward calls aten's backward on the same pieces with the final out and
lse (so the parts need no merge there) and sums the gradients in float32 (float64 for float64)
in a fixed order. Results are the same run to run; like aten's own CPU attention (and SDPA's),
they can differ in the last bits between thread counts (MKL's gemm takes thread-dependent paths,
e.g. for one (batch, head) task, which aten runs outside its parallel region). The gradient of
lse enters aten's delta = rowsum(dO * O) - dlse through one extra head-dim column (dO: 1,
O: -dlse, q, k, v: 0).
aten has no softcap: softcap runs the reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from vidcore.kernels.attention_cpu_plan import Group, Part, plan

from vidcore import reference
from vidcore.ops._attention_args import (
    check_backward_args,
    check_offsets,
    check_op_args,
    normalise_mask_args,
)

__all__ = ["attention_cpu_fwd", "attention_cpu_bwd"]

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
           tokens_per_frame, q_frame_range, window_left, window_right, softcap):
    """Everything a direct call could get wrong, checked before a pointer reaches aten (which
    trusts shapes: a key slice of length 0 kills the process); then the plan."""
    check_op_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                  tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    check_offsets("cu_seqlens_q", cu_q, q.shape[0], max_seqlen_q)
    check_offsets("cu_seqlens_k", cu_k, k.shape[0], max_seqlen_k)
    mask_args = normalise_mask_args(tokens_per_frame, window_left, window_right, q.shape[0],
                                    k.shape[0])
    if softcap > 0:
        return mask_args, None
    return mask_args, plan(cu_q, cu_k, causal, mask_args[0], q_frame_range, *mask_args[1:])


def _members(t: Tensor, first: int, count: int, stride: int, rows: int) -> Tensor:
    """[count, H, rows, d] view of a packed [total, H, d] tensor: member m is rows
    first + m * stride ... + rows (members may overlap: keys of neighbouring frames)."""
    s_row, s_head, s_dim = t.stride()
    return t.as_strided((count, t.shape[1], rows, t.shape[2]), (stride * s_row, s_head, s_row,
                                                                  s_dim),
                        t.storage_offset() + first * s_row)


def _row_lse(lse: Tensor, group: Group) -> Tensor:
    """[members, Hq, rows] view of lse [Hq, total_q] (contiguous)."""
    return lse.as_strided((group.members, lse.shape[0], group.rows),
                          (group.stride, lse.shape[1], 1), group.q0)


def _keys(t: Tensor, group: Group, part: Part) -> Tensor:
    return _members(t, part.k0, group.members, part.stride, part.n)


def _flash(q: Tensor, k: Tensor, v: Tensor, part: Part, scale: float,
           grad: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
    """aten's flash attention of one part, or its backward given grad = (grad_out, out, lse)."""
    mask = part.mask(q.dtype)
    if grad is None:
        return _FLASH(q, k, v, 0.0, part.causal, attn_mask=mask, scale=scale)
    return _FLASH_BWD(grad[0], q, k, v, grad[1], grad[2], 0.0, part.causal, attn_mask=mask,
                      scale=scale)


def attention_cpu_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                      scale: float, tokens_per_frame: int, q_frame_range: Tensor | None,
                      window_left: int, window_right: int, softcap: float
                      ) -> tuple[Tensor, Tensor]:
    """out [total_q, Hq, d] (dtype of q), lse [Hq, total_q] float32 (float64 for float64)."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
            tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    mask_args, groups = _check(*args)
    if groups is None:
        return reference.attention(*args[:9], mask_args[0], q_frame_range, *mask_args[1:],
                                   softcap)
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf,
                     dtype=torch.promote_types(q.dtype, torch.float32))
    for group in groups:
        rows = _members(q, group.q0, group.members, group.stride, group.rows)
        (out_a, lse_a), *rest = (_flash(rows, _keys(k, group, part), _keys(v, group, part),
                                        part, scale) for part in group.parts)
        for out_b, lse_b in rest:  # every row sees keys in both parts: finite lse, exact merge
            lse_ab = torch.logaddexp(lse_a, lse_b)
            out_a = (out_a * (lse_a - lse_ab).exp()[..., None]
                     + out_b * (lse_b - lse_ab).exp()[..., None])
            lse_a = lse_ab
        _members(out, group.q0, group.members, group.stride, group.rows).copy_(out_a)
        _row_lse(lse, group).copy_(lse_a)
    return out, lse


def _add_members(acc: Tensor, group: Group, part: Part, grad: Tensor) -> None:
    """acc[member keys] += grad [members, Hk, n, d]; overlapping members are added in classes
    of members whose keys do not overlap (an in-place add through overlapping views races)."""
    if part.stride == 0:  # every member reads the same keys
        _members(acc, part.k0, 1, 0, part.n).add_(grad.sum(0, keepdim=True))
        return
    classes = min(group.members, -(-part.n // part.stride))
    for first in range(classes):
        count = len(range(first, group.members, classes))
        _members(acc, part.k0 + first * part.stride, count, classes * part.stride,
                 part.n).add_(grad[first::classes])


def attention_cpu_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                      lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                      tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int,
                      window_right: int, softcap: float, grad_lse: Tensor | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) like (q, k, v) (contiguous)."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
            tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    mask_args, groups = _check(*args)
    check_backward_args(grad_out, q, out, lse, grad_lse)
    if groups is None:
        return reference.attention_backward(grad_out, q, k, v, out, lse, *args[3:9], mask_args[0],
                                            q_frame_range, *mask_args[1:], softcap, grad_lse)
    dim = q.shape[2]
    if grad_lse is not None:  # one more head-dim column carries -dlse into aten's delta
        grad_out, q, k, v = (F.pad(t, (0, 1), value=fill) for t, fill in
                             ((grad_out, 1.0), (q, 0.0), (k, 0.0), (v, 0.0)))
        out = torch.cat([out, -grad_lse.t().unsqueeze(-1).to(out.dtype)], -1)
    accumulate = torch.promote_types(q.dtype, torch.float32)
    dq, dk, dv = (torch.zeros(t.shape, dtype=accumulate) for t in (q, k, v))
    lse = lse.contiguous()
    for group in groups:
        row_views = [_members(t, group.q0, group.members, group.stride, group.rows)
                     for t in (grad_out, q, out)]
        row_lse = _row_lse(lse, group).contiguous()
        for part in group.parts:
            grads = _flash(row_views[1], _keys(k, group, part), _keys(v, group, part), part,
                           scale, (row_views[0], row_views[2], row_lse))
            _members(dq, group.q0, group.members, group.stride, group.rows).add_(grads[0])
            _add_members(dk, group, part, grads[1])
            _add_members(dv, group, part, grads[2])
    return tuple(t[..., :dim].to(q.dtype).contiguous() for t in (dq, dk, dv))
