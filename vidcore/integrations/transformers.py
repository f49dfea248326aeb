"""`attn_implementation="vidcore"` for Hugging Face transformers models.

Importing this module registers vidcore.ops.attention under the name "vidcore" in transformers'
AttentionInterface, and `key_intervals_mask` under the same name in AttentionMaskInterface:

    import vidcore.integrations.transformers  # noqa: F401  (registers "vidcore")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="vidcore")

Every mask transformers hands a layer reaches the op as per-query key intervals
(vidcore.integrations.transformers_masks): padding on either side, queries and keys padded
separately (cross-attention), packed rows for any batch size, causal / bidirectional / prefix
parts, sliding windows and chunks, the filled slots of static and sliding caches, and user 4-D
masks. A layer with no mask runs plain causal or bidirectional attention (the module's
`is_causal`, as in transformers' sdpa) with its sliding window; FlashAttention-style
`cu_seq_lens_q/k` kwargs run varlen. Nothing reads device data on the host per layer.

What the op cannot compute exactly is refused with a ValueError naming the layer and the one
feature: attention dropout while training, attention weights as output, additive position
biases, attention sinks, sparse key selection, paged caches, masks whose keys have holes (see
the README's "Hugging Face backend" table).
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from vidcore.integrations.transformers_masks import (
    intervals_from_dense,
    is_key_intervals,
    key_intervals_mask,
)
from vidcore.ops import attention

__all__ = ["vidcore_attention_forward", "register"]

# Attention-interface kwargs that carry a feature the op does not compute: (feature, why).
_UNSUPPORTED_KWARGS = {
    "position_bias": ("an additive position bias (T5-style relative attention bias)",
                      "vidcore attention adds no bias to the scores"),
    "s_aux": ("a sink logit per head (attention sinks)",
              "vidcore attention has no sink logits in its softmax"),
    "sinks": ("a sink logit per head (attention sinks)",
              "vidcore attention has no sink logits in its softmax"),
    "indices": ("sparse key selection (top-k key indices)",
                "vidcore attention selects keys by intervals only"),
    "block_indices": ("sparse key selection (key block indices)",
                      "vidcore attention selects keys by intervals only"),
    "cache": ("a paged KV cache (continuous batching)",
              "vidcore attention reads keys from contiguous tensors only"),
}


def _layer(module: torch.nn.Module) -> str:
    """'llama LlamaAttention (layer 3)': names the model and the layer in messages."""
    model = getattr(getattr(module, "config", None), "model_type", None)
    index = getattr(module, "layer_idx", None)
    return " ".join(filter(None, [model, type(module).__name__,
                                  None if index is None else f"(layer {index})"]))


def _refuse(module: torch.nn.Module, feature: str, why: str) -> None:
    raise ValueError(f"vidcore attention: {_layer(module)}: {feature} is not supported ({why}); "
                     f"use attn_implementation='sdpa' or 'eager' for this model")


def _check_features(module: torch.nn.Module, key: Tensor, value: Tensor, dropout: float,
                    kwargs: dict) -> None:
    """Refuse, naming it, the first feature the op cannot compute exactly."""
    if dropout > 0.0:
        _refuse(module, f"attention dropout while training (p={dropout})",
                "vidcore attention has no dropout; set the config's attention dropout to 0 or "
                "call model.eval()")
    if kwargs.get("output_attentions"):
        _refuse(module, "returning attention weights (output_attentions=True)",
                "vidcore attention never materializes the query x key probabilities")
    for name, (feature, why) in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            _refuse(module, feature, why)
    if value.shape[-1] != key.shape[-1]:
        _refuse(module, f"a value head dim ({value.shape[-1]}) different from the key head dim "
                        f"({key.shape[-1]})", "vidcore attention needs k and v of one shape")


def vidcore_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, dropout: float = 0.0,
                              scaling: float | None = None, sliding_window: int | None = None,
                              softcap: float | None = None, is_causal: bool | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers attention function: query [B, Hq, Lq, d], key/value [B, Hk, Lk, d] ->
    ([B, Lq, Hq, d], None)."""
    _check_features(module, key, value, dropout, kwargs)
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 4:
            _refuse(module, f"an attention mask of type {type(attention_mask).__name__} "
                            f"{tuple(getattr(attention_mask, 'shape', ()))}",
                    "vidcore reads 2-D padding masks (through its mask interface) and 4-D masks")
        intervals = attention_mask if is_key_intervals(attention_mask) else intervals_from_dense(
            attention_mask, key.shape[2], _layer(module))
        if kwargs.get("cu_seq_lens_q") is not None:
            intervals = _within_sequences(intervals, kwargs["cu_seq_lens_q"],
                                          kwargs["cu_seq_lens_k"], query.shape[0],
                                          query.shape[2], key.shape[2])
        return _attend(query, key, value, scaling, softcap, intervals=intervals), None
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    # flash-attention's convention for a maskless window: the query and sliding_window - 1 keys
    # before it (as many after when bidirectional); the op ignores a window that cannot bind.
    window = None if sliding_window is None else (sliding_window - 1, -1 if causal else
                                                  sliding_window - 1)
    if kwargs.get("cu_seq_lens_q") is not None:
        return _attend_varlen(query, key, value, scaling, softcap, causal, window, kwargs), None
    return _attend(query, key, value, scaling, softcap, causal=causal, window=window), None


