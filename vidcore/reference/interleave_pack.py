"""Reference of interleave_pack (DESIGN.md op 4): text-segment embeddings and per-frame visual
tokens scattered into one packed [total, D] buffer (MiniGPT4-Video's `<Img>tokens<Cap>subtitle`
prompt, ST-LLM's `[prompt | video | answer]`), the seeds' per-sample `torch.cat` splicing as one
gather (minigpt4/models/mini_gpt4_llama_v2.py prompt_wrap, stllm/models/st_llm.py:379-432).

The segment table has one row per non-empty segment, in output order:
    (dst_start, kind, text_before, seq_start)
dst_start: its first row in the output (row 0 first, ascending; a segment ends where the next one
starts, the last at `total`); kind: 0 text, 1 visual; text_before: text rows before dst_start
(so the visual rows before it are dst_start - text_before); seq_start: first row of its sample.
Text and visual rows are each consumed once, in order, so output row r of a segment comes from
    text[text_before + r - dst_start]   (kind 0)   or   visual[r - text_before]   (kind 1).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IGNORE_INDEX", "TABLE_COLUMNS", "interleave_pack", "interleave_pack_backward"]

IGNORE_INDEX = -100  # label of rows without a loss (visual rows; torch's cross_entropy default)
TABLE_COLUMNS = ("dst_start", "kind", "text_before", "seq_start")


def _sources(segment_table: Tensor, total: int, total_text: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per output row: its row r, its segment, and its source row in cat([text, visual])."""
    row = torch.arange(total, device=segment_table.device)
    dst_start, kind, text_before, _ = segment_table.unbind(1)
    segment = torch.searchsorted(dst_start.contiguous(), row, right=True) - 1
    is_text = kind[segment] == 0
    text_row = text_before[segment] + row - dst_start[segment]
    visual_row = row - text_before[segment]
    return row, segment, torch.where(is_text, text_row, total_text + visual_row)


def interleave_pack(text: Tensor, visual: Tensor, segment_table: Tensor,
                    text_labels: Tensor | None, total: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Interleave text and visual rows into packed sequences.

    Args:
        text: [total_text, D] text embeddings, segments' rows in order.
        visual: [total_visual, D] visual tokens (same dtype), segments' rows in order.
        segment_table: [S, 4] int64 (see the module docstring), on text's device.
        text_labels: [total_text] int64 labels of the text rows, or None (no loss anywhere).
        total: total_text + total_visual.
    Returns:
        embeds [total, D]; position_ids [total] int64 (r - seq_start: 0 at each sample's first
        row); labels [total] int64 (text_labels at text rows, IGNORE_INDEX elsewhere);
        visual_index [total_visual] int64 (the row of embeds holding visual row i).
    """
    row, segment, source = _sources(segment_table, total, text.shape[0])
    embeds = torch.cat([text, visual])[source]
    position_ids = row - segment_table[segment, 3]
    def no_loss(rows: int) -> Tensor:
        return torch.full((rows,), IGNORE_INDEX, dtype=torch.int64, device=text.device)

    text_labels = no_loss(text.shape[0]) if text_labels is None else text_labels
    labels = torch.cat([text_labels, no_loss(visual.shape[0])])[source]
    inverse = torch.empty_like(source).index_put_((source,), row)  # source row -> output row
    return embeds, position_ids, labels, inverse[text.shape[0]:].clone()


def interleave_pack_backward(grad_embeds: Tensor, segment_table: Tensor, total_text: int,
                             total_visual: int) -> tuple[Tensor, Tensor]:
    """Gradients of interleave_pack: each output row's gradient goes back to its source row
    (every text and visual row is used exactly once, so this is an exact gather)."""
    total = grad_embeds.shape[0]
    row, _, source = _sources(segment_table, total, total_text)
    inverse = torch.empty_like(source).index_put_((source,), row)
    return grad_embeds[inverse[:total_text]], grad_embeds[inverse[total_text:]]
