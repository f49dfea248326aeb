"""ActionLLM's trainable blocks around the frozen LLM (2tianyao1/ActionLLM, actionllm/model.py
and mm_adapter.py): the feature projection, the action-tuning adapter placed before every
attention layer, and the Cross-Modality Interaction Block (CMIB).

The CMIB mixes three token streams (text clues, video, future queries): each attends to all
three with its own softmax per pair (nine maps), the three contexts of a query stream are
averaged, then an output projection, a residual, and a SwiGLU feed-forward per stream. With
`use_kernels` the nine maps are one `vidcore.ops.multi_source_attention` call; without, they are
the seed's nine explicit score / softmax / matmul chains.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init

from vidcore.models._init import mark_init
from vidcore.ops import multi_source_attention

__all__ = ["FeatureProjection", "ActionTuningAdapter", "CrossModalityInteraction", "STREAMS",
           "sinusoids"]

STREAMS = ("text", "video", "future")


class FeatureProjection(nn.Module):
    """The seed's AdapterMLP: Linear -> SiLU -> Linear (features or future queries -> LLM width)."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        # the seed: xavier weights, zero biases
        self.down = mark_init(nn.Linear(in_features, hidden), "xavier")
        self.up = mark_init(nn.Linear(hidden, out_features), "xavier")

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.silu(self.down(x)))


class ActionTuningAdapter(nn.Module):
    """A(z) = z + up(dropout(down(z))), applied to the normalised input of every attention layer
    (the seed's RepAdapter_Router: 1x1 convolutions, `up` grouped; its router is computed and
    never used, so it is left out). `down` is xavier-initialised, `up` zero-initialised: the
    adapted LLM starts as the frozen one."""

    def __init__(self, width: int, rank: int, groups: int, dropout: float):
        super().__init__()
        if rank % groups or width % groups:
            raise ValueError(f"ActionTuningAdapter: rank ({rank}) and width ({width}) must be "
                             f"multiples of groups ({groups})")
        self.groups = groups
        self.down = mark_init(nn.Linear(width, rank), "xavier")
        self.up_weight = nn.Parameter(torch.zeros(groups, width // groups, rank // groups))
        self.up_bias = nn.Parameter(torch.zeros(width))
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        """The zero up projection (called by the model's weight initialisation)."""
        init.zeros_(self.up_weight)
        init.zeros_(self.up_bias)

    def forward(self, z: Tensor) -> Tensor:
        low = self.dropout(self.down(z)).unflatten(-1, (self.groups, -1))
        up = torch.einsum("...gr,gor->...go", low, self.up_weight.to(low.dtype)).flatten(-2)
        return z + up + self.up_bias


def sinusoids(positions: Tensor, width: int) -> Tensor:
    """The transformer's sinusoidal encoding of integer `positions` [n] -> [n, width]:
    sin at even channels, cos at odd ones, frequencies 10000^(-2i / width)."""
    rate = torch.exp(torch.arange(0, width, 2, device=positions.device).float()
                     * (-math.log(10000.0) / width))
    angles = positions.float()[:, None] * rate
    return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)[:, :width]


class CrossModalityInteraction(nn.Module):
    """The CMIB on `width`-wide streams with `heads` heads (the seed: 128 wide, 32 heads, so a
    head dim of 4).

    forward(streams, batch_index, use_kernels) takes the three streams [G, S_m, width] of G
    samples of equal lengths and their indices in the batch (for the seed's positional encoding
    bug), and returns the three updated streams.
    """

    def __init__(self, width: int, heads: int, ffn_size: int, dropout: float,
                 attention_dropout: float, eps: float, position_over_batch: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"CrossModalityInteraction: heads ({heads}) must divide the width "
                             f"({width})")
        self.heads, self.position_over_batch = heads, position_over_batch
        self.attention_dropout = attention_dropout
        names = STREAMS

        def per_stream(make) -> nn.ModuleDict:
            return nn.ModuleDict({name: make() for name in names})

        self.attention_norm = per_stream(lambda: nn.RMSNorm(width, eps=eps))
        self.ffn_norm = per_stream(lambda: nn.RMSNorm(width, eps=eps))
        self.query = per_stream(lambda: nn.Linear(width, width))
        self.key = per_stream(lambda: nn.Linear(width, width))
        self.value = per_stream(lambda: nn.Linear(width, width))
        self.output = per_stream(lambda: nn.Linear(width, width))
        self.gate = per_stream(lambda: nn.Linear(width, ffn_size, bias=False))
        self.up = per_stream(lambda: nn.Linear(width, ffn_size, bias=False))
        self.down = per_stream(lambda: nn.Linear(ffn_size, width, bias=False))
        self.dropout = nn.Dropout(dropout)

    def _position(self, x: Tensor, batch_index: Tensor) -> Tensor:
        if self.position_over_batch:
            # the seed's `x + pe[:x.size(0)]` on a [B, S, D] tensor: sample b gets row b on
            # every token (all samples row 0 with its batch size of 1)
            return x + sinusoids(batch_index, x.shape[-1]).to(x.dtype)[:, None]
        return x + sinusoids(torch.arange(x.shape[1], device=x.device), x.shape[-1]).to(x.dtype)

    def forward(self, streams: tuple[Tensor, Tensor, Tensor], batch_index: Tensor,
                use_kernels: bool) -> tuple[Tensor, ...]:
        streams = [self._position(x, batch_index) for x in streams]
        normed = [self.attention_norm[n](x) for n, x in zip(STREAMS, streams, strict=True)]
        attend = self._attend_fused if use_kernels else self._attend_seed
        contexts = attend(normed)
        out = []
        for name, x, context in zip(STREAMS, streams, contexts, strict=True):
            x = x + self.dropout(self.output[name](context))
            h = self.ffn_norm[name](x)
            out.append(x + self.down[name](F.silu(self.gate[name](h)) * self.up[name](h)))
        return tuple(out)

    def _split_heads(self, x: Tensor) -> Tensor:
        """[G, S, width] -> [G, heads, S, head_dim] (a view)."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _projections(self, normed: list[Tensor]) -> tuple[list[Tensor], ...]:
        return tuple([self._split_heads(proj[n](x)) for n, x in zip(STREAMS, normed, strict=True)]
                     for proj in (self.query, self.key, self.value))

    def _attend_fused(self, normed: list[Tensor]) -> list[Tensor]:
        if self.training and self.attention_dropout > 0:
            raise ValueError("CrossModalityInteraction: attention dropout on the nine maps is "
                             "supported by the reference path only (use_kernels=False)")
        queries, keys, values = self._projections(normed)
        outs = multi_source_attention(queries, keys, values)
        return [o.transpose(1, 2).flatten(-2) for o in outs]

    def _attend_seed(self, normed: list[Tensor]) -> list[Tensor]:
        """Nine score maps, each its own softmax (and dropout), contexts averaged per stream."""
        queries, keys, values = self._projections(normed)
        scale = 1.0 / math.sqrt(queries[0].shape[-1])
        contexts = []
        for q in queries:
            total = 0
            for k, v in zip(keys, values, strict=True):
                probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
                probs = F.dropout(probs, self.attention_dropout, self.training)
                total = total + probs @ v
            contexts.append((total / len(keys)).transpose(1, 2).flatten(-2))
        return contexts
