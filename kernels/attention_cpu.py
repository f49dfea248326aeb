"""CPU attention on aten's flash kernel, piece by piece, so cost falls with the mask's sparsity.

`torch.ops.aten._scaled_dot_product_flash_attention_for_cpu` (and its backward) runs one
[1, Hq, R, d] x [1, Hk, n, d] block with GQA, returning out and lse; its causal mask is
top-left aligned. Every query of vidcore's mask sees one key interval [lo_i, hi_i)
(vidcore.reference.key_intervals). Per sequence, consecutive queries are grouped into runs by
how their intervals move from row to row:
  same      lo, hi constant (dense attention, frame ranges): one call on the key slice;
  diagonal  lo constant, hi + 1 per row (causal, bottom-right for any Lq, Lk): a top-left
            causal call on the R keys ending at the last row's bound, plus a dense call on
            the keys before them, merged by lse;
  band      lo + 1, hi + 1 (sliding windows), or anything else: blocks of at most _MASK_ROWS
            rows, one call each on the block's key span with an additive 0 / -inf mask.
Queries that see no key are in no run: out 0, lse -inf, no gradient. The backward calls aten's
backward on the same pieces with the final out and lse (so pieces need no merge there) and sums
the gradients. The gradient of lse enters aten's delta = rowsum(dO * O) - dlse through one extra
head-dim column (dO: 1, O: -dlse, q, k, v: 0). aten has no softcap: softcap runs the reference.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

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
_MASK_ROWS = 64  # query rows per masked block: mask and wasted keys stay O(64 x span)
_SAME, _DIAGONAL, _BAND, _OTHER = range(4)


def _parts(lo: Tensor, hi: Tensor, r0: int, r1: int, kind: int, dtype: torch.dtype):
    """(k0, k1, causal, mask) calls whose union is exactly what rows r0:r1 see."""
    first_lo, first_hi = int(lo[r0]), int(hi[r0])
    if kind == _SAME:
        return [(first_lo, first_hi, False, None)]
    if kind == _DIAGONAL:  # row r sees [first_lo, first_hi + r): top-left causal from first_hi-1
        start = first_hi - 1
        prefix = [(first_lo, start, False, None)] if start > first_lo else []
        return [*prefix, (start, start + r1 - r0, True, None)]
    k0, k1 = int(lo[r0:r1].min()), int(hi[r0:r1].max())
    keys = torch.arange(k0, k1)
    visible = (lo[r0:r1, None] <= keys) & (keys < hi[r0:r1, None])
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, -math.inf)
    return [(k0, k1, False, mask[None, None])]


def _runs(lo: Tensor, hi: Tensor) -> list[tuple[int, int, int]]:
    """(r0, r1, kind) runs of consecutive rows that see keys (see the module docstring)."""
    seen = hi > lo
    dlo, dhi = lo[1:] - lo[:-1], hi[1:] - hi[:-1]
    step = torch.full_like(dlo, _OTHER)  # step[t]: how row t + 1's interval follows row t's
    step[(dlo == 0) & (dhi == 0)] = _SAME
    step[(dlo == 0) & (dhi == 1)] = _DIAGONAL
    step[(dlo == 1) & (dhi == 1)] = _BAND
    step[~(seen[1:] & seen[:-1])] = _OTHER
    kinds, counts = torch.unique_consecutive(step, return_counts=True)
    runs, taken, row = [], 0, 0  # taken: rows before it belong to a run; row: first row of step
    for kind, count in zip(kinds.tolist(), counts.tolist(), strict=True):
        if kind != _OTHER:  # rows row .. row + count, less a first row the last run took
            r0 = max(taken, row)
            runs += _loose_rows(seen, taken, r0)
            runs.append((r0, row + count + 1, kind if row + count > r0 else _SAME))
            taken = row + count + 1
        row += count
    return runs + _loose_rows(seen, taken, len(lo))


def _loose_rows(seen: Tensor, r0: int, r1: int) -> list[tuple[int, int, int]]:
    """Rows r0:r1 in no regular run: maximal blocks of consecutive rows that see keys."""
    edges = torch.diff(seen[r0:r1].int(), prepend=seen.new_zeros(1), append=seen.new_zeros(1))
    starts, ends = (edges == 1).nonzero()[:, 0].tolist(), (edges == -1).nonzero()[:, 0].tolist()
    return [(r0 + a, r0 + b, _SAME if b - a == 1 else _OTHER) for a, b in zip(starts, ends,
                                                                                 strict=True)]


def _pieces(len_q: int, len_k: int, causal: bool, tokens_per_frame: int,
            frame_range: Tensor | None, window_left: int, window_right: int, dtype: torch.dtype):
    """(r0, r1, parts) of one sequence, bands and irregular runs cut into masked blocks."""
    if len_q == 0 or len_k == 0:
        return
    if frame_range is None and window_left < 0 and window_right < 0:  # no interval to read
        first = max(0, len_q - len_k) if causal else 0
        lo = torch.zeros(len_q, dtype=torch.long)
        hi = torch.arange(len_q) + (len_k - len_q + 1) if causal else torch.full_like(lo, len_k)
        runs = [(first, len_q, _DIAGONAL if causal else _SAME)] if first < len_q else []
    else:
        lo, hi = reference.key_intervals(len_q, len_k, torch.arange(len_q), causal,
                                         tokens_per_frame, frame_range, window_left,
                                         window_right)
        runs = _runs(lo, hi)
    for r0, r1, kind in runs:
        step = _MASK_ROWS if kind in (_BAND, _OTHER) else r1 - r0
        for b0 in range(r0, r1, step):
            b1 = min(b0 + step, r1)
            yield b0, b1, _parts(lo, hi, b0, b1, kind, dtype)


def _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
           tokens_per_frame, q_frame_range, window_left, window_right, softcap):
    """Everything a direct call could get wrong, checked before a pointer reaches aten
    (which trusts shapes: a key slice of length 0 kills the process)."""
    check_op_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
                  tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    cu_q = cu_seqlens_q.tolist()
    cu_k = cu_seqlens_k.tolist()
    check_offsets("cu_seqlens_q", cu_q, q.shape[0], max_seqlen_q)
    check_offsets("cu_seqlens_k", cu_k, k.shape[0], max_seqlen_k)
    return cu_q, cu_k, normalise_mask_args(tokens_per_frame, window_left, window_right,
                                           q.shape[0], k.shape[0])


def _sequence_pieces(q, cu_q, cu_k, causal, q_frame_range, mask_args):
    """(q0, k0, r0, r1, parts) over all sequences; r0, r1 and the parts' keys are positions
    within sequence (q0, k0)."""
    tokens_per_frame, window_left, window_right = mask_args
    for q0, q1, k0, k1 in zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False):
        frame_range = None if q_frame_range is None else q_frame_range[q0:q1]
        for r0, r1, parts in _pieces(q1 - q0, k1 - k0, causal, tokens_per_frame, frame_range,
                                     window_left, window_right, q.dtype):
            yield q0, k0, r0, r1, parts


def _heads_first(t: Tensor) -> Tensor:
    """[rows, H, d] packed rows -> the [1, H, rows, d] view aten's kernel takes."""
    return t.transpose(0, 1).unsqueeze(0)


