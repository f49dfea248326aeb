"""vidcore.ops.pool against oracles that share no code with it: the lowering
(vidcore/ops/pool_views.py) feeds the CPU twin and the reference alike, so only an independent
definition can see a lowering bug. Two oracles, both in float64: PyTorch's own pooling functions
(F.avg_pool3d, F.max_pool3d, F.adaptive_*_pool3d, whose autograd is the gradient rule we
promise), and the definition written out as loops (for what no torch function computes).
Frame selections are transcribed from the seeds, not taken from vidcore."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidcore.ops import (
    Adaptive,
    Linspace,
    SegmentCentres,
    Stride,
    Uniform,
    View,
    merge_tokens,
    pool,
)
from vidcore.ops.pool_views import select_frames
from vidcore.testing import assert_close, assert_exact


def seed_frames(frames, t: int) -> list[int]:
    """Frame selections as the seeds' code (or the definition) writes them."""
    if frames == "all":
        return list(range(t))
    if isinstance(frames, Uniform):  # NumPy's linspace, truncated
        return np.linspace(0, t, frames.n + 1).astype(int)[:-1].tolist() if t else []
    if isinstance(frames, Linspace):  # SlowFast-LLaVA llava_arch.py prepare_slowfast
        return torch.linspace(0, t, frames.n + 1).to(torch.int32).tolist()[:-1] if t else []
    if isinstance(frames, SegmentCentres):  # ST-LLM st_llm.py get_residual_index
        seg = t / frames.n
        return [int(seg / 2 + round(seg * i)) for i in range(frames.n)] if t else []
    if isinstance(frames, Stride):
        return list(range(t))[frames.start::frames.step]
    return list(frames)


