"""Plan of the CPU attention kernel (kernels/attention_cpu.py): which aten flash-attention calls
compute a packed batch, so that cost falls with the mask's sparsity and calls stay few.

Every query of vidcore's mask sees one key interval [lo_i, hi_i) (vidcore.reference.
key_intervals). Per sequence, consecutive queries are grouped into runs by how their intervals
move from row to row:
  same      lo, hi constant (dense attention, frame ranges): one part on the key slice;
  diagonal  lo constant, hi + 1 per row (causal, bottom-right for any Lq, Lk): a top-left
            causal part on the R keys ending at the last row's bound, plus a dense part on the
            keys before them (merged by lse);
  band      lo + 1, hi + 1 (sliding windows), or irregular: blocks of rows, one part each on
            the block's key span with an additive 0 / -inf mask.
Adjacent runs shorter than SHORT_RUN rows are computed as masked blocks too, unless that would
more than double the pairs computed. A masked block has about a quarter as many rows as its
rows see keys (32 to 128): the keys computed in vain stay a small share, and the key-gradient
buffers of overlapping blocks (one per block) stay few. Queries that see no key are in no run.
Consecutive pieces of the same shape whose rows and keys advance by constant strides (the
sequences of an equal-length batch, the frames of a sliding frame window, the blocks of a band)
become one `Group`: one batched call per part, on strided views of the packed tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vidcore import reference

__all__ = ["Group", "Part", "plan"]

SHORT_RUN = 64  # runs of fewer rows join their neighbours in masked blocks
_SAME, _DIAGONAL, _BAND, _OTHER = range(4)


@dataclass
class Part:
    """Keys [k0, k0 + n) (packed rows) of a group's first member; member m reads from
    k0 + m * stride. `bounds`: each row's visible [lo, hi) relative to k0 for masked parts."""
    k0: int
    n: int
    causal: bool = False
    bounds: tuple[Tensor, Tensor] | None = None
    stride: int = 0

    def same_shape(self, other: Part) -> bool:
        return (self.n, self.causal) == (other.n, other.causal) and (
            self.bounds is None if other.bounds is None else self.bounds is not None and all(
                torch.equal(a, b) for a, b in zip(self.bounds, other.bounds, strict=True)))

    def mask(self, dtype: torch.dtype) -> Tensor | None:
        """[1, 1, rows, n] additive mask (0 visible, -inf hidden), shared by all members."""
        if self.bounds is None:
            return None
        lo, hi = self.bounds
        keys = torch.arange(self.n)
        visible = (lo[:, None] <= keys) & (keys < hi[:, None])
        return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, -math.inf)[None,
                                                                                          None]


@dataclass
class Group:
    """`members` pieces of `rows` query rows, the first at packed row q0, then every `stride`
    rows; every row sees exactly the union of its parts' keys."""
    q0: int
    rows: int
    parts: list[Part]
    members: int = 1
    stride: int = 0

    def absorb(self, q0: int, rows: int, parts: list[Part]) -> bool:
        """Take the piece as the next member if it has our shape and keeps our strides."""
        if rows != self.rows or len(parts) != len(self.parts) or not all(
                a.same_shape(b) for a, b in zip(self.parts, parts, strict=True)):
            return False
        steps = [p.k0 - own.k0 for p, own in zip(parts, self.parts, strict=True)]
        if self.members == 1:
            if min(steps) < 0:
                return False
            self.stride = q0 - self.q0
            for part, step in zip(self.parts, steps, strict=True):
                part.stride = step
        elif q0 != self.q0 + self.members * self.stride or any(
                step != self.members * part.stride for part, step in zip(self.parts, steps,
                                                                         strict=True)):
            return False
        self.members += 1
        return True


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
    runs, taken, row = [], 0, 0  # taken: rows before it are in a run; row: first row of step
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
    return [(r0 + a, r0 + b, _SAME if b - a == 1 else _OTHER)
            for a, b in zip(starts, ends, strict=True)]


def _diagonal(first_lo: int, first_hi: int, rows: int) -> list[Part]:
    """Row r sees [first_lo, first_hi + r): top-left causal from key first_hi - 1 on."""
    start = first_hi - 1
    prefix = [Part(first_lo, start - first_lo)] if start > first_lo else []
    return [*prefix, Part(start, rows, causal=True)]


