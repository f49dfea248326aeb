"""ST-LLM on vidcore ops: the kernels path against the seed's reference path, masking and MVM
semantics, save/load, generation, training."""
from __future__ import annotations

import pytest
import torch

from vidcore.models import stllm
from vidcore.models.stllm import STLLMConfig, STLLMForVideoQA, STLLMProcessor, tiny_stllm_config


def setup(vqa, **overrides):
    return vqa.tiny_setup(stllm, STLLMProcessor, tiny_stllm_config, **overrides)


@pytest.mark.parametrize("overrides", [
    dict(video_input="all"),
    dict(video_input="mean"),
    dict(video_input="residual", residual_size=2),
    dict(video_input="all", use_qformer=False, mask_ratio_per_sample=True),
], ids=["all", "mean", "residual", "no-qformer-per-sample"])
def test_stllm_kernels_match_reference_in_training(vqa, overrides):
    """Loss (CE + MVM), logits and every gradient agree with the seed's padded path while
    dynamic masking drops tokens."""
    model, processor = setup(vqa, **overrides)
    model.train()
    results = vqa.run_both_paths(model, vqa.synthetic_batch(processor), mask_seed=7)
    assert results[True]["mvm_loss"] is not None
    vqa.assert_paths_agree(results)


def test_stllm_video_in_the_middle_of_the_prompt(vqa):
    """MVM finds the video by its span wherever the prompt puts it (the seed hard-codes 0 or 8)."""
    model, processor = setup(vqa)
    processor.options["template"] = "###Human: {question} <video> Look again.###Assistant: "
    batch = vqa.synthetic_batch(processor)
    assert batch["input_ids"][0, 1] != processor.video_token_index
    model.train()
    vqa.assert_paths_agree(vqa.run_both_paths(model, batch, mask_seed=3))


def test_stllm_qwen2_language_model(vqa):
    text = dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=512, tie_word_embeddings=False)
    model, processor = setup(vqa, text_config=text)
    assert type(model.language_model).__name__ == "Qwen2ForCausalLM"
    model.train()
    vqa.assert_paths_agree(vqa.run_both_paths(model, vqa.synthetic_batch(processor), mask_seed=1))


def test_stllm_masks_the_seed_count_once_per_batch(vqa):
    """One ratio per batch: every sample keeps L - m video tokens, m = int(ratio * L), the seed's
    truncation (stllm/models/utils.py), not make_mask's default rounding; the packed sequences
    are the prompts with that many video tokens."""
    model, processor = setup(vqa)
    batch = vqa.synthetic_batch(processor, batch_size=3)
    model.train()
    length = model.config.video_tokens(4)
    # a seed whose ratio rounds and truncates differently, so the rule is what is tested
    seed = next(s for s in range(100) if int(stllm.draw_ratios(1, s)[0] * length)
                != int(stllm.draw_ratios(1, s)[0] * length + 0.5))
    out = model(**batch, mask_seed=seed)
    masked = int(stllm.draw_ratios(1, seed)[0] * length)
    text = batch["attention_mask"].sum(1) - length
    kept = torch.diff(out.cu_seqlens).long() - text
    assert len(set(kept.tolist())) == 1 and length - int(kept[0]) == masked


def test_stllm_per_sample_ratios_differ(vqa):
    model, processor = setup(vqa, mask_ratio_per_sample=True, mask_ratio_std=0.3)
    batch = vqa.synthetic_batch(processor, batch_size=3)
    model.train()
    out = model(**batch, mask_seed=2)
    kept = torch.diff(out.cu_seqlens).long() - batch["attention_mask"].sum(1)
    assert len(set(kept.tolist())) > 1


def test_stllm_eval_forward_does_not_mask(vqa):
    """Masking is for training only (the seed's forward masks whenever it runs)."""
    model, processor = setup(vqa)
    batch = vqa.synthetic_batch(processor)
    model.eval()
    first, second = (model(**batch, mask_seed=s) for s in (1, 2))
    assert first.mvm_loss is None
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)
    assert int(first.cu_seqlens[-1]) == int(batch["attention_mask"].sum())


@pytest.mark.parametrize("frames", [[8, 12], [12, 8]])
def test_stllm_residual_frames_follow_each_call(vqa, frames):
    """Global-local picks the segment centres of each call's T (the seed caches the first)."""
    model, _ = setup(vqa, video_input="residual", residual_size=4)
    for num_frames in frames:
        features = torch.randn(2, num_frames, 17, 32)
        tokens = model.frame_tokens(model.encode_frames(None, features))
        segment = num_frames / 4
        index = [int(segment / 2 + round(segment * i)) for i in range(4)]
        glob = tokens.mean(1)
        residual = model.residual_up(torch.relu(model.residual_down(glob)))
        expected = (tokens[:, index] + residual[:, None]).flatten(1, 2)
        for use_kernels in (True, False):
            model.use_kernels = use_kernels
            torch.testing.assert_close(model.video_tokens_for_prompt(
                model.encode_frames(None, features)), expected)


