"""Reference of axis_attention (Task-Adapter++'s temporal, spatial and task attentions,
module_adapter.py:120-168): softmax self-attention along one axis of a token grid, every other
axis (and every head) an independent sequence. On the canonical 5-D layout [P, S, R, H, d], the
sequence axis is S:
    out[p, i, r, h] = sum_j softmax_j(scale * <q[p, i, r, h], k[p, j, r, h]>) v[p, j, r, h]
The seed gets there with rearranges that copy the tokens ('(b t) l d -> (b l) t d' etc.) and an
explicit score matrix; this reference does the same math with permuted views.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["axis_attention", "axis_attention_backward"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _sequences(t: Tensor) -> Tensor:
    """[P, S, R, H, d] -> [P, R, H, S, d] in the compute dtype (a view when no cast)."""
    return t.to(_compute_dtype(t.dtype)).permute(0, 2, 3, 1, 4)


def _grid(t: Tensor, like: Tensor) -> Tensor:
    """[P, R, H, S, ...] -> contiguous [P, S, R, H, ...] in `like`'s dtype."""
    return t.movedim(3, 1).to(like.dtype).contiguous()


def _probs(q: Tensor, k: Tensor, scale: float, lse: Tensor | None = None
           ) -> tuple[Tensor, Tensor]:
    scores = scale * (q @ k.transpose(-1, -2))
    if lse is None:
        lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]), lse


def axis_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Args:
        q, k, v: [P, S, R, H, d], one shape and dtype, any strides.
        scale: softmax scale.
    Returns:
        out [P, S, R, H, d] contiguous, dtype of q; lse [P, S, R, H] contiguous, float32
        (float64 for float64 inputs), the log-sum-exp of each query's scores.
    Computed in float32 (float64 for float64 inputs).
    """
    probs, lse = _probs(_sequences(q), _sequences(k), scale)
    out = probs @ _sequences(v)
    return _grid(out, q), lse.movedim(3, 1).contiguous()


def axis_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                            lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of axis_attention (FlashAttention's formulas): with P = exp(scale q k^T - lse)
    and delta = rowsum(dO * O): dV = P^T dO, dS = P * (dO V^T - delta), dQ = scale dS K,
    dK = scale dS^T Q. Returns (dq, dk, dv), contiguous, dtypes of q, k, v."""
    q_s, k_s, v_s = _sequences(q), _sequences(k), _sequences(v)
    d_out, out_s = _sequences(grad_out), _sequences(out)
    probs, _ = _probs(q_s, k_s, scale, lse.to(q_s.dtype).movedim(1, 3))
    delta = (d_out * out_s).sum(-1, keepdim=True)
    grad_v = probs.transpose(-1, -2) @ d_out
    d_scores = probs * (d_out @ v_s.transpose(-1, -2) - delta)
    grad_q = scale * (d_scores @ k_s)
    grad_k = scale * (d_scores.transpose(-1, -2) @ q_s)
    return _grid(grad_q, q), _grid(grad_k, k), _grid(grad_v, v)