def attention_cpu_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                      cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                      scale: float, tokens_per_frame: int, q_frame_range: Tensor | None,
                      window_left: int, window_right: int, softcap: float
                      ) -> tuple[Tensor, Tensor]:
    """out [total_q, Hq, d] (dtype of q), lse [Hq, total_q] float32 (float64 for float64)."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
            tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    cu_q, cu_k, mask_args = _check(*args)
    if softcap > 0:
        return reference.attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, causal, scale, mask_args[0], q_frame_range,
                                   *mask_args[1:], softcap)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf,
                     dtype=torch.promote_types(q.dtype, torch.float32))
    for q0, k0, r0, r1, parts in _sequence_pieces(q, cu_q, cu_k, causal, q_frame_range,
                                                  mask_args):
        rows = slice(q0 + r0, q0 + r1)
        results = [_FLASH(_heads_first(q[rows]), _heads_first(k[k0 + a:k0 + b]),
                          _heads_first(v[k0 + a:k0 + b]), 0.0, is_causal, attn_mask=mask,
                          scale=scale) for a, b, is_causal, mask in parts]
        (out_a, lse_a), *rest = results
        for out_b, lse_b in rest:  # every row sees keys in both parts: finite lse, exact merge
            lse_ab = torch.logaddexp(lse_a, lse_b)
            out_a = (out_a * (lse_a - lse_ab).exp()[..., None]
                     + out_b * (lse_b - lse_ab).exp()[..., None])
            lse_a = lse_ab
        out[rows] = out_a[0].transpose(0, 1)
        lse[:, rows] = lse_a[0]
    return out, lse


def attention_cpu_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                      lse: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                      max_seqlen_q: int, max_seqlen_k: int, causal: bool, scale: float,
                      tokens_per_frame: int, q_frame_range: Tensor | None, window_left: int,
                      window_right: int, softcap: float, grad_lse: Tensor | None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) like (q, k, v), accumulated over the forward's pieces in float32."""
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale,
            tokens_per_frame, q_frame_range, window_left, window_right, softcap)
    cu_q, cu_k, mask_args = _check(*args)
    check_backward_args(grad_out, q, out, lse, grad_lse)
    if softcap > 0:
        return reference.attention_backward(
            grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            causal, scale, mask_args[0], q_frame_range, *mask_args[1:], softcap, grad_lse)
    dim = q.shape[2]
    grad_out, q, k, v, out = (t.contiguous() for t in (grad_out, q, k, v, out))
    if grad_lse is not None:  # one more head-dim column carries -dlse into aten's delta
        grad_out, q, k, v = (torch.nn.functional.pad(t, (0, 1), value=fill) for t, fill in
                             ((grad_out, 1.0), (q, 0.0), (k, 0.0), (v, 0.0)))
        out = torch.cat([out, -grad_lse.t().unsqueeze(-1).to(out.dtype)], -1)
    accumulate = torch.promote_types(q.dtype, torch.float32)
    dq, dk, dv = (torch.zeros(t.shape, dtype=accumulate) for t in (q, k, v))
    for q0, k0, r0, r1, parts in _sequence_pieces(q, cu_q, cu_k, causal, q_frame_range,
                                                  mask_args):
        rows = slice(q0 + r0, q0 + r1)
        row_args = (_heads_first(grad_out[rows]), _heads_first(q[rows]))
        row_out, row_lse = _heads_first(out[rows]), lse[None, :, rows].contiguous()
        for a, b, is_causal, mask in parts:
            keys = slice(k0 + a, k0 + b)
            grads = _FLASH_BWD(*row_args, _heads_first(k[keys]), _heads_first(v[keys]), row_out,
                               row_lse, 0.0, is_causal, attn_mask=mask, scale=scale)
            dq[rows] += grads[0][0].transpose(0, 1)
            dk[keys] += grads[1][0].transpose(0, 1)
            dv[keys] += grads[2][0].transpose(0, 1)
    return tuple(t[..., :dim].to(q.dtype).contiguous() for t in (dq, dk, dv))
