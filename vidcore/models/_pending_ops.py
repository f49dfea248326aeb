"""TEMPORARY stand-ins for vidcore.ops.interleave_pack and cosine_consistency_loss (CONTRACTS.md
sections 3-4), used only until branch new-ops lands the real ops; deleted at that merge."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class InterleavedBatch(NamedTuple):
    embeds: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    position_ids: Tensor
    labels: Tensor
    visual_spans: Tensor


def interleave_pack(text: Tensor, visual: Tensor, segments: Tensor,
                    text_labels: Tensor | None = None) -> InterleavedBatch:
    sample, kind, length = segments.long().unbind(1)
    batch = int(sample.max()) + 1 if len(sample) else 0
    starts = torch.zeros_like(length)
    for k, total in ((0, 0), (1, text.shape[0])):
        sel = kind == k
        starts[sel] = length[sel].cumsum(0) - length[sel] + total
    src = torch.cat([torch.arange(s, s + n) for s, n in zip(starts.tolist(), length.tolist(),
                                                             strict=True)] or [torch.zeros(0).long()])
    embeds = torch.cat([text, visual])[src.to(text.device)]
    per_sample = torch.zeros(batch, dtype=torch.long).index_add_(0, sample, length)
    cu = F.pad(per_sample.cumsum(0), (1, 0))
    owner = torch.repeat_interleave(torch.arange(batch), per_sample)
    pos = torch.arange(len(src)) - cu[owner]
    labels = torch.full((len(src),), -100, dtype=torch.long)
    is_text = src < text.shape[0]
    if text_labels is not None:
        labels[is_text] = text_labels.cpu()[src[is_text]]
    out_start = length.cumsum(0) - length
    spans = torch.stack([out_start, out_start + length], 1)[kind == 1]
    dev = text.device
    return InterleavedBatch(embeds, cu.int().to(dev), int(per_sample.max()) if batch else 0,
                            pos.to(dev), labels.to(dev), spans.to(dev))


def cosine_consistency_loss(a: Tensor, b: Tensor) -> Tensor:
    cos = (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)
    return (2 - 2 * cos).mean()