def torch_pool(video: torch.Tensor, frames: list[int], view: View) -> torch.Tensor:
    """One view of one video [T, H, W, D] with torch's 3-D pooling over (frames, H, W)."""
    clip = video[frames].permute(3, 0, 1, 2)[None]  # [1, D, n, H, W]
    n, height, width = clip.shape[2:]
    kt = 1 if view.temporal is None else n if view.temporal == "mean" else view.temporal
    if isinstance(view.spatial, Adaptive):
        assert n % kt == 0, "torch's adaptive windows differ from kt groups here: use loop_pool"
        fn = F.adaptive_max_pool3d if view.mode == "max" else F.adaptive_avg_pool3d
        out = fn(clip, (n // kt, view.spatial.h, view.spatial.w))
    else:
        spatial = {None: (1, 1), "mean": (height, width)}.get(view.spatial, view.spatial)
        kernel = (min(kt, n), *spatial)
        fn = F.max_pool3d if view.mode == "max" else F.avg_pool3d
        out = fn(clip, kernel, stride=kernel, ceil_mode=True)
    return out[0].permute(1, 2, 3, 0).reshape(-1, video.shape[-1])


def intervals(spatial, size: int, axis: int) -> list[tuple[int, int]]:
    if spatial is None:
        return [(i, i + 1) for i in range(size)]
    if spatial == "mean":
        return [(0, size)]
    if isinstance(spatial, Adaptive):  # torch's adaptive windows, from its documentation
        out = (spatial.h, spatial.w)[axis]
        return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]
    k = spatial[axis]
    return [(i, min(i + k, size)) for i in range(0, size, k)]


def loop_boxes(video_shape, frames: list[int], view: View) -> list[list[tuple[int, int, int]]]:
    """Every output token's cells (frame, row, col) in scan order, from the definition."""
    _, height, width, _ = video_shape
    kt = 1 if view.temporal is None else max(len(frames), 1) if view.temporal == "mean" \
        else view.temporal
    groups = [frames[i:i + kt] for i in range(0, len(frames), kt)]
    return [[(f, r, c) for f in group for r in range(*rows) for c in range(*cols)]
            for group in groups for rows in intervals(view.spatial, height, 0)
            for cols in intervals(view.spatial, width, 1)]


def loop_pick(values: list[float]) -> int:
    """torch's max-pool pick: the last NaN, else the first maximum."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best] or math.isnan(v):
            best = i
    return best


def loop_pool(video: torch.Tensor, frames: list[int], view: View, grad: torch.Tensor | None = None):
    """Tokens [L, D] of one view by loops in float64; with `grad` [L, D], the gradient instead."""
    boxes = loop_boxes(video.shape, frames, view)
    out = torch.zeros(len(boxes), video.shape[-1], dtype=torch.float64)
    grad_x = torch.zeros(video.shape, dtype=torch.float64)
    for j, box in enumerate(boxes):
        for d in range(video.shape[-1]):
            values = [float(video[f, r, c, d]) for f, r, c in box]
            if view.mode == "max":
                f, r, c = box[loop_pick(values)]
                out[j, d] = values[loop_pick(values)]
                if grad is not None:
                    grad_x[f, r, c, d] += grad[j, d]
            else:
                out[j, d] = sum(values) / len(values)
                for f, r, c in box:
                    if grad is not None:
                        grad_x[f, r, c, d] += grad[j, d] / len(values)
    return out if grad is None else grad_x


def tie_heavy(shape, nans: int = 0) -> torch.Tensor:
    """Small integers (many tied maxima), and some NaNs."""
    x = torch.randint(0, 3, shape).double()
    flat = x.view(-1)
    flat[torch.randperm(flat.numel())[:nans]] = float("nan")
    return x


# (view, oracle): every view kind of DESIGN.md op 2, odd borders and odd frame counts included.
CASES = [
    pytest.param(View(), torch_pool, id="copy"),
    pytest.param(View(frames=Uniform(4), spatial=(2, 3), mode="max"), torch_pool, id="uniform"),
    pytest.param(View(frames=Linspace(5), spatial=(1, 2), mode="max"), torch_pool, id="linspace"),
    pytest.param(View(frames=SegmentCentres(3), spatial="mean"), torch_pool, id="centres"),
    pytest.param(View(frames=(5, 0, 0, 3), spatial=(4, 4)), torch_pool, id="explicit-repeats"),
    pytest.param(View(frames=(6, 2, 2), spatial=(2, 2), mode="max"), torch_pool,
                 id="explicit-max-repeats"),
    pytest.param(View(frames=Stride(2, 1), temporal=2, spatial=(3, 2)), torch_pool, id="stride"),
    pytest.param(View(temporal=3, spatial=(2, 2), mode="max"), torch_pool, id="kt-max-short-last"),
    pytest.param(View(temporal=4, spatial="mean"), torch_pool, id="kt-avg-short-last"),
    pytest.param(View(temporal="mean"), torch_pool, id="temporal-mean"),
    pytest.param(View(temporal="mean", mode="max"), torch_pool, id="temporal-max"),
    pytest.param(View(spatial=Adaptive(2, 3)), torch_pool, id="adaptive"),
    pytest.param(View(spatial=Adaptive(4, 9), mode="max"), torch_pool, id="adaptive-max-upsample"),
    pytest.param(View(frames=Uniform(6), temporal=3, spatial=Adaptive(3, 2), mode="max"),
                 torch_pool, id="adaptive-kt"),
    pytest.param(View(temporal=4, spatial=Adaptive(3, 4), mode="max"), loop_pool,
                 id="adaptive-kt-short-last"),
    pytest.param(View(temporal=2, spatial=(2, 4)), loop_pool, id="odd-borders-loops"),
]
SHAPE = (7, 5, 7, 3)  # T = 7 frames of a 5 x 7 grid, D = 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("view, oracle", CASES)
def test_forward_matches_oracle(view, oracle, dtype):
    video = tie_heavy(SHAPE, nans=4) if view.mode == "max" else torch.randn(SHAPE).double()
    frames = seed_frames(view.frames, SHAPE[0])
    expected = oracle(video, frames, view)
    got = pool(video.to(dtype)[None], [view]).tokens[0]
    if view.mode == "max":
        assert_exact(got, expected.to(dtype))  # a max is one of the inputs, NaNs where torch's
    else:
        assert_close(got, expected.to(dtype))


@pytest.mark.parametrize("view, oracle", CASES)
def test_gradient_matches_oracle(view, oracle):
    video = tie_heavy(SHAPE, nans=4) if view.mode == "max" else torch.randn(SHAPE).double()
    frames = seed_frames(view.frames, SHAPE[0])
    leaf = video.clone().requires_grad_()
    tokens = pool(leaf[None], [view]).tokens[0]
    grad = torch.randn_like(tokens)
    tokens.backward(grad)
    if oracle is torch_pool:
        leaf_oracle = video.clone().requires_grad_()
        torch_pool(leaf_oracle, frames, view).backward(grad)
        expected = leaf_oracle.grad
    else:
        expected = loop_pool(video, frames, view, grad)
    assert_close(leaf.grad, expected)


def test_the_two_oracles_agree():
    # The loop oracle stands in for torch's where torch has no function; here both apply.
    video = tie_heavy(SHAPE, nans=3)
    for view in (View(temporal=3, spatial=(2, 3), mode="max"), View(spatial=Adaptive(3, 2)),
                 View(frames=(4, 1, 1), temporal="mean", spatial=(2, 2))):
        frames = seed_frames(view.frames, SHAPE[0])
        assert_exact(loop_pool(video, frames, view), torch_pool(video, frames, view))


def test_views_batched_and_ragged_match_the_oracle_per_video():
    # Several views, videos of different lengths (one empty): tokens come video by video, view
    # by view, and the metadata names each token's frame, grid cell and view.
    views = [View(frames=Uniform(3), spatial=(2, 3), mode="max"), View(temporal="mean"),
             View(frames=Stride(3), spatial=Adaptive(2, 2))]
    lengths = [7, 0, 4]
    x = torch.randn(sum(lengths), 5, 7, 3).double()
    pooled = pool(x, views, num_frames=lengths)
    pieces, metadata, start = [], [], 0
    for t in lengths:
        for v, view in enumerate(views):
            frames = seed_frames(view.frames, t)
            pieces.append(loop_pool(x[start:start + t], frames, view))
            grid = len(intervals(view.spatial, 5, 0)), len(intervals(view.spatial, 7, 1))
            for i, box in enumerate(loop_boxes((t, 5, 7, 3), frames, view)):
                cell = i % (grid[0] * grid[1])
                metadata.append((box[0][0], cell // grid[1], cell % grid[1], v))
        start += t
    assert_close(pooled.tokens, torch.cat(pieces))
    counts = [sum(len(loop_boxes((t, 5, 7, 3), seed_frames(v.frames, t), v)) for v in views)
              for t in lengths]
    assert pooled.cu_seqlens.tolist() == [0, *np.cumsum(counts).tolist()]
    got = torch.stack([pooled.frame_index, pooled.row, pooled.col, pooled.view], 1)
    assert got.tolist() == [list(m) for m in metadata]


@pytest.mark.parametrize("t", range(0, 40))
def test_frame_selections_are_the_seeds(t):
    for n in (1, 3, 4, 10, 14, 16, 26, 33):
        for frames in (Uniform(n), Linspace(n), Stride(n), Stride(n, 2)):
            assert select_frames(frames, t) == seed_frames(frames, t), (frames, t)
        if t:  # ST-LLM's centres (a video too short for n of them is an error elsewhere)
            assert select_frames(SegmentCentres(n), t) == seed_frames(SegmentCentres(n), t)


def test_uniform_and_linspace_differ_where_float32_rounds():
    # The reason Linspace exists (SlowFast-LLaVA computes in float32): T = 2, n = 14.
    assert select_frames(Linspace(14), 2) == [0] * 8 + [1] * 6
    assert select_frames(Uniform(14), 2) == [0] * 7 + [1] * 7


def test_merge_tokens_matches_concatenation():
    x = torch.randn(2, 3, 8, 5)
    expected = torch.stack([torch.stack([torch.cat([x[b, t, 4 * i + k] for k in range(4)])
                                         for i in range(2)]) for b in range(2) for t in range(3)])
    assert_exact(merge_tokens(x, 4), expected.view(2, 3, 2, 20))
