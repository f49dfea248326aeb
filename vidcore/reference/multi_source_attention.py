"""Reference of multi_source_attention (DESIGN.md op 3): ActionLLM's Cross-Modality Interaction
Block (actionllm/model.py:225-472). Every query source attends to every key source with its own
softmax, and the contexts are averaged per query source:
    out_a = (1 / M) sum_m softmax(scale * q_a k_m^T) v_m      (M key sources)
A key source with no keys contributes a zero context (its softmax is over nothing).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["multi_source_attention", "multi_source_attention_backward"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _probs(q: Tensor, k: Tensor, scale: float, lse: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """softmax(scale * q k^T) [B, H, S_q, S_k] and its log-sum-exp [B, H, S_q] (-inf, and zero
    probabilities, for an empty key source); with `lse` given, P = exp(scores - lse)."""
    scores = scale * (q @ k.transpose(-1, -2))
    if lse is None:
        lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]).nan_to_num(0.0), lse


def multi_source_attention(queries: list[Tensor], keys: list[Tensor], values: list[Tensor],
                           scale: float) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Args:
        queries: A tensors [B, H, S_a, d]; keys, values: M tensors [B, H, S_m, d] each, keys[m]
            and values[m] of equal length; one dtype for all. scale: the softmax scale.
    Returns:
        outs: A tensors [B, H, S_a, d] (dtype of the inputs);
        lse: per query source [M, B, H, S_a] (float32, float64 for float64 inputs), the
            log-sum-exp of each key source's scores;
        partials: per query source [M, B, H, S_a, d] (input dtype), each key source's context
            softmax(scale * q_a k_m^T) v_m: with lse, what the backward needs.
    Computed in float32 (float64 for float64 inputs).
    """
    compute = _compute_dtype(queries[0].dtype)
    outs, lses, partials = [], [], []
    for q in queries:
        contexts, source_lse = [], []
        for k, v in zip(keys, values, strict=True):
            probs, lse = _probs(q.to(compute), k.to(compute), scale)
            contexts.append(probs @ v.to(compute))
            source_lse.append(lse)
        stacked = torch.stack(contexts)
        outs.append(stacked.mean(0).to(q.dtype))
        lses.append(torch.stack(source_lse))
        partials.append(stacked.to(q.dtype))
    return outs, lses, partials


def multi_source_attention_backward(
    grad_outs: list[Tensor], queries: list[Tensor], keys: list[Tensor], values: list[Tensor],
    lse: list[Tensor], partials: list[Tensor], scale: float,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Gradients of multi_source_attention, pair by pair (FlashAttention's formulas with the
    mean's 1/M folded into dO): with P = exp(scale q_a k_m^T - lse_am), dO = grad_out_a / M,
    delta = rowsum(dO * partial_am):
        dV_m += P^T dO,  dS = P * (dO V_m^T - delta),  dQ_a += scale dS K_m,  dK_m += scale dS^T Q_a.
    Returns (grad_queries, grad_keys, grad_values), dtypes of the inputs.
    """
    compute = _compute_dtype(queries[0].dtype)
    grad_q = [torch.zeros_like(q, dtype=compute) for q in queries]
    grad_k = [torch.zeros_like(k, dtype=compute) for k in keys]
    grad_v = [torch.zeros_like(v, dtype=compute) for v in values]
    for a, q in enumerate(queries):
        q32 = q.to(compute)
        d_out = grad_outs[a].to(compute) / len(keys)
        for m, (k, v) in enumerate(zip(keys, values, strict=True)):
            k32, v32 = k.to(compute), v.to(compute)
            probs, _ = _probs(q32, k32, scale, lse[a][m].to(compute))
            delta = (d_out * partials[a][m].to(compute)).sum(-1, keepdim=True)
            grad_v[m] += probs.transpose(-1, -2) @ d_out
            d_scores = probs * (d_out @ v32.transpose(-1, -2) - delta)
            grad_q[a] += scale * (d_scores @ k32)
            grad_k[m] += scale * (d_scores.transpose(-1, -2) @ q32)
    return _cast(grad_q, queries), _cast(grad_k, keys), _cast(grad_v, values)


def _cast(grads: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    return [g.to(t.dtype) for g, t in zip(grads, like, strict=True)]
