"""Sequence assembly (DESIGN.md op 4): text-segment embeddings and per-frame visual tokens
scattered into one packed [total, D] buffer for varlen attention, with position ids, loss labels
and the spans of the visual tokens (MiniGPT4-Video interleaving, ST-LLM prompt + video + answer).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_backend, check_int, check_tensor

__all__ = ["InterleavePlan", "InterleavedBatch", "plan_interleave", "interleave_pack"]

_OP = "interleave_pack"
TEXT, VISUAL = 0, 1


class InterleavePlan(NamedTuple):
    """Everything interleave_pack derives from the segments alone (host work, reusable: build it
    in the data loader, or outside a torch.compile region, and pass it instead of segments)."""

    segment_table: Tensor  # [S', 4] int64 on device: the non-empty segments (reference docs)
    cu_seqlens: Tensor  # [B + 1] int32 on device
    max_seqlen: int
    visual_spans: Tensor  # [S_visual, 2] int64 on device: (start, end) rows of each visual segment
    total_text: int
    total_visual: int


class InterleavedBatch(NamedTuple):
    """Packed sequences ready for a varlen LLM forward.

    embeds [total, D]; cu_seqlens [B + 1] int32; max_seqlen; position_ids [total] int64 (0 at
    each sample's first row); labels [total] int64 (text_labels at text rows, -100 elsewhere);
    visual_spans [S_visual, 2] int64 (start, end) rows of each visual segment, in segment order;
    visual_index [total_visual] int64: the row of embeds that holds visual row i, so that
    `hidden[visual_index]` are the LLM's outputs at the visual tokens, in visual order.
    """

    embeds: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    position_ids: Tensor
    labels: Tensor
    visual_spans: Tensor
    visual_index: Tensor


def plan_interleave(segments: Tensor | Sequence[Sequence[int]], *, batch_size: int | None = None,
                    device: torch.device | str | None = None) -> InterleavePlan:
    """The host half of interleave_pack: offsets of every segment, vectorised (no loop over
    samples or segments). Args as `interleave_pack`; `device` is where the plan's tensors go."""
    table = _host_segments(segments)
    sample, kind, length = table.unbind(1)
    num_samples = int(sample[-1]) + 1 if len(table) else 0
    if batch_size is not None:
        check_int(_OP, "batch_size", batch_size, minimum=num_samples)
        num_samples = batch_size
    seq_lens = torch.zeros(num_samples, dtype=torch.int64).index_add_(0, sample, length)
    cu_seqlens = torch.cat([seq_lens.new_zeros(1), seq_lens.cumsum(0)])
    dst_start = length.cumsum(0) - length
    text_length = torch.where(kind == TEXT, length, 0)
    text_before = text_length.cumsum(0) - text_length
    rows = torch.stack([dst_start, kind, text_before, cu_seqlens[sample]], dim=1)
    visual = kind == VISUAL
    spans = torch.stack([dst_start[visual], (dst_start + length)[visual]], dim=1)
    total_text = int(text_length.sum())
    return InterleavePlan(
        segment_table=_to_device(rows[length > 0].contiguous(), device),
        cu_seqlens=_to_device(cu_seqlens.to(torch.int32), device),
        max_seqlen=int(seq_lens.max()) if num_samples else 0,
        visual_spans=_to_device(spans, device),
        total_text=total_text,
        total_visual=int(length.sum()) - total_text,
    )


def interleave_pack(
    text: Tensor,
    visual: Tensor,
    segments: Tensor | Sequence[Sequence[int]] | InterleavePlan,
    text_labels: Tensor | None = None,
    *,
    batch_size: int | None = None,
    backend: str = "auto",
) -> InterleavedBatch:
    """Scatter text segments and visual tokens into one packed buffer, sample after sample.

    Args:
        text: [total_text, D] embeddings of every text segment, concatenated in segment order.
        visual: [total_visual, D] visual tokens (e.g. per-frame projections), concatenated in
            segment order; same dtype, D and device as text.
        segments: [S, 3] integer rows (sample, kind, length) on the host (a CPU tensor or nested
            ints), in output order: kind 0 = text, 1 = visual; sample ids non-decreasing (ids
            with no rows are empty sequences); the text lengths sum to total_text and the visual
            lengths to total_visual. Or an InterleavePlan of them (`plan_interleave`).
        text_labels: [total_text] int64 labels of the text rows (-100 for no loss), or None.
        batch_size: B, if larger than the last sample id + 1 (trailing empty samples).
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        InterleavedBatch. Differentiable in text and visual (exact gathers). No host round trip:
        all sizes come from `segments`. Backends: CPU -> csrc/cpu/interleave_pack.cpp; CUDA ->
        csrc/cuda/interleave_pack.cu; one launch each way.
    """
    check_backend(_OP, backend)
    check_tensor(_OP, "text", text, dims=(2,))
    check_tensor(_OP, "visual", visual, dims=(2,), dtypes=(text.dtype,), device=text.device)
    if visual.shape[1] != text.shape[1]:
        raise ValueError(f"{_OP}: visual must have D={text.shape[1]} columns like text, got "
                         f"{tuple(visual.shape)}")
    if isinstance(segments, InterleavePlan):
        plan = segments
        if batch_size is not None:
            raise ValueError(f"{_OP}: batch_size is set by the plan; pass it to plan_interleave")
        _check_plan(plan, text.device)
    else:
        plan = plan_interleave(segments, batch_size=batch_size, device=text.device)
    for name, rows, need in (("text", text, plan.total_text), ("visual", visual, plan.total_visual)):
        if rows.shape[0] != need:
            raise ValueError(f"{_OP}: {name} has {rows.shape[0]} rows but the {name} segments "
                             f"add up to {need}")
    if text_labels is not None:
        check_tensor(_OP, "text_labels", text_labels, dims=(1,), dtypes=(torch.int64,),
                     device=text.device)
        if text_labels.shape[0] != text.shape[0]:
            raise ValueError(f"{_OP}: text_labels must have one label per text row "
                             f"({text.shape[0]}), got {text_labels.shape[0]}")
        text_labels = text_labels.contiguous()
    total = plan.total_text + plan.total_visual
    fn = reference.interleave_pack if backend == "torch" else _interleave_pack
    embeds, position_ids, labels, visual_index = fn(
        text.contiguous(), visual.contiguous(), plan.segment_table, text_labels, total)
    return InterleavedBatch(embeds, plan.cu_seqlens, plan.max_seqlen, position_ids, labels,
                            plan.visual_spans, visual_index)


def _to_device(host: Tensor, device: torch.device | str | None) -> Tensor:
    """Host metadata -> device; to CUDA through pinned memory, asynchronously (no host sync)."""
    if device is None or torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _host_segments(segments: object) -> Tensor:
    if not isinstance(segments, Tensor):
        try:
            segments = torch.tensor(segments, dtype=torch.int64).reshape(-1, 3)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{_OP}: segments must be [S, 3] integer rows (sample, kind, "
                            f"length), got {type(segments).__name__}: {e}") from None
    if segments.device.type != "cpu":
        raise ValueError(f"{_OP}: segments must be held on the host (a CPU tensor or nested "
                         f"ints), got a tensor on {segments.device}: sizes must be host values")
    if segments.dtype.is_floating_point or segments.is_complex() or segments.dtype == torch.bool:
        raise TypeError(f"{_OP}: segments must be an integer tensor, got {segments.dtype}")
    if segments.dim() != 2 or segments.shape[1] != 3:
        raise ValueError(f"{_OP}: segments must have shape [S, 3] (sample, kind, length), got "
                         f"{tuple(segments.shape)}")
    table = segments.to(torch.int64)
    sample, kind, length = table.unbind(1)
    if (sample < 0).any() or (sample[1:] < sample[:-1]).any():
        raise ValueError(f"{_OP}: segments' sample ids must be >= 0 and non-decreasing")
    if ((kind != TEXT) & (kind != VISUAL)).any():
        raise ValueError(f"{_OP}: segments' kind must be 0 (text) or 1 (visual)")
    if (length < 0).any():
        raise ValueError(f"{_OP}: segments' lengths must be >= 0")
    return table


def _check_plan(plan: InterleavePlan, device: torch.device) -> None:
    check_tensor(_OP, "plan.segment_table", plan.segment_table, dims=(2,),
                 dtypes=(torch.int64,), device=device)


@torch.library.custom_op("vidcore::interleave_pack", mutates_args=())
def _interleave_pack(text: Tensor, visual: Tensor, segment_table: Tensor,
                     text_labels: Tensor | None, total: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return reference.interleave_pack(text, visual, segment_table, text_labels, total)


@_interleave_pack.register_fake
def _(text, visual, segment_table, text_labels, total):
    index = text.new_empty(total, dtype=torch.int64)
    return (text.new_empty(total, text.shape[1]), index, torch.empty_like(index),
            text.new_empty(visual.shape[0], dtype=torch.int64))


@torch.library.custom_op("vidcore::interleave_pack_backward", mutates_args=())
def _interleave_pack_backward(grad_embeds: Tensor, segment_table: Tensor, total_text: int,
                              total_visual: int) -> tuple[Tensor, Tensor]:
    return reference.interleave_pack_backward(grad_embeds, segment_table, total_text,
                                              total_visual)


@_interleave_pack_backward.register_fake
def _(grad_embeds, segment_table, total_text, total_visual):
    dim = grad_embeds.shape[1]
    return grad_embeds.new_empty(total_text, dim), grad_embeds.new_empty(total_visual, dim)


def _setup_context(ctx, inputs, output) -> None:
    text, visual, segment_table, _, _ = inputs
    ctx.save_for_backward(segment_table)
    ctx.totals = (text.shape[0], visual.shape[0])


def _backward(ctx, grad_embeds: Tensor, *_):
    (segment_table,) = ctx.saved_tensors
    grad_text, grad_visual = _interleave_pack_backward(grad_embeds.contiguous(), segment_table,
                                                       *ctx.totals)
    return grad_text, grad_visual, None, None, None


_interleave_pack.register_autograd(_backward, setup_context=_setup_context)