def _masked(lo: Tensor, hi: Tensor, r0: int, r1: int) -> Part:
    k0, k1 = int(lo[r0:r1].min()), int(hi[r0:r1].max())
    return Part(k0, k1 - k0, bounds=(lo[r0:r1] - k0, hi[r0:r1] - k0))


def _block_rows(lo: Tensor, hi: Tensor, r0: int, r1: int) -> int:
    """Rows per masked block: a power of two near a quarter of the rows' mean key count."""
    width = float((hi[r0:r1] - lo[r0:r1]).float().mean())
    return min(128, max(32, 1 << round(math.log2(max(width / 4, 1)))))


def _run_pieces(lo: Tensor, hi: Tensor, r0: int, r1: int, kind: int):
    """(r0, r1, parts) computing rows r0:r1 of one run exactly."""
    first_lo, first_hi = int(lo[r0]), int(hi[r0])
    if kind == _SAME:
        yield r0, r1, [Part(first_lo, first_hi - first_lo)]
    elif kind == _DIAGONAL:
        yield r0, r1, _diagonal(first_lo, first_hi, r1 - r0)
    else:
        rows = _block_rows(lo, hi, r0, r1)
        for b0 in range(r0, r1, rows):
            yield b0, min(b0 + rows, r1), [_masked(lo, hi, b0, min(b0 + rows, r1))]


def _stretch_pieces(lo: Tensor, hi: Tensor, runs: list[tuple[int, int, int]]):
    """Adjacent short runs (a frame's queries, a staircase at a video's edge) as masked blocks:
    few calls. A block that would compute more than twice the pairs its rows see falls back to
    its runs' own pieces."""
    if not runs:
        return
    rows = _block_rows(lo, hi, runs[0][0], runs[-1][1])
    for b0 in range(runs[0][0], runs[-1][1], rows):
        b1 = min(b0 + rows, runs[-1][1])
        part = _masked(lo, hi, b0, b1)
        if 2 * int((hi[b0:b1] - lo[b0:b1]).sum()) >= (b1 - b0) * part.n:
            yield b0, b1, [part]
            continue
        for r0, r1, kind in runs:
            if r0 < b1 and r1 > b0:
                yield from _run_pieces(lo, hi, max(r0, b0), min(r1, b1), kind)


def _sequence(len_q: int, len_k: int, causal: bool, tokens_per_frame: int,
              frame_range: Tensor | None, window_left: int, window_right: int):
    """(r0, r1, parts) of one sequence (positions within it)."""
    if len_q == 0 or len_k == 0:
        return
    if frame_range is None and window_left < 0 and window_right < 0:  # no interval to read
        if not causal:
            yield 0, len_q, [Part(0, len_k)]
        elif len_q - len_k < len_q:  # rows from max(0, Lq - Lk) on see keys [0, i + Lk - Lq]
            first = max(0, len_q - len_k)
            yield first, len_q, _diagonal(0, first + len_k - len_q + 1, len_q - first)
        return
    lo, hi = reference.key_intervals(len_q, len_k, torch.arange(len_q), causal, tokens_per_frame,
                                     frame_range, window_left, window_right)
    stretch: list[tuple[int, int, int]] = []  # adjacent runs too short to compute alone
    for run in [*_runs(lo, hi), None]:
        if run is not None and run[1] - run[0] < SHORT_RUN and (
                not stretch or stretch[-1][1] == run[0]):
            stretch.append(run)
            continue
        yield from _stretch_pieces(lo, hi, stretch)
        stretch = [run] if run is not None and run[1] - run[0] < SHORT_RUN else []
        if run is not None and not stretch:
            yield from _run_pieces(lo, hi, *run)


def plan(cu_q: list[int], cu_k: list[int], causal: bool, tokens_per_frame: int,
         q_frame_range: Tensor | None, window_left: int, window_right: int) -> list[Group]:
    """The groups of calls that compute the packed batch (offsets checked by the caller)."""
    groups: list[Group] = []
    for q0, q1, k0, k1 in zip(cu_q, cu_q[1:], cu_k, cu_k[1:], strict=False):
        frame_range = None if q_frame_range is None else q_frame_range[q0:q1]
        for r0, r1, parts in _sequence(q1 - q0, k1 - k0, causal, tokens_per_frame, frame_range,
                                       window_left, window_right):
            for part in parts:
                part.k0 += k0
            if not (groups and groups[-1].absorb(q0 + r0, r1 - r0, parts)):
                groups.append(Group(q0 + r0, r1 - r0, parts))
    return groups
