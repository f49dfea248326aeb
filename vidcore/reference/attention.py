"""Reference of varlen / cross-modal attention with temporal frame ranges (DESIGN.md op 3).

Sequences are packed along dim 0 with FlashAttention offsets: query rows of sequence b are
cu_seqlens_q[b]:cu_seqlens_q[b+1], its keys cu_seqlens_k[b]:cu_seqlens_k[b+1]. Query i of a
sequence (Lq queries, Lk keys) sees key j iff
  - causal is off, or j <= i + Lk - Lq (bottom-right aligned, the flash-attn convention), and
  - q_frame_range is None, or start_i <= j // tokens_per_frame < end_i.
A query that sees no key gets out = 0 and lse = -inf.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["attention", "attention_backward", "visible_keys"]

_QUERY_CHUNK = 1024  # rows per score block: memory stays O(chunk * Lk), never O(total^2)


def visible_keys(num_q: int, num_k: int, q_offset: int, rows: Tensor, causal: bool,
                 tokens_per_frame: int, q_frame_range: Tensor | None) -> Tensor:
    """[len(rows), num_k] bool: which keys the queries `rows` (indices within their sequence,
    whose first packed row is q_offset) may attend to."""
    keys = torch.arange(num_k, device=rows.device)
    visible = torch.ones(len(rows), num_k, dtype=torch.bool, device=rows.device)
    if causal:
        visible &= keys[None, :] <= rows[:, None] + (num_k - num_q)
    if q_frame_range is not None:
        start, end = q_frame_range[q_offset + rows].long().unbind(-1)
        frame = keys // tokens_per_frame
        visible &= (start[:, None] <= frame[None, :]) & (frame[None, :] < end[:, None])
    return visible


def _sequences(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor):
    """(q0, q1, k0, k1) row bounds of every sequence, read on the host."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False)


