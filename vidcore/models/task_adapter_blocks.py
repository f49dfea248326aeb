"""Task-Adapter++'s adapted transformer layers (Jaulin-Bage/Task-Adapter-pp, module_adapter.py
and module_sem_adapter.py), wrapped around Hugging Face CLIP encoder layers whose weights stay
frozen and are reused:

- `TaskAdaptedVisionLayer` (the last M ViT blocks): the block's attention along the frames of
  each video (temporal), within each frame (spatial) and across the videos of the episode
  (task), each followed by its adapter, then the MLP with a parallel adapter;
- `SemanticOrderTextLayer` (the last N text blocks): after the causal self-attention, the same
  attention across the sub-action sentences of a class, per token position, then an adapter.

`axis_self_attention` runs a CLIP attention module along one axis of a token grid: with
kernels, one fused QKV projection whose strided slices feed `vidcore.ops.axis_attention`; the
reference path is the seed's rearrange (a permuted copy), explicit softmax, and rearrange back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidcore.models._init import mark_init
from vidcore.ops import axis_attention

__all__ = ["AimAdapter", "axis_self_attention", "TaskAdaptedVisionLayer",
           "SemanticOrderTextLayer", "cosine_matrix", "frame_transitions"]


class AimAdapter(nn.Module):
    """Linear(D -> D * ratio) -> GELU -> Linear(-> D), plus the input when `skip` (the seed's
    Aim_adapter); `zero_init` zeroes the second layer, so the adapter starts as 0 (or identity)."""

    def __init__(self, width: int, ratio: float, skip: bool, zero_init: bool):
        super().__init__()
        self.skip = skip
        self.fc1 = nn.Linear(width, int(width * ratio))
        self.fc2 = nn.Linear(int(width * ratio), width)
        if zero_init:
            mark_init(self.fc2, "zeros")

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc2(F.gelu(self.fc1(x)))
        return x + h if self.skip else h


def axis_self_attention(attn: nn.Module, x: Tensor, dim: int, use_kernels: bool) -> Tensor:
    """A CLIP attention module (q/k/v/out projections, `num_heads`, `scale`) applied along grid
    axis `dim` of x [*grid, D]; no mask. Returns [*grid, D]."""
    heads = attn.num_heads
    if use_kernels:
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        qkv = F.linear(x, weight, bias).unflatten(-1, (3, heads, -1))  # one GEMM
        q, k, v = qkv.unbind(-3)  # strided views, no copies
        out = axis_attention(q, k, v, dim=dim, scale=attn.scale)
        return attn.out_proj(out.flatten(-2))
    # the seed: rearrange to [sequences, S, D] (a copy), explicit scores, rearrange back
    moved = x.movedim(dim, -2)
    sequences = moved.reshape(-1, *moved.shape[-2:])
    q, k, v = (proj(sequences).unflatten(-1, (heads, -1)).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    out = attn.out_proj((probs @ v).transpose(1, 2).flatten(-2))
    return out.view(moved.shape).movedim(-2, dim)


class TaskAdaptedVisionLayer(nn.Module):
    """Adapters of one ViT block; forward(layer, x, videos, use_kernels) with x [(N T), L, D]
    (N videos of T frames of L tokens). The task adapter is not zero-initialised (the seed)."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        self.temporal = AimAdapter(width, ratio, skip=False, zero_init=True)
        self.spatial = AimAdapter(width, ratio, skip=True, zero_init=True)
        self.task = AimAdapter(width, ratio, skip=False, zero_init=False)
        self.mlp = AimAdapter(width, ratio, skip=False, zero_init=True)

    def forward(self, layer: nn.Module, x: Tensor, videos: int, use_kernels: bool) -> Tensor:
        attn, norm = layer.self_attn, layer.layer_norm1
        grid = x.view(videos, -1, *x.shape[1:])  # [N, T, L, D]
        grid = grid + self.temporal(axis_self_attention(attn, norm(grid), 1, use_kernels))
        grid = grid + self.spatial(axis_self_attention(attn, norm(grid), 2, use_kernels))
        grid = grid + self.task(axis_self_attention(attn, norm(grid), 0, use_kernels))
        h = layer.layer_norm2(grid)
        return (grid + layer.mlp(h) + self.mlp(h)).flatten(0, 1)


class SemanticOrderTextLayer(nn.Module):
    """The adapter of one text block; forward(layer, x, causal_mask, classes, use_kernels) with
    x [(C S), L, D] (C classes of S sub-action sentences)."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        self.adapter = AimAdapter(width, ratio, skip=False, zero_init=True)

    def forward(self, layer: nn.Module, x: Tensor, causal_mask: Tensor | None, classes: int,
                use_kernels: bool) -> Tensor:
        h, _ = layer.self_attn(layer.layer_norm1(x), attention_mask=causal_mask, is_causal=True)
        x = x + h
        grid = x.view(classes, -1, *x.shape[1:])  # [C, S, L, D]: across the S sentences
        across = axis_self_attention(layer.self_attn, layer.layer_norm1(grid), 1, use_kernels)
        x = x + self.adapter(across).flatten(0, 1)
        return x + layer.mlp(layer.layer_norm2(x))


def cosine_matrix(x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarity of every row of x [.., n, D] with every row of y [.., m, D]."""
    return F.normalize(x.float(), dim=-1) @ F.normalize(y.float(), dim=-1).transpose(-1, -2)


def frame_transitions(queries: Tensor, norm: nn.Module) -> Tensor:
    """The seed's CrossAttention from each frame to the next, across the query videos:
    a_f = norm(softmax(Z_f Z_{f+1}^T / sqrt(D)) Z_{f+1}) + Z_{f+1} for Z_f = queries[:, f].
    queries [N, T, D] -> [T - 1, N, D]."""
    frames = queries.transpose(0, 1)  # [T, N, D]
    now, after = frames[:-1], frames[1:]
    probs = torch.softmax(now @ after.transpose(-1, -2) / math.sqrt(queries.shape[-1]), dim=-1)
    return norm(probs @ after) + after
