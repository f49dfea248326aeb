"""Reference of varlen / cross-modal attention with temporal frame ranges (DESIGN.md op 3).

Sequences are packed along dim 0 with FlashAttention offsets: query rows of sequence b are
cu_seqlens_q[b]:cu_seqlens_q[b+1], its keys cu_seqlens_k[b]:cu_seqlens_k[b+1]. Query i of a
sequence (Lq queries, Lk keys), at key position i' = i + Lk - Lq, sees key j iff
  - causal is off, or j <= i' (bottom-right aligned, the flash-attn convention), and
  - window_left < 0 or j >= i' - window_left, and window_right < 0 or j <= i' + window_right,
  - q_frame_range is None, or start_i <= j // tokens_per_frame < end_i.
Scores are s_ij = scale * <q_i, k_j>, capped to softcap * tanh(s_ij / softcap) when softcap > 0,
before the softmax. A query that sees no key gets out = 0 and lse = -inf.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["attention", "attention_backward", "key_intervals"]

_QUERY_CHUNK = 1024  # rows per score block: memory stays O(chunk * Lk), never O(total^2)


def key_intervals(num_q: int, num_k: int, rows: Tensor, causal: bool, tokens_per_frame: int,
                  frame_range: Tensor | None, window_left: int, window_right: int
                  ) -> tuple[Tensor, Tensor]:
    """[lo, hi): the keys each query `rows` (int64 indices within its sequence) sees; empty
    where hi <= lo. Every condition of the module docstring bounds j from one side, so what a
    query sees is one interval. frame_range: the rows' [start, end) frames ([len(rows), 2])."""
    pos = rows + (num_k - num_q)  # i'
    lo = torch.zeros_like(rows)
    hi = torch.full_like(rows, num_k)
    if causal:
        hi = torch.minimum(hi, pos + 1)
    if window_left >= 0:
        lo = torch.maximum(lo, pos - window_left)
    if window_right >= 0:
        hi = torch.minimum(hi, pos + window_right + 1)
    if frame_range is not None:  # for j >= 0: start <= j // t  <=>  j >= start * t; same for end
        start, end = frame_range.long().unbind(-1)
        lo = torch.maximum(lo, start * tokens_per_frame)
        hi = torch.minimum(hi, end * tokens_per_frame)
    return lo, hi


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


class _Chunk:
    """Query rows c0:c1 of the sequence (q0, q1, k0, k1): the keys span [s0, s1) (sequence
    positions) that its rows can see, and each row's visibility within it [rows, span]."""

    def __init__(self, seq: tuple[int, int, int, int], c0: int, c1: int, causal: bool,
                 tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int,
                 window_right: int):
        q0, q1, k0, k1 = seq
        rows = torch.arange(c0 - q0, c1 - q0)
        ranges = None if q_frame_range is None else q_frame_range[c0:c1].cpu()
        lo, hi = key_intervals(q1 - q0, k1 - k0, rows, causal, tokens_per_frame, ranges,
                               window_left, window_right)
        seen = hi > lo
        self.s0 = int(lo[seen].min()) if seen.any() else 0
        self.s1 = int(hi[seen].max()) if seen.any() else 0
        keys = torch.arange(self.s0, self.s1)
        self.visible = (lo[:, None] <= keys) & (keys < hi[:, None])
        self.rows, self.keys = slice(c0, c1), slice(k0 + self.s0, k0 + self.s1)


def _chunks(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, *mask_args):
    for seq in _sequences(cu_seqlens_q, cu_seqlens_k):
        for c0 in range(seq[0], seq[1], _QUERY_CHUNK):
            chunk = _Chunk(seq, c0, min(c0 + _QUERY_CHUNK, seq[1]), *mask_args)
            if chunk.s1 > chunk.s0:  # else no row sees a key: out 0, lse -inf, no gradient
                yield chunk


