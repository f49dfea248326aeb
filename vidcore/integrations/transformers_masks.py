"""Hugging Face masks as per-query key intervals: the mask half of attn_implementation="vidcore".

Every mask transformers builds for a decoder or encoder (causal, bidirectional, sliding window,
chunked, packed rows, prefix-LM / image blocks, left or right padding, the filled slots of static
and sliding caches) lets each query see one interval of key slots [lo, hi). `key_intervals_mask`
(registered in AttentionMaskInterface) returns those intervals as an int32 tensor
[B, 1, Lq, 2], which vidcore.ops.attention runs as per-query ranges over one-token frames.
Nothing here reads device data on the host except one flag per mask build, where a 2-D padding
mask, a custom mask function or a user 4-D mask could leave holes (see `require_exact`).

Two ways to the intervals, one result:
- masks composed of transformers' own index rules (causal, sliding window, chunks, packing) are
  read from the mask function's structure and intersected with the padding in O(B * (Lq + Lk));
- any other mask function (or_masks overlays such as PaliGemma's prefix, image blocks, custom
  functions) is evaluated with transformers' own `sdpa_mask`, query chunk by query chunk, and
  reduced to first / last visible key; a row whose keys have holes is refused.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers import masking_utils
from transformers.masking_utils import (
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

__all__ = ["key_intervals_mask", "is_key_intervals", "intervals_from_dense", "require_exact"]

_DENSE_CHUNK = 1 << 22  # mask elements evaluated at once on the dense path (bounds its memory)
_HINT = ("vidcore runs masks in which every query sees one interval of keys; use "
         "attn_implementation='sdpa' or 'eager' for this input")


def is_key_intervals(mask: object) -> bool:
    """Whether `mask` is what key_intervals_mask returns: int32 [B, 1, Lq, 2] (HF's own 4-D
    masks are bool or float, so the dtype tells them apart)."""
    return (isinstance(mask, Tensor) and mask.dtype == torch.int32 and mask.dim() == 4
            and mask.shape[1] == 1 and mask.shape[-1] == 2)


@dataclass(frozen=True)
class _Rule:
    """An index rule: query at absolute position q sees keys kv with q - left <= kv <= q + right
    (None: unbounded), inside q's packed sequence and attention chunk when those are set."""
    left: int | None = None
    right: int | None = None
    segments: Tensor | None = None           # [B, L] id of the packed sequence of each token
    chunk: tuple[int, Tensor] | None = None  # (chunk size, left padding [B])
    remapped: bool = False                   # evaluated on packed positions (needs segments)

    def __and__(self, other: _Rule) -> _Rule | None:
        if (self.segments is not None and other.segments is not None) or (
                self.chunk is not None and other.chunk is not None):
            return None
        return _Rule(left=_tighter(self.left, other.left), right=_tighter(self.right, other.right),
                     segments=self.segments if other.segments is None else other.segments,
                     chunk=self.chunk or other.chunk, remapped=self.remapped or other.remapped)

    def describe(self) -> str:
        kind = {None: "bidirectional", 0: "causal"}.get(self.right, "bidirectional")
        if self.left is not None:
            kind = f"sliding-window {kind} (keys {self.left} back, {self.right or 0} ahead)"
        if self.chunk:
            kind = f"chunked {kind} (chunk {self.chunk[0]})"
        return f"packed {kind}" if self.segments is not None else kind


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _cells(fn: object) -> dict[str, object]:
    code, closure = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or not closure:
        return {}
    return dict(zip(code.co_freevars, (c.cell_contents for c in closure), strict=True))


def _rule_of(fn: object) -> _Rule | None:
    """The index rule of one of transformers' mask functions, or None for anything else
    (those take the dense path, which is exact for any function)."""
    if fn is causal_mask_function:
        return _Rule(right=0)
    if fn is bidirectional_mask_function:
        return _Rule()
    if getattr(fn, "__module__", None) != masking_utils.__name__:
        return None
    cells, factory = _cells(fn), fn.__qualname__.split(".<locals>")[0]
    if factory == "and_masks":
        rule: _Rule | None = _Rule()
        for part in cells["mask_functions"]:
            part_rule = _rule_of(part)
            rule = None if rule is None or part_rule is None else rule & part_rule
        return rule
    if factory == "sliding_window_overlay":
        return _Rule(left=int(cells["sliding_window"]) - 1)
    if factory == "sliding_window_bidirectional_overlay":
        return _Rule(left=int(cells["sliding_window"]), right=int(cells["sliding_window"]))
    if factory == "chunked_overlay":
        return _Rule(chunk=(int(cells["chunk_size"]), cells["left_padding"]))
    if factory == "packed_sequence_mask_function":
        return _Rule(segments=cells["packed_sequence_mask"])
    if factory == "remap_positions_for_packed_sequence":
        # Inside one packed sequence positions step by 1, so a shift-invariant rule is the same
        # on positions as on indices; chunks are not shift-invariant.
        inner = _rule_of(cells["mask_function"])
        ok = inner is not None and inner.chunk is None and inner.segments is None
        return replace(inner, remapped=True) if ok else None
    return None