def test_stllm_residual_up_projection_starts_at_zero(vqa):
    model, _ = setup(vqa, video_input="residual", residual_size=2)
    assert torch.count_nonzero(model.residual_up.weight) == 0
    assert torch.count_nonzero(model.residual_up.bias) == 0


def test_stllm_precomputed_features_equal_frames(vqa):
    model, processor = setup(vqa)
    batch = vqa.synthetic_batch(processor)
    model.eval()
    frames = batch.pop("pixel_values_videos")
    features = model.vision_tower(pixel_values=frames.flatten(0, 1)).last_hidden_state
    features = features.unflatten(0, frames.shape[:2])
    by_frames = model(**batch, pixel_values_videos=frames)
    by_features = model(**batch, video_features=features)
    torch.testing.assert_close(by_frames.logits, by_features.logits)
    prompt = vqa.synthetic_batch(processor, answers=False)
    frames = prompt.pop("pixel_values_videos")
    assert torch.equal(model.generate(**prompt, pixel_values_videos=frames, max_new_tokens=2),
                       model.generate(**prompt, video_features=features, max_new_tokens=2))


def test_stllm_save_load_round_trip(vqa, tmp_path):
    model, processor = setup(vqa)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = STLLMForVideoQA.from_pretrained(tmp_path)
    loaded_processor = STLLMProcessor.from_pretrained(tmp_path)
    assert loaded.use_kernels and not STLLMForVideoQA.from_pretrained(
        tmp_path, use_kernels=False).use_kernels
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    batch = vqa.synthetic_batch(loaded_processor)
    assert torch.equal(batch["input_ids"], vqa.synthetic_batch(processor)["input_ids"])
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_stllm_from_parts_loads_local_checkpoints(vqa, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    model, _ = setup(vqa)
    clip = CLIPModel(CLIPConfig(vision_config=model.config.vision_config.to_dict(),
                                text_config=dict(hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=2)))
    clip.vision_model.load_state_dict(model.vision_tower.state_dict())
    clip.save_pretrained(tmp_path / "vision")  # a dual encoder: its vision half is taken
    model.language_model.save_pretrained(tmp_path / "llm")
    config = model.config.to_dict()
    kwargs = {k: config[k] for k in ("qformer_config", "num_query_tokens", "video_token_index")}
    rebuilt = STLLMForVideoQA.from_parts(vision_model=tmp_path / "vision",
                                         language_model=tmp_path / "llm", **kwargs)
    for name, tensor in model.language_model.state_dict().items():
        assert torch.equal(tensor, rebuilt.language_model.state_dict()[name]), name
    for name, tensor in model.vision_tower.state_dict().items():
        assert torch.equal(tensor, rebuilt.vision_tower.state_dict()[name]), name


@pytest.mark.parametrize("use_kernels", [True, False])
def test_stllm_greedy_generate_matches_step_by_step_argmax(vqa, use_kernels):
    """generate() (KV cache, left padding) = re-running the whole prompt and taking the argmax."""
    model, processor = setup(vqa, use_kernels=use_kernels)
    model.eval()
    batch = vqa.synthetic_batch(processor, batch_size=2, answers=False)
    batch.pop("sequence_layout")
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(3):
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                       pixel_values_videos=batch["pixel_values_videos"]).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    assert torch.equal(generated, ids)


def test_stllm_sampling_generates_vocabulary_tokens(vqa):
    model, processor = setup(vqa)
    model.eval()
    batch = vqa.synthetic_batch(processor, batch_size=2, answers=False)
    batch.pop("sequence_layout")
    out = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=5)
    new = out[:, batch["input_ids"].shape[1]:]
    assert new.shape == (2, 4) and bool(((new >= 0) & (new < len(processor.tokenizer))).all())


def test_stllm_rejects_prompts_without_the_video_run(vqa):
    model, processor = setup(vqa)
    batch = vqa.synthetic_batch(processor)
    batch.pop("sequence_layout")
    batch["input_ids"] = batch["input_ids"].clone()
    batch["input_ids"][0, 2] = processor.tokenizer.unk_token_id  # split the run in two
    with pytest.raises(ValueError, match="one run of"):
        model(**batch)
    batch["labels"] = None
    with pytest.raises(ValueError, match="video placeholders"):
        model(**batch)


def test_stllm_config_rejects_unknown_video_input():
    with pytest.raises(ValueError, match="video_input"):
        STLLMConfig(video_input="slowfast")


def test_stllm_training_loop_reduces_loss(tmp_path):
    from vidcore.train import main

    out = tmp_path / "run"
    assert main(["stllm", "--steps", "12", "--batch-size", "4", "--width", "32",
                 "--frame-size", "16", "--num-frames", "4", "--eval-size", "4", "--lr", "3e-3",
                 "--out", str(out), "--no-progress"]) == 0
    import json

    history = json.loads((out / "history.json").read_text())
    losses = [loss for _, loss in history["loss"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert (out / "loss.png").stat().st_size > 0 and (out / "checkpoint" / "config.json").exists()
    assert STLLMForVideoQA.from_pretrained(out / "checkpoint").config.use_mvm