def _by_kv_head(t: Tensor, heads_kv: int, compute: torch.dtype) -> Tensor:
    """[L, Hq, d] rows -> [Hk, group * L, d]: each key/value head with its query heads' rows
    stacked (query head h reads key/value head h // group), so GQA needs no repeated keys."""
    rows, heads, dim = t.shape
    return t.to(compute).view(rows, heads_kv, heads // heads_kv, dim).permute(1, 2, 0, 3) \
        .reshape(heads_kv, -1, dim)


def _from_kv_head(t: Tensor, heads_q: int) -> Tensor:
    """Inverse of _by_kv_head: [Hk, group * L, d] -> [L, Hq, d]."""
    heads_kv, _, dim = t.shape
    return t.view(heads_kv, heads_q // heads_kv, -1, dim).permute(2, 0, 1, 3).reshape(-1, heads_q,
                                                                                  dim)


def _chunk_probs(q: Tensor, keys: Tensor, q0: int, q1: int, c0: int, c1: int, num_k: int,
                 causal: bool, scale: float, tokens_per_frame: int,
                 q_frame_range: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax probabilities [Hk, group * (c1 - c0), Lk] of query rows c0:c1 (0 where masked;
    rows grouped as in _by_kv_head) and their lse [Hq, c1 - c0] (-inf for rows that see no
    key). keys: [Hk, Lk, d]."""
    heads_kv = keys.shape[0]
    scores = torch.bmm(_by_kv_head(q[c0:c1], heads_kv, keys.dtype), keys.transpose(1, 2))
    scores *= scale
    if causal or q_frame_range is not None:
        rows = torch.arange(c0 - q0, c1 - q0, device=q.device)
        visible = visible_keys(q1 - q0, num_k, q0, rows, causal, tokens_per_frame, q_frame_range)
        scores.masked_fill_(~visible.repeat(scores.shape[1] // len(rows), 1), -math.inf)
    # In place, one pass each: max, exp(s - max), sum, normalise (the [.., Lk] block dominates).
    row_max = scores.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)  # 0 for rows that see none
    probs = scores.sub_(row_max).exp_()  # masked keys: exp(-inf) = 0
    row_sum = probs.sum(-1, keepdim=True)
    row_lse = (row_max + row_sum.log()).squeeze(-1)  # log(0) = -inf for rows that see none
    probs /= torch.where(row_sum > 0, row_sum, 1.0)
    return probs, row_lse.view(q.shape[1], c1 - c0)


def attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
              max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
              tokens_per_frame: int, q_frame_range: Tensor | None) -> tuple[Tensor, Tensor]:
    """Softmax attention per packed sequence, computed in fp32 (fp64 for fp64 inputs).

    Args:
        q: [total_q, Hq, d]; k, v: [total_k, Hk, d] with Hq % Hk == 0 (query head h reads
            key/value head h // (Hq // Hk)).
        cu_seqlens_q, cu_seqlens_k: [B + 1] int32 offsets (read on the host here).
        max_seqlen_q, max_seqlen_k: unused by the reference (kernel launch sizes).
        scale: multiplies q.k. tokens_per_frame, q_frame_range: see the module docstring
            (q_frame_range [total_q, 2] int32, or None).
    Returns:
        out [total_q, Hq, d] (dtype of q) and lse [Hq, total_q] float32 (natural log).
    """
    compute = torch.promote_types(q.dtype, torch.float32)
    heads_q = q.shape[1]
    out = torch.zeros(q.shape, dtype=compute, device=q.device)
    lse = torch.full((heads_q, q.shape[0]), -math.inf, dtype=compute, device=q.device)
    for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        if k1 == k0:  # no keys: out 0, lse -inf
            continue
        keys = k[k0:k1].to(compute).transpose(0, 1)  # [Hk, Lk, d]
        values = v[k0:k1].to(compute).transpose(0, 1)
        for c0 in range(q0, q1, _QUERY_CHUNK):
            c1 = min(c0 + _QUERY_CHUNK, q1)
            probs, lse[:, c0:c1] = _chunk_probs(q, keys, q0, q1, c0, c1, k1 - k0, causal, scale,
                                                tokens_per_frame, q_frame_range)
            out[c0:c1] = _from_kv_head(torch.bmm(probs, values), heads_q)
    return out.to(q.dtype), lse


def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                       lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                       max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                       tokens_per_frame: int, q_frame_range: Tensor | None,
                       grad_lse: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of `attention` given the gradients of out and (optionally) of lse.

    With P the probabilities and delta_i = sum_d dO_i O_i - dlse_i: dV = P^T dO,
    dS = P (dO V^T - delta), dQ = scale dS K, dK = scale dS^T Q; key/value gradients are summed
    over each GQA group. (d lse_i / d S_ij = P_ij, so lse's gradient only shifts delta; rows that
    see no key have P = 0 and get none.) `lse` is unused: the reference recomputes P.
    """
    compute = torch.promote_types(q.dtype, torch.float32)
    heads_q, heads_kv = q.shape[1], k.shape[1]
    dq = torch.zeros(q.shape, dtype=compute, device=q.device)
    dk = torch.zeros(k.shape, dtype=compute, device=q.device)
    dv = torch.zeros_like(dk)
    g_out, o = grad_out.to(compute), out.to(compute)
    delta = (g_out * o).sum(-1).t()  # [Hq, total_q]
    if grad_lse is not None:
        delta = delta - grad_lse.to(compute)
    for q0, q1, k0, k1 in _sequences(cu_seqlens_q, cu_seqlens_k):
        if k1 == k0:  # no keys: no gradients
            continue
        keys = k[k0:k1].to(compute).transpose(0, 1)  # [Hk, Lk, d]
        values = v[k0:k1].to(compute).transpose(0, 1)
        for c0 in range(q0, q1, _QUERY_CHUNK):
            c1 = min(c0 + _QUERY_CHUNK, q1)
            probs, _ = _chunk_probs(q, keys, q0, q1, c0, c1, k1 - k0, causal, scale,
                                    tokens_per_frame, q_frame_range)
            g = _by_kv_head(g_out[c0:c1], heads_kv, compute)  # [Hk, group * rows, d]
            rows_delta = _by_kv_head(delta[:, c0:c1].t()[..., None], heads_kv, compute)
            dv[k0:k1] += torch.bmm(probs.transpose(1, 2), g).transpose(0, 1)
            # scale * dS, in place on the [.., Lk] block
            dscores = torch.bmm(g, values.transpose(1, 2)).sub_(rows_delta).mul_(probs).mul_(scale)
            rows_q = _by_kv_head(q[c0:c1], heads_kv, compute)
            dk[k0:k1] += torch.bmm(dscores.transpose(1, 2), rows_q).transpose(0, 1)
            dq[c0:c1] = _from_kv_head(torch.bmm(dscores, keys), heads_q)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
