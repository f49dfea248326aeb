"""MiniGPT4-Video on vidcore ops: kernels vs the seed's padded path, the interleaved prompt, the
frame budget, save/load, generation, LoRA, training."""
from __future__ import annotations

import pytest
import torch

from vidcore.models import minigpt4_video
from vidcore.models.minigpt4_video import (
    MiniGPT4VideoConfig,
    MiniGPT4VideoForVideoQA,
    MiniGPT4VideoProcessor,
    frame_budget,
    frame_indices,
    tiny_minigpt4_video_config,
)


def setup(vqa, **overrides):
    return vqa.tiny_setup(minigpt4_video, MiniGPT4VideoProcessor, tiny_minigpt4_video_config,
                          **overrides)


@pytest.mark.parametrize("max_context_len", [None, 160], ids=["pad-longest", "pad-seed-fixed"])
def test_minigpt4_video_kernels_match_reference(vqa, max_context_len):
    model, processor = setup(vqa, max_context_len=max_context_len)
    model.train()
    results = vqa.run_both_paths(model, vqa.synthetic_batch(processor))
    assert results[True]["mvm_loss"] is None
    vqa.assert_paths_agree(results)


def test_minigpt4_video_frames_are_merged_in_raster_strips(vqa):
    """4 consecutive raster tokens (a 1 x 4 strip, not a 2 x 2 block) become one token."""
    model, _ = setup(vqa)
    features = torch.randn(1, 2, 17, 32)
    for use_kernels in (True, False):
        model.use_kernels = use_kernels
        tokens = model.frame_tokens(features)
        expected = model.projector(torch.cat([features[:, :, 1 + k:17:4] for k in range(4)], -1))
        torch.testing.assert_close(tokens, expected)


def test_minigpt4_video_prompt_interleaves_frames_and_subtitles(vqa):
    _, processor = setup(vqa, max_subtitle_words=3)
    text = processor.prompt("How many?", 3, ["red red", "blue blue", "green"])
    # the third subtitle is dropped: the first two reached the 3-word budget (the seed's rule)
    assert text == "[INST] <Img><video><Cap>red red<Img><video><Cap>blue blue<Img><video>\n" \
                   "How many?[/INST]"
    batch = vqa.synthetic_batch(processor, batch_size=1, num_frames=3)
    runs = batch["sequence_layout"].visual_lengths()
    assert runs.tolist() == [model_tokens(processor)] * 3


def model_tokens(processor) -> int:
    return processor.options["tokens_per_frame"]


def test_minigpt4_video_frame_budget_is_the_seeds():
    assert frame_budget(4096) == 45 and frame_budget(8192) == 90
    assert MiniGPT4VideoConfig(text_config=dict(model_type="llama", max_position_embeddings=4096)
                               ).max_frames == 45
    assert frame_indices(1000, 45) == [22 * i for i in range(45)]
    assert frame_indices(30, 45) == list(range(30))


def test_minigpt4_video_save_load_and_greedy_generate(vqa, tmp_path):
    model, processor = setup(vqa)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = MiniGPT4VideoForVideoQA.from_pretrained(tmp_path, use_kernels=False)
    loaded_processor = MiniGPT4VideoProcessor.from_pretrained(tmp_path)
    batch = vqa.synthetic_batch(loaded_processor, batch_size=2, answers=False)
    batch.pop("sequence_layout")
    model.eval()
    fast = model.generate(**batch, max_new_tokens=3, do_sample=False)
    reference = loaded.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.equal(fast, reference)


def test_minigpt4_video_rejects_wrong_frame_runs(vqa):
    model, processor = setup(vqa)
    batch = vqa.synthetic_batch(processor, num_frames=4)
    batch["pixel_values_videos"] = batch["pixel_values_videos"][:, :3]
    with pytest.raises(ValueError, match="3 runs"):
        model(**batch)


def test_minigpt4_video_lora_trains_only_adapters(vqa):
    pytest.importorskip("peft")
    model, processor = setup(vqa, lora_r=4, lora_dropout=0.0)
    trainable = {n for n, p in model.language_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    model.train()
    vqa.assert_paths_agree(vqa.run_both_paths(model, vqa.synthetic_batch(processor)))


def test_minigpt4_video_training_loop_reduces_loss(tmp_path):
    from vidcore.train import main

    out = tmp_path / "run"
    assert main(["minigpt4_video", "--steps", "12", "--batch-size", "4", "--width", "32",
                 "--frame-size", "16", "--num-frames", "4", "--eval-size", "4", "--lr", "3e-3",
                 "--out", str(out), "--no-progress"]) == 0
    import json

    losses = [loss for _, loss in json.loads((out / "history.json").read_text())["loss"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
