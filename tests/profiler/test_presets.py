"""The profiler's presets and its chunk-by-chunk pooling: the same tokens as the vidcore.ops
preset functions pooling the whole video at once, and token counts that match what pooling
returns."""
from __future__ import annotations

import pytest
import torch

import vidcore.ops as ops
from vidcore.profiler.presets import PRESETS, min_frames, preset_tokens
from vidcore.profiler.stream import StreamingPool
from vidcore.testing import TOLERANCES


def _whole_video(name: str, x: torch.Tensor) -> torch.Tensor:
    """The preset applied by vidcore.ops to one video x [T, H, W, D], as [L, D']."""
    video = x[None]
    if name == "st_llm_global_local":
        local, global_ = ops.st_llm_global_local(video.flatten(2, 3))
        return torch.cat([local, global_], 1)[0]
    if name == "minigpt4_video":
        return ops.minigpt4_video(video.flatten(2, 3))[0].flatten(0, 1)
    if name == "none":
        return x.reshape(-1, x.shape[-1])
    return getattr(ops, name)(video)[0]


def _streamed(name: str, x: torch.Tensor, chunk: int, backend: str) -> torch.Tensor:
    frames, height, width, dim = x.shape
    stream = StreamingPool(PRESETS[name], frames, height, width, dim, dtype=x.dtype,
                           device=x.device, backend=backend)
    for start in range(0, frames, chunk):
        stream.add(x[start: start + chunk])
    return stream.result()


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_streamed_pooling_equals_the_whole_video_preset(name, chunk, backend):
    x = torch.randn(23, 4, 6, 8, dtype=torch.float64)  # 23 frames: chunks never divide evenly
    expected = _whole_video(name, x)
    actual = _streamed(name, x, chunk, backend)
    # Mean views add chunk means in another order (rounding); every other token is a copy or a
    # max of the same values.
    torch.testing.assert_close(actual, expected, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("name", ["slowfast", "st_llm_global_local", "video_chatgpt"])
def test_streamed_views_without_means_are_exact(name):
    x = torch.randn(19, 4, 4, 8)
    expected, actual = _whole_video(name, x), _streamed(name, x, 5, "auto")
    per_frame = 16
    exact = {"slowfast": slice(None), "st_llm_global_local": slice(0, 16 * per_frame),
             "video_chatgpt": slice(0, 19)}[name]  # slowfast's views have no temporal mean
    assert torch.equal(actual[exact], expected[exact])


@pytest.mark.parametrize("frames", [9, 16, 33])
@pytest.mark.parametrize("grid", [(4, 4), (6, 2)])
def test_token_counts_match_what_pooling_returns(frames, grid):
    x = torch.randn(frames, *grid, 4)
    for name in PRESETS:
        counted = sum(tokens for _, tokens in preset_tokens(name, frames, *grid))
        assert counted == _whole_video(name, x).shape[0], name


def test_fewest_frames_each_preset_takes():
    assert min_frames("slowfast", 4, 4) == 1
    st_llm = min_frames("st_llm_global_local", 4, 4)
    x = torch.randn(1, st_llm, 16, 8)
    ops.st_llm_global_local(x)  # accepted at the minimum
    with pytest.raises(ValueError, match="selects frames"):
        ops.st_llm_global_local(x[:, :-1])


def test_streaming_refuses_more_frames_than_announced_and_an_early_result():
    stream = StreamingPool(PRESETS["slowfast"], 4, 4, 4, 8, dtype=torch.float32, device="cpu")
    stream.add(torch.randn(3, 4, 4, 8))
    with pytest.raises(ValueError, match="3 of 4 frames added"):
        stream.result()
    with pytest.raises(ValueError, match="5 frames given, the video has 4"):
        stream.add(torch.randn(2, 4, 4, 8))
