"""Reference of global-local pooling (DESIGN.md op 2).

Two specifications that must agree: `pool_view` computes one view of one video with PyTorch's
own pooling functions (what the seeds call), and `pool` executes the plan rows the op layer
lowers views to (csrc/include/vidcore/pool.h) with gathers and segment reductions; it is the
op's default implementation and the oracle of the C++/CUDA kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pool", "pool_backward", "pool_view"]


def _cells(plan: Tensor, frame_table: Tensor, height: int, width: int):
    """For every cell of every plan row: its token j and its input row; and the box sizes."""
    fb, fe, r0, r1, c0, c1, _ = plan.unbind(1)
    rows, cols = r1 - r0, c1 - c0
    sizes = (fe - fb) * rows * cols
    token = torch.repeat_interleave(torch.arange(plan.shape[0], device=plan.device), sizes)
    k = torch.arange(token.shape[0], device=plan.device) - (sizes.cumsum(0) - sizes)[token]
    area = (rows * cols)[token]
    frame = frame_table[fb[token] + k // area]
    row = r0[token] + (k // cols[token]) % rows[token]
    col = c0[token] + k % cols[token]
    return token, (frame * height + row) * width + col, sizes


def pool(x: Tensor, plan: Tensor, frame_table: Tensor) -> Tensor:
    """x [frames, H, W, D] -> [L, D]: token j = mean or max (plan[j, 6] = 0 / 1) over its box,
    accumulated in fp32 (fp64 for fp64)."""
    _, height, width, channels = x.shape
    token, cell_rows, sizes = _cells(plan, frame_table, height, width)
    acc = torch.promote_types(x.dtype, torch.float32)
    values = x.reshape(-1, channels)[cell_rows].to(acc)
    index = token[:, None].expand(-1, channels)
    shape = (plan.shape[0], channels)
    mean = torch.zeros(shape, dtype=acc, device=x.device).index_add_(0, token, values)
    mean = mean / sizes.clamp(min=1)[:, None]
    peak = torch.full(shape, -torch.inf, dtype=acc, device=x.device)
    peak = peak.scatter_reduce_(0, index, values, "amax")
    return torch.where(plan[:, 6:7] == 1, peak, mean).to(x.dtype)


def pool_backward(grad: Tensor, x: Tensor, plan: Tensor, frame_table: Tensor) -> Tensor:
    """Gradient of `pool` w.r.t. x: a mean spreads g / |box| over its box; a max sends g to the
    first maximal cell in scan order (frames, rows, columns), as torch's max pooling does."""
    _, height, width, channels = x.shape
    token, cell_rows, sizes = _cells(plan, frame_table, height, width)
    acc = torch.promote_types(x.dtype, torch.float32)
    g = grad.to(acc)
    is_max = plan[:, 6] == 1
    flat = torch.zeros(x.reshape(-1, channels).shape, dtype=acc, device=x.device)
    spread = torch.where(is_max[:, None], 0.0, g / sizes.clamp(min=1)[:, None])
    flat.index_add_(0, cell_rows, spread[token])
    values = x.reshape(-1, channels)[cell_rows].to(acc)
    peak = pool(x.to(acc), plan, frame_table)
    order = torch.arange(token.shape[0], device=x.device)[:, None].expand(-1, channels)
    candidates = torch.where(values == peak[token], order, token.shape[0])
    first = torch.full((plan.shape[0], channels), token.shape[0], device=x.device)
    first = first.scatter_reduce_(0, token[:, None].expand(-1, channels), candidates, "amin")
    chosen = is_max[:, None] & (first < token.shape[0])
    tokens, dims = chosen.nonzero(as_tuple=True)
    flat.index_put_((cell_rows[first[tokens, dims]], dims), g[tokens, dims], accumulate=True)
    return flat.view(x.shape).to(x.dtype)


def pool_view(video: Tensor, frames: list[int], temporal: object, spatial: object,
              mode: str) -> Tensor:
    """One view of one video [T, H, W, D] with PyTorch's pooling functions -> [tokens, D].
    Same arguments as vidcore.ops.View, with frames already selected (host ints)."""
    clip = video[frames].float()  # [n, H, W, D]
    if temporal == "mean":
        clip = (clip.amax if mode == "max" else clip.mean)(0, keepdim=True)
    elif isinstance(temporal, int):
        groups = torch.split(clip, temporal)
        clip = torch.stack([(g.amax if mode == "max" else g.mean)(0) for g in groups])
    grid = clip.permute(0, 3, 1, 2)  # [n, D, H, W] for F.*pool2d
    if spatial == "mean":
        grid = (grid.amax if mode == "max" else grid.mean)((2, 3), keepdim=True)
    elif hasattr(spatial, "h"):  # vidcore.ops.Adaptive(h, w)
        fn = F.adaptive_max_pool2d if mode == "max" else F.adaptive_avg_pool2d
        grid = fn(grid, (spatial.h, spatial.w))
    elif spatial is not None:
        fn = F.max_pool2d if mode == "max" else F.avg_pool2d
        grid = fn(grid, spatial, stride=spatial, ceil_mode=True)
    return grid.permute(0, 2, 3, 1).reshape(-1, video.shape[-1]).to(video.dtype)
