"""Sequence assembly for the video-QA models: where the text and the video tokens of each prompt
go, as a packed batch (vidcore.ops.interleave_pack, the kernels path) or as a padded batch built
sample by sample (the seeds' way, the reference path), and the losses on either layout.

A prompt is `input_ids` holding runs of the config's `video_token_index` placeholder (one run
per video for ST-LLM, one per frame for MiniGPT4-Video), as LlavaNextVideoProcessor expands
them. `SequenceLayout` is the host-side plan of those runs; the collate function computes it
once on the CPU, so a forward on the GPU needs no device-to-host copy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vidcore.ops import cosine_consistency_loss, interleave_pack
from vidcore.ops.interleave_pack import InterleavedBatch

__all__ = [
    "IGNORE_INDEX",
    "SequenceLayout",
    "sequence_layout",
    "PackedSequence",
    "pack_sequence",
    "PaddedSequence",
    "pad_sequence_like_seed",
    "packed_lm_loss",
    "padded_lm_loss",
    "cosine_consistency_loss",
    "cosine_consistency_reference",
]

IGNORE_INDEX = -100


class SequenceLayout:
    """Host-side plan of a padded prompt batch (a plain object, so that `BatchFeature.to` and
    DDP's input scatter leave it on the host).

    segments: [S, 3] int64 (sample, kind, length) runs in sequence order; kind 0 = text,
        1 = video placeholders (length = placeholders in the run).
    text_index: [total_text] int64 flat positions (b * L + l) of the text tokens in input_ids.
    visual_runs_per_sample: [B] int64 placeholder runs of each sample.
    """

    __slots__ = ("segments", "text_index", "visual_runs_per_sample")

    def __init__(self, segments: Tensor, text_index: Tensor, visual_runs_per_sample: Tensor):
        self.segments = segments
        self.text_index = text_index
        self.visual_runs_per_sample = visual_runs_per_sample

    def __repr__(self) -> str:
        return (f"SequenceLayout(batch_size={self.batch_size}, runs={self.segments.shape[0]}, "
                f"text_tokens={self.text_index.numel()})")

    @property
    def batch_size(self) -> int:
        return len(self.visual_runs_per_sample)

    def visual_lengths(self) -> Tensor:
        """Placeholders of each run, in order."""
        return self.segments[self.segments[:, 1] == 1, 2]


def sequence_layout(input_ids: Tensor, attention_mask: Tensor | None,
                    video_token_index: int) -> SequenceLayout:
    """Runs of text and placeholder tokens of every sample (padding, left or right, skipped).
    Vectorised on the host: one copy of the int ids if they live on a device."""
    ids = input_ids.detach().cpu()
    if ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(ids.shape)}")
    valid = (torch.ones_like(ids, dtype=torch.bool) if attention_mask is None
             else attention_mask.detach().cpu().bool())
    sample = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)[valid]
    kind = (ids[valid] == video_token_index).long()
    flat = torch.arange(ids.numel()).view_as(ids)[valid]
    change = torch.ones_like(kind, dtype=torch.bool)
    change[1:] = (kind[1:] != kind[:-1]) | (sample[1:] != sample[:-1])
    starts = change.nonzero().flatten()
    lengths = torch.diff(starts, append=starts.new_tensor([len(kind)]))
    segments = torch.stack([sample[starts], kind[starts], lengths], 1)
    runs = torch.zeros(ids.shape[0], dtype=torch.long).index_add_(
        0, segments[:, 0], segments[:, 1])
    return SequenceLayout(segments, flat[kind == 0], runs)


PackedSequence = InterleavedBatch  # embeds, cu_seqlens, max_seqlen, position_ids, labels,
#                                   visual_spans, visual_index (the row of each video token)


def pack_sequence(embed_tokens: torch.nn.Module, input_ids: Tensor, labels: Tensor | None,
                  layout: SequenceLayout, visual: Tensor,
                  visual_lengths: Sequence[int] | Tensor | None = None) -> PackedSequence:
    """Text embeddings and video tokens [total_visual, D] (run after run) in one packed buffer.

    `visual_lengths` (host) overrides the placeholder count of each run, e.g. after masking
    dropped tokens; default: the placeholders themselves."""
    device = input_ids.device
    text_index = layout.text_index.to(device, non_blocking=True)
    text = embed_tokens(input_ids.reshape(-1).index_select(0, text_index))
    text_labels = None if labels is None else labels.reshape(-1).index_select(0, text_index)
    segments = layout.segments
    if visual_lengths is not None:
        segments = segments.clone()
        segments[segments[:, 1] == 1, 2] = torch.as_tensor(visual_lengths, dtype=torch.long)
    return interleave_pack(text, visual.to(text.dtype), segments, text_labels)


class PaddedSequence(NamedTuple):
    """A right-padded batch: embeds [B, L, D], attention_mask [B, L], labels [B, L] and the
    (start, end) of every video run of sample b in visual_spans[b]."""

    embeds: Tensor
    attention_mask: Tensor
    labels: Tensor
    visual_spans: list[list[tuple[int, int]]]


def pad_sequence_like_seed(embed_tokens: torch.nn.Module, input_ids: Tensor,
                           labels: Tensor | None, layout: SequenceLayout,
                           visual_runs: Sequence[Tensor]) -> PaddedSequence:
    """The seeds' prompt_wrap: per sample, embed each text piece, concatenate it with its video
    run, then pad every sample to the longest with zeros (a Python loop; the reference path)."""
    flat_ids, flat_labels = input_ids.reshape(-1), None if labels is None else labels.reshape(-1)
    pieces: list[list[Tensor]] = [[] for _ in range(layout.batch_size)]
    targets: list[list[Tensor]] = [[] for _ in range(layout.batch_size)]
    spans: list[list[tuple[int, int]]] = [[] for _ in range(layout.batch_size)]
    lengths = [0] * layout.batch_size
    text_at, visual_at = 0, 0
    for sample, kind, length in layout.segments.tolist():
        if kind == 0:
            where = layout.text_index[text_at:text_at + length].to(input_ids.device)
            pieces[sample].append(embed_tokens(flat_ids[where]))
            targets[sample].append(flat_labels[where] if flat_labels is not None
                                   else flat_ids.new_full((length,), IGNORE_INDEX))
            text_at += length
            size = length
        else:
            run = visual_runs[visual_at]
            pieces[sample].append(run)
            targets[sample].append(flat_ids.new_full((run.shape[0],), IGNORE_INDEX))
            spans[sample].append((lengths[sample], lengths[sample] + run.shape[0]))
            visual_at += 1
            size = run.shape[0]
        lengths[sample] += size
    dtype = pieces[0][0].dtype if pieces and pieces[0] else visual_runs[0].dtype
    embeds = torch.nn.utils.rnn.pad_sequence(
        [torch.cat([p.to(dtype) for p in sample]) for sample in pieces], batch_first=True)
    padded_labels = torch.nn.utils.rnn.pad_sequence(
        [torch.cat(t) for t in targets], batch_first=True, padding_value=IGNORE_INDEX)
    mask = (torch.arange(embeds.shape[1], device=embeds.device)[None]
            < torch.tensor(lengths, device=embeds.device)[:, None]).long()
    return PaddedSequence(embeds, mask, padded_labels, spans)


def packed_lm_loss(logits: Tensor, labels: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Next-token cross entropy on a packed batch: row i predicts labels[i + 1] of the same
    sequence; the mean over all supervised tokens of the batch (as transformers' loss)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:-1] = labels[1:]
    targets[cu_seqlens[1:].long() - 1] = IGNORE_INDEX  # last row of a sequence predicts nothing
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


def padded_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """transformers' shifted cross entropy on a padded batch."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX)


def cosine_consistency_reference(a: Tensor, b: Tensor) -> Tensor:
    """ST-LLM's MVM loss as the seed writes it: mean(2 - 2 <a/|a|, b/|b|>)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    return (2 - 2 * (a * b).sum(-1)).mean()
