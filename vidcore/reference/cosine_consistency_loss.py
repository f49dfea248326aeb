"""Reference of cosine_consistency_loss (DESIGN.md op 4): ST-LLM's masked video modelling loss,
mean(2 - 2 cos) between the masked run's decoded hidden states and the full run's at the same
visible video tokens (stllm/models/st_llm.py:56-92), i.e. the MSE of L2-normalised rows.

cos_i = <a_i / max(|a_i|, eps), b_i / max(|b_i|, eps)>, eps = 1e-12 as F.normalize, so a zero
row has cos 0 (loss 2) instead of NaN, and its gradient is F.normalize's: b_hat / eps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EPS", "loss_dtype", "cosine_consistency_loss", "cosine_consistency_loss_backward"]

EPS = 1e-12


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss (and accumulation) dtype: float32 for 16-bit inputs, else the input's."""
    return torch.promote_types(dtype, torch.float32)


def cosine_consistency_loss(a: Tensor, b: Tensor) -> Tensor:
    """mean_i (2 - 2 cos(a_i, b_i)) over the rows of a, b [N, D]; 0 when N = 0.

    Returns a 0-d tensor of `loss_dtype(a.dtype)`; computed in that dtype.
    """
    compute = loss_dtype(a.dtype)
    a_hat = F.normalize(a.to(compute), dim=-1, eps=EPS)
    b_hat = F.normalize(b.to(compute), dim=-1, eps=EPS)
    cos = (a_hat * b_hat).sum(-1)
    return (2 - 2 * cos).sum() / max(a.shape[0], 1)


def cosine_consistency_loss_backward(grad: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the loss with respect to a and b (dtypes of a and b).

    With n_a = max(|a|, eps), a_hat = a / n_a (same for b) and c = <a_hat, b_hat>:
        d loss / d a_i = -2 grad / N * (b_hat - [|a_i| >= eps] c a_hat) / n_a
    (F.normalize's clamp passes no gradient to the norm below eps: there a_hat = a / eps).
    """
    compute = loss_dtype(a.dtype)
    a32, b32 = a.to(compute), b.to(compute)
    norm_a = torch.linalg.vector_norm(a32, dim=-1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b32, dim=-1, keepdim=True)
    n_a, n_b = norm_a.clamp_min(EPS), norm_b.clamp_min(EPS)
    a_hat, b_hat = a32 / n_a, b32 / n_b
    cos = (a_hat * b_hat).sum(-1, keepdim=True)
    scale = grad.to(compute) * (-2 / max(a.shape[0], 1))
    grad_a = scale * (b_hat - (norm_a >= EPS) * cos * a_hat) / n_a
    grad_b = scale * (a_hat - (norm_b >= EPS) * cos * b_hat) / n_b
    return grad_a.to(a.dtype), grad_b.to(b.dtype)
