"""Reference of global-local pooling (DESIGN.md op 2).

Two specifications that must agree: `pool_view` computes one view of one video with PyTorch's
own pooling functions (what the seeds call), and `pool` executes the plan rows the op layer
lowers views to (csrc/include/vidcore/pool.h) with gathers and segment reductions; it is the
op's default implementation and the oracle of the C++/CUDA kernels. Max pooling follows torch's
rule everywhere (values and gradients): the last NaN of a box if it holds one, else its first
maximum in scan order (frames, rows, columns).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pool", "pool_backward", "pool_view", "check_plan"]

_BOX_LIMIT = 2**31  # cells per box: the CUDA kernels index a box with 32-bit integers


def check_plan(op: str, x: Tensor, plan: Tensor, frame_table: Tensor) -> None:
    """The plan contract of csrc/include/vidcore/pool.h, for plans vidcore did not lower itself
    (direct torch.ops.vidcore calls): RuntimeError naming the first bad row on CPU, a device-side
    assert (no host sync) on other devices."""
    if x.dim() != 4:
        raise RuntimeError(f"{op}: x must be [frames, H, W, D], got shape {tuple(x.shape)}")
    for name, t, dims in (("plan", plan, 2), ("frame_table", frame_table, 1)):
        if t.dtype != torch.int64 or t.dim() != dims or t.device != x.device:
            raise RuntimeError(f"{op}: {name} must be a {dims}-D int64 tensor on {x.device}, got "
                               f"{t.dtype} {tuple(t.shape)} on {t.device}")
    if plan.shape[1] != 7:
        raise RuntimeError(f"{op}: plan must have 7 columns, got shape {tuple(plan.shape)}")
    frames, height, width = x.shape[:3]
    fb, fe, r0, r1, c0, c1, mode = plan.unbind(1)
    same = (fb[1:] == fb[:-1]) & (fe[1:] == fe[:-1])
    first = torch.ones(min(len(plan), 1), dtype=torch.bool, device=plan.device)
    rules = [
        ("frame slice [fb, fe) must satisfy 0 <= fb < fe <= len(frame_table) = "
         f"{len(frame_table)}", (fb >= 0) & (fb < fe) & (fe <= len(frame_table))),
        (f"rows [r0, r1) must satisfy 0 <= r0 < r1 <= H = {height}",
         (r0 >= 0) & (r0 < r1) & (r1 <= height)),
        (f"columns [c0, c1) must satisfy 0 <= c0 < c1 <= W = {width}",
         (c0 >= 0) & (c0 < c1) & (c1 <= width)),
        ("mode must be 0 (avg) or 1 (max)", (mode == 0) | (mode == 1)),
        (f"a box must hold fewer than {_BOX_LIMIT} cells",
         (fe - fb).clamp(0, _BOX_LIMIT) * (r1 - r0).clamp(0, _BOX_LIMIT)
         * (c1 - c0).clamp(0, _BOX_LIMIT) < _BOX_LIMIT),
        ("rows must come in frame-slice order: a slice equal to the previous row's or starting at "
         "or after its end", torch.cat([first, same | (fb[1:] >= fe[:-1])])),
        ("windows sharing a frame slice must not go back: r0 and r1 non-decreasing",
         torch.cat([first, ~same | ((r0[1:] >= r0[:-1]) & (r1[1:] >= r1[:-1]))])),
    ]
    table_ok = (frame_table >= 0) & (frame_table < frames)
    if x.device.type != "cpu":
        ok = table_ok.all() & torch.stack([rule.all() for _, rule in rules]).all()
        torch._assert_async(ok, f"{op}: plan or frame_table breaks the plan contract")
        return
    for what, rule in rules:
        if not rule.all():
            j = int((~rule).nonzero()[0])
            raise RuntimeError(f"{op}: plan[{j}] = {plan[j].tolist()}: {what}")
    if not table_ok.all():
        s = int((~table_ok).nonzero()[0])
        raise RuntimeError(f"{op}: frame_table[{s}] = {int(frame_table[s])} is outside x's "
                           f"{frames} frames")


def _cells(plan: Tensor, frame_table: Tensor, height: int, width: int):
    """For every cell of every plan row in scan order: its token j and its input row; and the
    box sizes."""
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


def _chosen(values: Tensor, token: Tensor, num_tokens: int) -> Tensor:
    """[L, D]: per token and channel, the position (in the cell list) of the cell torch's max
    pooling picks: the last NaN of the box if it holds one, else its first maximum."""
    cells, channels = values.shape
    like = dict(dtype=torch.int64, device=values.device)
    index = token[:, None].expand(-1, channels)
    position = torch.arange(cells, **like)[:, None].expand(-1, channels)
    nan = values.isnan()
    last_nan = torch.full((num_tokens, channels), -1, **like).scatter_reduce_(
        0, index, torch.where(nan, position, -1), "amax")
    clean = values.masked_fill(nan, -torch.inf)
    peak = torch.full((num_tokens, channels), -torch.inf, dtype=values.dtype,
                      device=values.device).scatter_reduce_(0, index, clean, "amax")
    first_max = torch.full((num_tokens, channels), cells, **like).scatter_reduce_(
        0, index, torch.where(clean == peak[token], position, cells), "amin")
    return torch.where(last_nan >= 0, last_nan, first_max)


def pool(x: Tensor, plan: Tensor, frame_table: Tensor, *, validate: bool = True) -> Tensor:
    """x [frames, H, W, D] -> [L, D]: token j = mean (plan[j, 6] = 0) or max (1) over its box,
    accumulated in fp32 (fp64 for fp64). Differentiable by autograd with the same max rule.
    `validate=False` skips check_plan for plans vidcore lowered itself."""
    if validate:
        check_plan("pool", x, plan, frame_table)
    frames, height, width, channels = x.shape
    token, cell_rows, sizes = _cells(plan, frame_table, height, width)
    acc = torch.promote_types(x.dtype, torch.float32)
    values = x.reshape(frames * height * width, channels)[cell_rows].to(acc)
    shape = (plan.shape[0], channels)
    mean = torch.zeros(shape, dtype=acc, device=x.device).index_add_(0, token, values)
    mean = mean / sizes.clamp(min=1)[:, None]
    peak = values.gather(0, _chosen(values.detach(), token, plan.shape[0]))
    return torch.where(plan[:, 6:7] == 1, peak, mean).to(x.dtype)


def pool_backward(grad: Tensor, x: Tensor, plan: Tensor, frame_table: Tensor, *,
                  validate: bool = True) -> Tensor:
    """Gradient of `pool` w.r.t. x: a mean spreads g / |box| over its box; a max sends g to the
    cell the forward picked (last NaN, else first maximum), as torch's max pooling does."""
    if validate:
        check_plan("pool_backward", x, plan, frame_table)
        if grad.shape != (plan.shape[0], x.shape[-1]) or grad.dtype != x.dtype:
            raise RuntimeError(f"pool_backward: grad must be {x.dtype} "
                               f"{(plan.shape[0], x.shape[-1])}, got {grad.dtype} "
                               f"{tuple(grad.shape)}")
    frames, height, width, channels = x.shape
    token, cell_rows, sizes = _cells(plan, frame_table, height, width)
    acc = torch.promote_types(x.dtype, torch.float32)
    g = grad.to(acc)
    is_max = (plan[:, 6] == 1)[:, None]
    flat = torch.zeros(frames * height * width, channels, dtype=acc, device=x.device)
    spread = torch.where(is_max, 0.0, g / sizes.clamp(min=1)[:, None])
    flat.index_add_(0, cell_rows, spread[token])
    values = x.reshape(frames * height * width, channels)[cell_rows].to(acc)
    chosen = cell_rows[_chosen(values, token, plan.shape[0])]
    flat.scatter_add_(0, chosen, torch.where(is_max, g, 0.0))
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