def _within_sequences(intervals: Tensor, cu_q: Tensor, cu_k: Tensor, batch: int, len_q: int,
                      len_k: int) -> Tensor:
    """Intersect key intervals with FlashAttention offsets into the flattened rows
    (DataCollatorWithFlattening): query token t of sequence s sees keys of s only."""
    flat = torch.arange(batch * len_q, device=intervals.device)
    sequence = torch.searchsorted(cu_q[1:].to(flat), flat, right=True).clamp(max=cu_q.numel() - 2)
    row_start = (flat // len_q) * len_k  # flattened index of the row's first key
    start, end = ((cu_k.to(flat)[sequence + i] - row_start).view(batch, 1, len_q)
                  for i in (0, 1))
    intervals = intervals.expand(batch, 1, len_q, 2)
    lo = torch.maximum(intervals[..., 0], start).clamp(0, len_k)
    hi = torch.minimum(intervals[..., 1], end).clamp(0, len_k)
    return torch.stack([lo, torch.maximum(hi, lo)], -1).to(torch.int32)


def _attend(query: Tensor, key: Tensor, value: Tensor, scale: float | None,
            softcap: float | None, *, intervals: Tensor | None = None, causal: bool = False,
            window: tuple[int, int] | None = None) -> Tensor:
    """Run the op over a padded batch; out [B, Lq, Hq, d].

    The op takes packed [total, H, d] rows with int32 offsets. Keys laid out [B, Hk, Lk, d] (KV
    caches) are packed one sequence per (batch row, key head), which views them in place and
    copies only the queries; keys laid out [B, Lk, Hk, d] (fresh projections) are packed one
    sequence per batch row, again a view."""
    batch, heads_q, len_q, dim = query.shape
    heads_k, len_k = key.shape[1], key.shape[2]
    by_head = key.is_contiguous() and value.is_contiguous()
    if by_head:
        group = heads_q // heads_k
        q = query.reshape(batch, heads_k, group, len_q, dim).transpose(2, 3).reshape(-1, group, dim)
        k, v = key.reshape(-1, 1, dim), value.reshape(-1, 1, dim)
        sequences = batch * heads_k
    else:
        q = query.transpose(1, 2).reshape(-1, heads_q, dim)
        k, v = (t.transpose(1, 2).reshape(-1, heads_k, dim) for t in (key, value))
        sequences = batch
    ranges = None
    if intervals is not None:
        per_row = intervals.expand(batch, heads_k if by_head else 1, len_q, 2)
        ranges = per_row.reshape(-1, 2).contiguous()
    out = attention(q, k, v, cu_seqlens_q=_offsets(sequences, len_q, q.device),
                    cu_seqlens_k=_offsets(sequences, len_k, q.device), max_seqlen_q=len_q,
                    max_seqlen_k=len_k, causal=causal, scale=scale, window=window,
                    softcap=softcap, tokens_per_frame=None if ranges is None else 1,
                    q_frame_range=ranges)
    if by_head:
        out = out.reshape(batch, heads_k, len_q, -1, dim).permute(0, 2, 1, 3, 4)
    return out.reshape(batch, len_q, heads_q, dim)


def _offsets(sequences: int, length: int, device: torch.device) -> Tensor:
    return torch.arange(0, (sequences + 1) * length, length, dtype=torch.int32, device=device)


def _attend_varlen(query: Tensor, key: Tensor, value: Tensor, scale: float | None,
                   softcap: float | None, causal: bool, window: tuple[int, int] | None,
                   kwargs: dict) -> Tensor:
    """FlashAttention kwargs (DataCollatorWithFlattening): offsets into the flattened rows."""
    batch, heads_q, len_q, dim = query.shape
    q, k, v = (t.transpose(1, 2).reshape(-1, t.shape[1], dim) for t in (query, key, value))
    out = attention(q, k, v, cu_seqlens_q=kwargs["cu_seq_lens_q"].int(),
                    cu_seqlens_k=kwargs["cu_seq_lens_k"].int(), causal=causal, scale=scale,
                    window=window, softcap=softcap, max_seqlen_q=int(kwargs["max_length_q"]),
                    max_seqlen_k=int(kwargs["max_length_k"]))
    return out.view(batch, len_q, heads_q, dim)


def register(name: str = "vidcore") -> None:
    """Register vidcore attention and its key-interval masks under `name`."""
    AttentionInterface.register(name, vidcore_attention_forward)
    AttentionMaskInterface.register(name, key_intervals_mask)


register()