def _chunk_probs(q: Tensor, keys: Tensor, chunk: _Chunk, scale: float, softcap: float
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Softmax probabilities [Hk, group * rows, span] of the chunk's query rows (0 where masked;
    rows grouped as in _by_kv_head), their lse [Hq, rows] (-inf for rows that see no key) and,
    with a softcap, tanh(s / softcap) (for the backward). keys: [Hk, span, d]. In place on the
    [.., span] block unless autograd records (backend="torch" differentiated)."""
    heads_kv, heads_q = keys.shape[0], q.shape[1]
    records = torch.is_grad_enabled() and (q.requires_grad or keys.requires_grad)
    scores = torch.bmm(_by_kv_head(q[chunk.rows], heads_kv, keys.dtype), keys.transpose(1, 2))
    scores = scores * scale if records else scores.mul_(scale)
    capped = None
    if softcap > 0:
        capped = torch.tanh(scores / softcap)
        scores = capped * softcap
    if not chunk.visible.all():
        hidden = ~chunk.visible.to(q.device).repeat(heads_q // heads_kv, 1)
        scores = scores.masked_fill(hidden, -math.inf) if records else scores.masked_fill_(
            hidden, -math.inf)
    # One pass each: max, exp(s - max), sum, normalise (the [.., span] block dominates).
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(torch.isneginf(row_max), 0.0, row_max)  # rows that see no key
    probs = torch.exp(scores - row_max) if records else scores.sub_(row_max).exp_()  # masked: 0
    row_sum = probs.sum(-1, keepdim=True)
    seen = row_sum > 0
    row_sum = torch.where(seen, row_sum, 1.0)
    probs = probs / row_sum if records else probs.div_(row_sum)
    row_lse = torch.where(seen, row_max + row_sum.log(), -math.inf)
    return probs, row_lse.view(heads_q, -1), capped


def attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
              max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
              tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int = -1,
              window_right: int = -1, softcap: float = 0.0) -> tuple[Tensor, Tensor]:
    """Softmax attention per packed sequence, computed in fp32 (fp64 for fp64 inputs).

    Args:
        q: [total_q, Hq, d]; k, v: [total_k, Hk, d] with Hq % Hk == 0 (query head h reads
            key/value head h // (Hq // Hk)).
        cu_seqlens_q, cu_seqlens_k: [B + 1] int32 offsets (read on the host here).
        max_seqlen_q, max_seqlen_k: unused by the reference (kernel launch sizes).
        scale: multiplies q.k. tokens_per_frame, q_frame_range, window_left, window_right,
            softcap: see the module docstring (q_frame_range [total_q, 2] int32, or None;
            window bounds -1 = unbounded; softcap 0 = off).
    Returns:
        out [total_q, Hq, d] (dtype of q) and lse [Hq, total_q] float32 (float64 for float64
        inputs; natural log). Each query chunk computes scores over the key span its rows can
        see only, so cost falls with the mask's sparsity.
    """
    compute = torch.promote_types(q.dtype, torch.float32)
    heads_q = q.shape[1]
    out = torch.zeros(q.shape, dtype=compute, device=q.device)
    lse = torch.full((heads_q, q.shape[0]), -math.inf, dtype=compute, device=q.device)
    for chunk in _chunks(cu_seqlens_q, cu_seqlens_k, causal, tokens_per_frame, q_frame_range,
                         window_left, window_right):
        keys = k[chunk.keys].to(compute).transpose(0, 1)  # [Hk, span, d]
        values = v[chunk.keys].to(compute).transpose(0, 1)
        probs, lse[:, chunk.rows], _ = _chunk_probs(q, keys, chunk, scale, softcap)
        out[chunk.rows] = _from_kv_head(torch.bmm(probs, values), heads_q)
    return out.to(q.dtype), lse


def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                       lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                       max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                       tokens_per_frame: int, q_frame_range: Tensor | None,
                       window_left: int = -1, window_right: int = -1, softcap: float = 0.0,
                       grad_lse: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of `attention` given the gradients of out and (optionally) of lse.

    With P the probabilities and delta_i = sum_d dO_i O_i - dlse_i: dV = P^T dO,
    dS = P (dO V^T - delta) (the gradient of the capped scores), times 1 - tanh^2(s / softcap)
    with a softcap (the gradient of the raw scores), dQ = scale dS K, dK = scale dS^T Q;
    key/value gradients are summed over each GQA group. (d lse_i / d S_ij = P_ij, so lse's
    gradient only shifts delta; rows that see no key have P = 0 and get none.) `lse` is
    unused: the reference recomputes P.
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
    for chunk in _chunks(cu_seqlens_q, cu_seqlens_k, causal, tokens_per_frame, q_frame_range,
                         window_left, window_right):
        keys = k[chunk.keys].to(compute).transpose(0, 1)  # [Hk, span, d]
        values = v[chunk.keys].to(compute).transpose(0, 1)
        probs, _, capped = _chunk_probs(q, keys, chunk, scale, softcap)
        g = _by_kv_head(g_out[chunk.rows], heads_kv, compute)  # [Hk, group * rows, d]
        rows_delta = _by_kv_head(delta[:, chunk.rows].t()[..., None], heads_kv, compute)
        dv[chunk.keys] += torch.bmm(probs.transpose(1, 2), g).transpose(0, 1)
        # scale * dS, in place on the [.., span] block
        dscores = torch.bmm(g, values.transpose(1, 2)).sub_(rows_delta).mul_(probs).mul_(scale)
        if capped is not None:
            dscores.mul_(1 - capped.square())
        rows_q = _by_kv_head(q[chunk.rows], heads_kv, compute)
        dk[chunk.keys] += torch.bmm(dscores.transpose(1, 2), rows_q).transpose(0, 1)
        dq[chunk.rows] = _from_kv_head(torch.bmm(dscores, keys), heads_q)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
