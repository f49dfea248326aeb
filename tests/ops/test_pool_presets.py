"""The presets against plain-torch transcriptions of the seeds' code (../shared/notes/seeds.md
1a, 4a, 5a, 5b) and against transformers' LlavaNextVideoPooler."""
import pytest
import torch
import torch.nn as nn

from vidcore.ops import (
    llava_next_video,
    minigpt4_video,
    slowfast,
    st_llm_global_local,
    video_chatgpt,
)
from vidcore.testing import assert_close, assert_exact


@pytest.mark.parametrize("frames, num_local", [(64, 16), (16, 16), (37, 16), (8, 3)])
def test_st_llm_global_local(frames, num_local):
    v = torch.randn(2, frames, 32, 24)  # [B, T, 32 query tokens, D]
    local, global_ = st_llm_global_local(v, num_local)
    seg = frames / num_local  # stllm/models/st_llm.py, 'residual' mode
    idx = [int(seg / 2 + round(seg * i)) for i in range(num_local)]
    assert_exact(local, v[:, idx].reshape(2, num_local * 32, 24))
    assert_close(global_, v.mean(1))


def seed_slowfast(features: torch.Tensor, num_slowpath: int = 10, fast=(4, 4)) -> torch.Tensor:
    """slowfast_llava/llava/model/llava_arch.py prepare_slowfast with temporal_aggregation
    'slowfast-slow_{n}frms_spatial_1d_max_pool-fast_4x4' on one video's [T, N, D] features."""
    t, n, d = features.shape
    slowpath_idx = torch.linspace(0, t, num_slowpath + 1)
    slowpath_idx = slowpath_idx.to(torch.int32).tolist()
    slowpath_idx.pop()
    slow = nn.MaxPool1d(kernel_size=2, stride=2)(features[slowpath_idx].transpose(1, 2))
    slow = slow.transpose(1, 2).reshape(-1, d)
    n0 = n1 = int(n ** 0.5)
    grid = features.permute(2, 0, 1).reshape(d, t, n0, n1)  # 't (n0 n1) d -> d t n0 n1'
    fast = nn.AdaptiveAvgPool2d(fast)(grid).permute(1, 2, 3, 0).reshape(-1, d)
    return torch.cat([slow, fast])


@pytest.mark.parametrize("frames, slow", [(50, 10), (10, 10), (7, 10), (2, 14), (23, 33)])
def test_slowfast(frames, slow):
    feats = torch.randn(2, frames, 24, 24, 16)
    tokens = slowfast(feats, slow_frames=slow)
    expected = torch.stack([seed_slowfast(f.flatten(1, 2), slow) for f in feats])
    assert tokens.shape == expected.shape == (2, slow * 288 + frames * 16, 16)
    assert_exact(tokens[:, :slow * 288], expected[:, :slow * 288])  # max pooling is exact
    assert_close(tokens, expected)


def test_slowfast_picks_the_seeds_slow_frames_for_every_length():
    # The seed computes its frame indices in float32 (torch.linspace); for some n >= 14 they
    # are not floor(i * T / n) nor NumPy's. Frame t holds the value t, so the slow tokens name
    # the frames the preset read.
    differs = 0
    for t in range(1, 41):
        x = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1, 1).expand(1, t, 1, 2, 1)
        for n in range(1, 41):
            picked = slowfast(x.contiguous(), slow_frames=n, fast_grid=(1, 1))[0, :n, 0]
            seed = torch.linspace(0, t, n + 1).to(torch.int32).tolist()[:-1]
            assert picked.tolist() == seed, (t, n)
            differs += seed != [int(i * (t / n)) for i in range(n)]
    assert differs > 0  # the range holds pairs where a float64 rule would pick other frames


def test_video_chatgpt():
    features = torch.randn(3, 100, 16, 16, 8)  # CLIP-L/14 penultimate layer, CLS dropped
    tokens = video_chatgpt(features)
    flat = features.flatten(2, 3)  # [B, T, 256, D]
    expected = torch.cat([flat.mean(2), flat.mean(1)], 1)  # temporal tokens, then spatial
    assert tokens.shape == (3, 356, 8)
    assert_close(tokens, expected)


def test_llava_next_video_matches_transformers_pooler():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llava_next_video.modeling_llava_next_video import (
        LlavaNextVideoPooler,
    )

    vision = transformers.CLIPVisionConfig(hidden_size=16, num_attention_heads=2, image_size=48,
                                           patch_size=2)
    config = transformers.LlavaNextVideoConfig(vision_config=vision, spatial_pool_mode="average",
                                               spatial_pool_stride=2)
    frames = torch.randn(2, 3, 24, 24, 16)
    expected = LlavaNextVideoPooler(config)(frames.flatten(0, 1).flatten(1, 2))
    assert_close(llava_next_video(frames), expected.reshape(2, 3 * 144, 16))
    with pytest.raises(ValueError, match=r"llava_next_video: grid \(5, 5\) must be divisible"):
        llava_next_video(torch.randn(1, 1, 5, 5, 4))


def test_minigpt4_video_concatenates_horizontal_strips():
    f = torch.randn(6, 256, 1408)  # mini_gpt4_llama_v2.py: f.view(B*F, 64, 5632)
    assert_exact(minigpt4_video(f), f.view(6, 64, 5632))


@pytest.mark.parametrize("call, message", [
    (lambda x: slowfast(x, slow_frames=0), "slowfast: slow_frames must be >= 1"),
    (lambda x: slowfast(x, slow_pool=(1, 0)), "slowfast: slow_pool must be >= 1"),
    (lambda x: slowfast(x, fast_grid=4), "slowfast: fast_grid must be a pair of ints"),
    (lambda x: llava_next_video(x, stride=0), "llava_next_video: stride must be >= 1"),
    (lambda x: llava_next_video(x, stride=2.0), "llava_next_video: stride must be an int"),
    (lambda x: st_llm_global_local(x, 0), "st_llm_global_local: num_local must be >= 1"),
])
def test_preset_arguments_are_checked(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(torch.randn(1, 4, 4, 4, 2))


def test_presets_are_differentiable():
    x = torch.randn(1, 8, 4, 4, 3, requires_grad=True)
    (slowfast(x, slow_frames=4, fast_grid=(2, 2)).sum() + video_chatgpt(x).sum()
     + llava_next_video(x).sum() + sum(t.sum() for t in st_llm_global_local(x, 4))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
