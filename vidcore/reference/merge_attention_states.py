"""Reference of merge_attention_states: exact merge of attention over disjoint key sets."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["merge_attention_states", "merge_attention_states_backward"]


def _merge_weights(lse_a: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Softmax weights of two partial results and their merged log-sum-exp, in fp32 (fp64 for
    fp64 inputs). A row with no keys on either side gets weights 0 and lse -inf, not NaN."""
    compute = torch.promote_types(torch.promote_types(lse_a.dtype, lse_b.dtype), torch.float32)
    lse_a, lse_b = lse_a.to(compute), lse_b.to(compute)
    peak = torch.maximum(lse_a, lse_b)
    peak = torch.where(torch.isneginf(peak), torch.zeros_like(peak), peak)
    exp_a, exp_b = torch.exp(lse_a - peak), torch.exp(lse_b - peak)
    total = exp_a + exp_b
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    lse = torch.where(total > 0, peak + torch.log(safe_total), torch.full_like(peak, -torch.inf))
    return exp_a / safe_total, exp_b / safe_total, lse


def _per_row(weight: Tensor) -> Tensor:
    """[..., H, N] weights -> [..., N, H, 1], to scale outputs laid out [..., N, H, d]."""
    return weight.transpose(-1, -2).unsqueeze(-1)


def merge_attention_states(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    """Exact merge of attention over two disjoint key sets A and B of the same queries.

    With `w_a = exp(lse_a - lse)`, `w_b = exp(lse_b - lse)`, `lse = log(exp(lse_a) + exp(lse_b))`:
    `out = w_a * out_a + w_b * out_b`, which is softmax attention over the union A + B
    (the split-KV / ring-attention identity).

    Args:
        out_a, out_b: [N, H, d] or [B, N, H, d] partial outputs (any float dtype).
        lse_a, lse_b: [H, N] or [B, H, N] their log-sum-exp, -inf where a row saw no keys.
    Returns:
        out (dtype of out_a, same shape) and lse (float32, shape of lse_a).
    """
    weight_a, weight_b, lse = _merge_weights(lse_a, lse_b)
    compute = torch.promote_types(out_a.dtype, torch.float32)
    out = _per_row(weight_a) * out_a.to(compute) + _per_row(weight_b) * out_b.to(compute)
    lse_dtype = torch.promote_types(lse_a.dtype, torch.float32)
    return out.to(out_a.dtype).contiguous(), lse.to(lse_dtype).contiguous()


def merge_attention_states_backward(
    grad_out: Tensor, grad_lse: Tensor, out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of merge_attention_states.

    d out_a = w_a * g_out;  d lse_a = w_a * (g_lse + <g_out, out_a - out>)  (sum over d),
    and the same for b. Rows with no keys on either side get zero gradients.
    Returns:
        grad_out_a, grad_lse_a, grad_out_b, grad_lse_b (dtypes and shapes of the inputs).
    """
    weight_a, weight_b, _ = _merge_weights(lse_a, lse_b)
    compute = torch.promote_types(out_a.dtype, torch.float32)
    g_out, a, b = grad_out.to(compute), out_a.to(compute), out_b.to(compute)
    out = _per_row(weight_a) * a + _per_row(weight_b) * b

    def side(weight: Tensor, partial: Tensor) -> tuple[Tensor, Tensor]:
        row_dot = (g_out * (partial - out)).sum(-1).transpose(-1, -2)  # [..., H, N]
        grad_partial = (_per_row(weight) * g_out).contiguous()
        return grad_partial, (weight * (grad_lse.to(compute) + row_dot)).contiguous()

    grad_out_a, grad_lse_a = side(weight_a, a)
    grad_out_b, grad_lse_b = side(weight_b, b)
    return (grad_out_a.to(out_a.dtype), grad_lse_a.to(lse_a.dtype),
            grad_out_b.to(out_b.dtype), grad_lse_b.to(lse_b.dtype))
