"""CPU kernel of axis_attention: aten's CPU flash attention on a strided view.

The grid [P, S, R, H, d] is read as P batches of R * H heads of S-long sequences, a view when
the R and H axes merge (views of a projection [.., R, H * d] always do; slices of a fused QKV
projection do not, and are copied once). aten writes its output and log-sum-exp laid out
[batch, sequence, head, ...], which is exactly our [P, S, R, H, ...] order, so they come back as
contiguous tensors with no copy; the gradients likewise. Blocked online softmax per (batch,
head) sequence: no S x S score matrix, results independent of the thread count.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidcore.ops._axis_attention_args import check_backward_args, check_op_args, lse_dtype

__all__ = ["axis_attention_cpu_fwd", "axis_attention_cpu_bwd"]


def _heads(t: Tensor) -> Tensor:
    """[P, S, R, H, d] -> [P, R * H, S, d] (a view when R and H merge)."""
    p, s, r, h, d = t.shape
    return t.permute(0, 2, 3, 1, 4).reshape(p, r * h, s, d)


def _grid(t: Tensor, shape: torch.Size) -> Tensor:
    """aten's [P, R * H, S, ...] result (laid out [P, S, R * H, ...]) -> [P, S, R, H, ...]."""
    r, h = shape[2:4]
    return t.unflatten(1, (r, h)).movedim(3, 1).contiguous()


def _empty(q: Tensor) -> bool:
    return q.numel() == 0


def axis_attention_cpu_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float
                           ) -> tuple[Tensor, Tensor]:
    """out [P, S, R, H, d] (dtype of q), lse [P, S, R, H] (float32; float64 for float64)."""
    check_op_args(q, k, v, scale)
    if _empty(q):
        return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=lse_dtype(q.dtype))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _heads(q), _heads(k), _heads(v), 0.0, False, attn_mask=None, scale=scale)
    return _grid(out, q.shape), _grid(lse, q.shape).to(lse_dtype(q.dtype))


def axis_attention_cpu_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                           lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) [P, S, R, H, d], contiguous, dtypes of q, k, v."""
    check_backward_args(grad_out, q, k, v, out, lse, scale)
    if _empty(q):
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    # aten's flash backward reads out and lse in its own [batch, head, sequence] view
    lse_heads = lse.flatten(2).transpose(1, 2)
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        _heads(grad_out), _heads(q), _heads(k), _heads(v), _heads(out), lse_heads, 0.0, False,
        attn_mask=None, scale=scale)
    return tuple(_grid(g, q.shape) for g in grads)
