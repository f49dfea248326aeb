"""The presets against plain-torch transcriptions of the seeds' code (../shared/notes/seeds.md
1a, 4a, 5a, 5b) and against transformers' LlavaNextVideoPooler."""
import numpy as np
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


@pytest.mark.parametrize("frames", [50, 10, 7])
def test_slowfast(frames):
    feats = torch.randn(2, frames, 24, 24, 16)
    tokens = slowfast(feats)
    expected = []
    for f in feats:  # slowfast_llava/llava/model/llava_arch.py: slow first, then fast
        idx = np.linspace(0, frames, 11).astype(int)[:-1]
        slow = nn.MaxPool1d(2, 2)(f[idx].flatten(1, 2).transpose(1, 2)).transpose(1, 2)
        fast = nn.AdaptiveAvgPool2d((4, 4))(f.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        expected.append(torch.cat([slow.reshape(-1, 16), fast.reshape(-1, 16)]))
    expected = torch.stack(expected)
    assert tokens.shape == (2, 10 * 288 + frames * 16, 16)
    assert_exact(tokens[:, :2880], expected[:, :2880])  # max pooling is exact
    assert_close(tokens, expected)


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


def test_presets_are_differentiable():
    x = torch.randn(1, 8, 4, 4, 3, requires_grad=True)
    (slowfast(x, slow_frames=4, fast_grid=(2, 2)).sum() + video_chatgpt(x).sum()
     + llava_next_video(x).sum() + sum(t.sum() for t in st_llm_global_local(x, 4))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