def _rule_bounds(rule: _Rule, batch: int, q_length: int, kv_length: int, q_offset: int | Tensor,
                 kv_offset: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """[lo, hi) key slots of each query under `rule` alone, int64 [B or 1, Lq]."""
    q = (torch.arange(q_length, device=device) + q_offset)[None]  # absolute query positions
    slot = q - kv_offset  # the key slot of the query's own position
    lo = (slot - rule.left) if rule.left is not None else torch.zeros_like(slot)
    hi = (slot + rule.right + 1) if rule.right is not None else torch.full_like(slot, kv_length)
    if rule.segments is not None:  # no cache here: query i and key i are the same token
        start, end = _segment_bounds(rule.segments.to(device))
        lo, hi = torch.maximum(lo, start), torch.minimum(hi, end)
    if rule.chunk is not None:
        size, left_padding = rule.chunk
        left_padding = left_padding.to(device)[:, None]
        first = torch.div(q - left_padding, size, rounding_mode="floor") * size + left_padding
        lo, hi = torch.maximum(lo, first - kv_offset), torch.minimum(hi, first + size - kv_offset)
    lo, hi = lo.clamp(0, kv_length), hi.clamp(0, kv_length)
    return lo.expand(batch, -1), hi.expand(batch, -1)


def _segment_bounds(ids: Tensor) -> tuple[Tensor, Tensor]:
    """First and one-past-last index of the run of equal ids each token belongs to."""
    length = ids.shape[-1]
    index = torch.arange(length, device=ids.device).expand_as(ids)
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    last = torch.ones_like(new)
    last[:, :-1] = new[:, 1:]
    start = torch.where(new, index, 0).cummax(-1).values
    end = torch.where(last, index + 1, length).flip(-1).cummin(-1).values.flip(-1)
    return start, end


def _with_padding(lo: Tensor, hi: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersect [lo, hi) with the valid keys of each row: the first and one-past-last valid key
    inside, and whether every key between them is valid (no hole)."""
    length = valid.shape[-1]
    index = torch.arange(length, device=valid.device).expand_as(valid)
    pad = torch.full_like(valid[:, :1], length, dtype=torch.long)
    next_valid = torch.cat([torch.where(valid, index, length).flip(-1).cummin(-1).values.flip(-1),
                            pad], -1)  # smallest valid slot >= j (length if none)
    end_before = torch.cat([torch.zeros_like(pad), torch.where(valid, index + 1, 0)
                            .cummax(-1).values], -1)  # one past the largest valid slot < j
    count = torch.cat([torch.zeros_like(pad), valid.long().cumsum(-1)], -1)
    first, end = next_valid.gather(1, lo), end_before.gather(1, hi)
    exact = count.gather(1, hi) - count.gather(1, lo) == (end - first).clamp(min=0)
    return first, end, exact


def _dense_bounds(visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First and one-past-last visible key of each row of a bool [..., Lk] mask, and whether the
    row has no hole between them."""
    length = visible.shape[-1]
    index = torch.arange(length, device=visible.device)
    first = torch.where(visible, index, length).amin(-1)
    end = torch.where(visible, index + 1, 0).amax(-1)
    exact = visible.sum(-1) == (end - first).clamp(min=0)
    return first, end, exact


def _pack(first: Tensor, end: Tensor) -> Tensor:
    """int32 [B, 1, Lq, 2] intervals; empty rows become [0, 0)."""
    empty = end <= first
    first, end = first.masked_fill(empty, 0), end.masked_fill(empty, 0)
    return torch.stack([first, end], -1).to(torch.int32)[:, None]


def require_exact(exact: Tensor, describe) -> None:
    """Refuse a mask with holes. Eager: one host read of one flag per mask build, then
    ValueError(describe()). Under torch.compile a host read would break the graph, so the check
    runs on the device (torch._assert_async: RuntimeError on CPU, device assert on CUDA)."""
    if torch.compiler.is_compiling():
        torch._assert_async(exact.all(), "vidcore attention: a mask with holes (a query whose "
                            "visible keys are not one interval); " + _HINT)
    elif not bool(exact.all()):
        raise ValueError(describe())


def _holes_message(where: str, visible_row: Tensor, batch: int, query: int) -> str:
    keys = torch.nonzero(visible_row).flatten().tolist()
    runs, start = [], keys[0]
    for a, b in zip(keys, [*keys[1:], None], strict=True):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return (f"vidcore attention: {where}: batch row {batch}, query {query} sees keys "
            f"{', '.join(runs)}, which is not one interval; {_HINT}")


def _first_bad(exact: Tensor) -> tuple[int, int]:
    b, i = torch.nonzero(~exact.reshape(exact.shape[0], -1))[0].tolist()
    return b, i


def key_intervals_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int | Tensor = 0,
                       kv_offset: int = 0, mask_function=causal_mask_function,
                       attention_mask: Tensor | None = None, use_vmap: bool = False,
                       device: torch.device | str = "cpu", config=None, **kwargs) -> Tensor:
    """AttentionMaskInterface entry of "vidcore": int32 [B, 1, Lq, 2] key intervals. Never None,
    even for a plain causal mask: a None mask would leave causality to the module's `is_causal`,
    which some models set against their mask (PaliGemma's Gemma layers say bidirectional)."""
    device = torch.device(device)
    rule = _rule_of(mask_function)
    if rule is not None and rule.remapped and rule.segments is None:
        rule = None
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    where = f"{getattr(config, 'model_type', 'model')} {_kind(rule, mask_function)} mask"
    if rule is None:
        return _dense_intervals(batch_size, q_length, kv_length, q_offset, kv_offset,
                                mask_function, padding, use_vmap, device, where)
    lo, hi = _rule_bounds(rule, batch_size, q_length, kv_length, q_offset, kv_offset, device)
    if padding is None:
        return _pack(lo, hi)
    valid = padding[:, kv_offset:kv_offset + kv_length].to(device=device, dtype=torch.bool)
    first, end, exact = _with_padding(lo, hi, valid.expand(batch_size, -1))

    def describe() -> str:
        b, i = _first_bad(exact)
        keys = torch.arange(kv_length, device=device)
        row = valid[b if valid.shape[0] > 1 else 0] & (keys >= lo[b, i]) & (keys < hi[b, i])
        return _holes_message(where + " with a 2-D attention mask that has gaps", row, b, i)

    require_exact(exact, describe)
    return _pack(first, end)


def _kind(rule: _Rule | None, mask_function) -> str:
    if rule is not None:
        return rule.describe()
    name = getattr(mask_function, "__qualname__", type(mask_function).__name__)
    return f"custom ({name.split('.<locals>')[0]})"


def _dense_intervals(batch: int, q_length: int, kv_length: int, q_offset: int | Tensor,
                     kv_offset: int, mask_function, padding: Tensor | None, use_vmap: bool,
                     device: torch.device, where: str) -> Tensor:
    """Evaluate the mask with transformers' own sdpa_mask, a chunk of queries at a time, and keep
    each row's first and last visible key."""
    rows = max(1, _DENSE_CHUNK // max(batch * kv_length, 1))
    parts = []
    for start in range(0, q_length, rows):
        visible = sdpa_mask(batch_size=batch, q_length=min(rows, q_length - start),
                            kv_length=kv_length, q_offset=q_offset + start, kv_offset=kv_offset,
                            mask_function=mask_function, attention_mask=padding,
                            allow_is_causal_skip=False, allow_is_bidirectional_skip=False,
                            use_vmap=use_vmap, device=device)[:, 0]
        parts.append((start, visible, *_dense_bounds(visible)))
    first, end, exact = (torch.cat([p[i] for p in parts], 1) for i in (2, 3, 4))

    def describe() -> str:
        b, i = _first_bad(exact)
        start, visible = next((s, v) for s, v, *_ in reversed(parts) if s <= i)
        return _holes_message(where, visible[b, i - start], b, i)

    require_exact(exact, describe)
    return _pack(first, end)


_last_dense: tuple[weakref.ref, int, Tensor] | None = None  # one user 4-D mask, read once


def intervals_from_dense(mask: Tensor, kv_length: int, where: str) -> Tensor:
    """A user's 4-D mask [B or 1, 1 or H, Lq, Lk] (bool: True attends; float: 0 attends, -inf or
    the dtype's minimum masks) as key intervals. Refused: additive biases, masks that differ
    between heads, rows with holes. The same mask object passed to every layer of a forward is
    converted (and checked) once."""
    global _last_dense
    compiling = torch.compiler.is_compiling()
    if not compiling and _last_dense is not None and _last_dense[0]() is mask and (
            _last_dense[1] == mask._version):
        return _last_dense[2]
    if mask.shape[-1] != kv_length:
        raise ValueError(f"vidcore attention: {where}: the 4-D attention mask has "
                         f"{mask.shape[-1]} key columns but the layer has {kv_length} keys")
    if mask.dtype == torch.bool:
        visible = mask
    else:
        visible = mask == 0
        masked = mask <= torch.finfo(mask.dtype).min / 2
        require_exact(visible | masked, lambda: (
            f"vidcore attention: {where}: the float 4-D attention mask holds values other than 0 "
            f"and -inf / {torch.finfo(mask.dtype).min:.4g} (an additive bias), which vidcore "
            f"cannot add to the scores; {_HINT}"))
    if visible.shape[1] > 1:
        require_exact(visible == visible[:, :1], lambda: (
            f"vidcore attention: {where}: the 4-D attention mask differs between heads, and "
            f"vidcore's key intervals are shared by all heads; {_HINT}"))
    visible = visible[:, 0]
    first, end, exact = _dense_bounds(visible)
    require_exact(exact, lambda: _holes_message(where + " (user 4-D mask)",
                                                visible[_first_bad(exact)],
                                                *_first_bad(exact)))
    intervals = _pack(first, end)
    if not compiling:
        _last_dense = (weakref.ref(mask), mask._version, intervals)
    return intervals
