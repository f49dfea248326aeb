"""CPU merge of two partial attention results, forward and backward, in few passes over the
[.., N, H, d] outputs: one allocation, a multiply and a fused multiply-add, where the reference
(vidcore.reference.merge_attention_states, the spec) builds three full temporaries. The small
[.., H, N] softmax weights come from the reference's own rule (-inf rows, no NaN).
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidcore.ops._attention_args import (
    check_merge_args,
    check_merge_backward_args,
    check_merge_lse_values,
)
from vidcore.reference.merge_attention_states import _merge_weights

__all__ = ["merge_attention_states_cpu_fwd", "merge_attention_states_cpu_bwd"]


def _per_row(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """[.., H, N] -> [.., N, H, 1] (contiguous), to scale rows of [.., N, H, d]."""
    return weight.transpose(-1, -2).unsqueeze(-1).to(dtype).contiguous()


def _mixed(weight_a: Tensor, a: Tensor, weight_b: Tensor, b: Tensor, compute: torch.dtype
           ) -> Tensor:
    """w_a * a + w_b * b in `compute` precision, into one new tensor."""
    out = torch.mul(a.to(compute), _per_row(weight_a, compute))
    return out.addcmul_(b.to(compute), _per_row(weight_b, compute))


def merge_attention_states_cpu_fwd(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
                                   ) -> tuple[Tensor, Tensor]:
    """(out, lse) as vidcore.reference.merge_attention_states."""
    check_merge_args(out_a, lse_a, out_b, lse_b)
    check_merge_lse_values(lse_a, lse_b)
    weight_a, weight_b, lse = _merge_weights(lse_a, lse_b)
    compute = torch.promote_types(out_a.dtype, torch.float32)
    out = _mixed(weight_a, out_a, weight_b, out_b, compute).to(out_a.dtype)
    return out, lse.to(torch.promote_types(lse_a.dtype, torch.float32))


def merge_attention_states_cpu_bwd(grad_out: Tensor, grad_lse: Tensor, out_a: Tensor,
                                   lse_a: Tensor, out_b: Tensor, lse_b: Tensor
                                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """d out_x = w_x g;  d lse_x = w_x (g_lse + <g, out_x> - <g, out>), with
    <g, out> = w_a <g, out_a> + w_b <g, out_b>: row dots by einsum, no full temporaries."""
    check_merge_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)
    weight_a, weight_b, _ = _merge_weights(lse_a, lse_b)
    compute = torch.promote_types(out_a.dtype, torch.float32)
    g = grad_out.to(compute)
    dot_a, dot_b = (torch.einsum("...nhd,...nhd->...hn", g, t.to(compute)) for t in (out_a, out_b))
    dot_out = weight_a * dot_a + weight_b * dot_b
    shift = grad_lse.to(compute) - dot_out
    grads = []
    for weight, dot, out, lse in ((weight_a, dot_a, out_a, lse_a), (weight_b, dot_b, out_b, lse_b)):
        grads.append(torch.mul(g, _per_row(weight, compute)).to(out.dtype))
        grads.append((weight * (shift + dot)).to(lse.dtype).contiguous())
    return tuple(grads)
