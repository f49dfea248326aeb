"""Profiling with real model code: a transformers vision model from a local config (vidcore's
attention against SDPA on the same weights) and the LLM prefill of a compact vidcore model saved
with save_pretrained."""
from __future__ import annotations

import pytest
import torch

import vidcore
from vidcore.testing import MODEL_TOLERANCES

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A 2-layer CLIP vision config (no weights: random ones), 32 px frames of 4 x 4 patches."""
    path = tmp_path_factory.mktemp("clip")
    transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=32,
                                  patch_size=8).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def minigpt4_dir(tmp_path_factory):
    from vidcore.models.minigpt4_video import MiniGPT4VideoForVideoQA, tiny_minigpt4_video_config

    path = tmp_path_factory.mktemp("minigpt4_video")
    torch.manual_seed(0)
    config = tiny_minigpt4_video_config(vocab_size=64, video_token_index=1, frame_size=16,
                                        width=32)
    MiniGPT4VideoForVideoQA(config).save_pretrained(path)
    return path


def _rows(results: dict, stage: str) -> dict[str, dict]:
    return {r["provider"]: r for r in results["rows"] if r["stage"] == stage}


def test_vision_model_from_a_config_and_the_prefill_of_a_saved_model(clip_dir, minigpt4_dir,
                                                                      tiny):
    options = tiny | dict(grid=(16, 16), dim=1024)  # ignored: the vision model sets both
    results = vidcore.profile(synthetic=4, vision=str(clip_dir), model=str(minigpt4_dir),
                              preset="minigpt4_video", **options)
    assert results["vision"] == {"model": "CLIPVisionModel (random weights (config only))",
                                 "frame_size": 32, "grid": [4, 4], "dim": 32}
    assert results["prefill_model"] == f"LlamaForCausalLM from {minigpt4_dir.name}"
    vision = _rows(results, "vision")
    assert vision.keys() == {"vidcore", "reference"} and vision["reference"]["kernel"] == "sdpa"
    assert vision["vidcore"]["max_abs_diff"] < 1e-4
    prefill = _rows(results, "prefill")
    sequence = results["points"][0]["tokens"]["sequence"]  # 4 frames x 4 merged + 8 text, half
    assert sequence == 4 * 4 // 2 + 8
    for row in prefill.values():
        assert row["status"] == "ok" and row["ms"] > 0 and row["tokens_in"] == sequence
    assert prefill["vidcore"]["max_abs_diff"] <= MODEL_TOLERANCES[torch.float32]["atol"]


def test_a_plain_causal_lm_directory_works_too(tmp_path, tiny):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    results = vidcore.profile(synthetic=4, model=str(tmp_path), **tiny)
    assert _rows(results, "prefill").keys() == {"vidcore", "reference"}
