"""The seeds' token layouts as vidcore.ops.pool views (one kernel launch per call). Each returns
exactly the tokens the seed's code builds (tests/ops/test_pool_presets.py transcribes it)."""
from __future__ import annotations

from torch import Tensor

from vidcore.ops._validation import check_int, check_tensor
from vidcore.ops.pool import merge_tokens, pool
from vidcore.ops.pool_views import Adaptive, Linspace, SegmentCentres, View

__all__ = ["st_llm_global_local", "slowfast", "video_chatgpt", "llava_next_video",
           "minigpt4_video"]


def _grid(x: Tensor) -> Tensor:
    """[B, T, N, D] token lists are 1 x N grids; [B, T, H, W, D] stays."""
    return x.unsqueeze(2) if x.dim() == 4 else x


def st_llm_global_local(x: Tensor, num_local: int = 16, *, backend: str = "auto"
                        ) -> tuple[Tensor, Tensor]:
    """ST-LLM's global-local input ('residual' mode): the frames at segment centres
    int(seg / 2 + round(seg * i)), seg = T / num_local, and the mean over all frames.

    Args: x [B, T, N, D] (N query tokens per frame) or [B, T, H, W, D].
    Returns: (local [B, num_local * N, D], global [B, N, D]); ST-LLM adds MLP(global) to each
    local frame. Videos so short that a centre index reaches T raise ValueError (the seed would
    index out of range)."""
    check_tensor("st_llm_global_local", "x", x, dims=(4, 5))
    check_int("st_llm_global_local", "num_local", num_local, minimum=1)
    grid = _grid(x)
    tokens = pool(grid, [View(frames=SegmentCentres(num_local)), View(temporal="mean")],
                  backend=backend).tokens
    per_frame = grid.shape[2] * grid.shape[3]
    return tokens[:, : num_local * per_frame], tokens[:, num_local * per_frame:]


def slowfast(x: Tensor, slow_frames: int = 10, slow_pool: tuple[int, int] = (1, 2),
             fast_grid: tuple[int, int] = (4, 4), *, backend: str = "auto") -> Tensor:
    """SlowFast-LLaVA: slow = `slow_frames` frames picked by the seed's own rule,
    `torch.linspace(0, T, n + 1).to(torch.int32)[:-1]` (Linspace(n): float32, so for some
    n >= 14 not Uniform(n)'s frames), with max-pooled (1, 2) windows (MaxPool1d(2) over raster
    tokens); fast = every frame adaptive-avg-pooled to `fast_grid`.
    x [B, T, H, W, D] -> [B, slow + fast tokens, D]. For odd W the seed's MaxPool1d pairs tokens
    across rows; here border windows shrink instead (the two agree for even W, e.g. the seed's
    24 x 24)."""
    check_int("slowfast", "slow_frames", slow_frames, minimum=1)
    for name, pair in (("slow_pool", slow_pool), ("fast_grid", fast_grid)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"slowfast: {name} must be a pair of ints, got {pair!r}")
        for size in pair:
            check_int("slowfast", name, size, minimum=1)
    views = [View(frames=Linspace(slow_frames), spatial=tuple(slow_pool), mode="max"),
             View(spatial=Adaptive(*fast_grid))]
    return pool(x, views, backend=backend).tokens


def video_chatgpt(x: Tensor, *, backend: str = "auto") -> Tensor:
    """Video-ChatGPT: T per-frame spatial means, then H * W per-location temporal means.
    x [B, T, H, W, D] -> [B, T + H * W, D]. The seed also zero-pads the T frame tokens to 100
    rows when T < 100; pad the result yourself if a model expects that fixed length."""
    return pool(x, [View(spatial="mean"), View(temporal="mean")], backend=backend).tokens


def llava_next_video(x: Tensor, stride: int = 2, *, backend: str = "auto") -> Tensor:
    """LLaVA-NeXT-Video's average pooling (transformers' LlavaNextVideoPooler, mode 'average'):
    stride x stride windows of every frame. x [B, T, H, W, D] -> [B, T * H/s * W/s, D]. Its
    AvgPool2d drops odd borders, so H and W must be multiples of `stride` here."""
    check_tensor("llava_next_video", "x", x, dims=(5,))
    check_int("llava_next_video", "stride", stride, minimum=1)
    if x.shape[-3] % stride or x.shape[-2] % stride:
        raise ValueError(f"llava_next_video: grid {tuple(x.shape[-3:-1])} must be divisible by "
                         f"stride {stride} (LLaVA-NeXT-Video's pooling drops odd borders)")
    return pool(x, [View(spatial=(stride, stride))], backend=backend).tokens


def minigpt4_video(x: Tensor) -> Tensor:
    """MiniGPT4-Video: 4 consecutive raster tokens concatenated along channels,
    [..., N, D] -> [..., N / 4, 4 * D]."""
    return merge_tokens(x, 4)
