"""ActionLLM on vidcore ops: the kernels path against the seed's reference path (varlen batches,
every output and gradient), the seed-defect flags, the adapters, bidirectional attention,
save/load, loading the LLM from a local directory, and the training task."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from vidcore.data.synthetic import ProceduralActivities
from vidcore.models.actionllm import ActionLLMConfig, ActionLLMForAnticipation
from vidcore.models.actionllm_blocks import ActionTuningAdapter, CrossModalityInteraction
from vidcore.models.actionllm_task import anticipation_sample, collate, tiny_actionllm_config
from vidcore.testing import MODEL_TOLERANCES

CLASSES, FEATURES, QUERIES = 5, 24, 4


def tiny(**overrides) -> ActionLLMForAnticipation:
    torch.manual_seed(0)
    settings = dict(width=32, num_future_queries=QUERIES, dropout=0.0)
    settings.update(overrides)
    return ActionLLMForAnticipation(tiny_actionllm_config(CLASSES, FEATURES, **settings))


def batch(fractions=(0.5, 0.3, 0.3), seed=0) -> dict:
    videos = ProceduralActivities(len(fractions), num_classes=CLASSES, feature_dim=FEATURES,
                                  num_frames=20, seed=seed)
    return collate([anticipation_sample(videos[i], f, QUERIES, CLASSES)
                    for i, f in enumerate(fractions)])


def run(model, inputs, use_kernels):
    model.use_kernels = use_kernels
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("fractions", [(0.5, 0.3, 0.3), (0.3, 0.3)], ids=["varlen", "equal"])
@pytest.mark.parametrize("overrides", [{}, dict(position_encoding_over_batch=True,
                                                train_heads=False)], ids=["fixed", "seed"])
def test_actionllm_kernels_match_reference(fractions, overrides):
    """Loss parts, every output (padding included) and every gradient agree with the seed's
    per-sample CMIB and padded SDPA batch."""
    model = tiny(**overrides)
    model.train()
    inputs = batch(fractions)
    fast, fast_grads = run(model, inputs, True)
    ref, ref_grads = run(model, inputs, False)
    tol = MODEL_TOLERANCES[torch.float32]
    for key in ("loss", "action_loss", "duration_loss", "segmentation_loss", "action_logits",
                "duration_logits", "segmentation_logits", "text_segmentation_logits"):
        torch.testing.assert_close(fast[key], ref[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) > 20
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_actionllm_trainable_parts_follow_the_flags():
    fixed, seed = tiny(), tiny(train_heads=False)
    frozen = {n for n, p in fixed.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in fixed.language_model.named_parameters(prefix="language_model")}
    seed_frozen = {n for n, p in seed.named_parameters() if not p.requires_grad} - frozen
    assert seed_frozen == {"action_head.weight", "segmentation_head.weight",
                           "text_segmentation_head.weight"}  # duration head trains (an adapter)


def test_position_encoding_by_token_or_by_batch():
    block = CrossModalityInteraction(8, 2, 16, 0.0, 0.0, 1e-5, position_over_batch=False)
    zeros = torch.zeros(2, 3, 8)
    by_token = block._position(zeros, torch.arange(2))
    assert torch.equal(by_token[0], by_token[1]) and not torch.equal(by_token[0, 0], by_token[0, 1])
    assert torch.equal(by_token[0, 0], torch.tensor([0.0, 1.0] * 4))  # sin 0, cos 0
    block.position_over_batch = True  # the seed: pe[:B] on [B, S, D] -> one vector per sample
    by_batch = block._position(zeros, torch.arange(2))
    assert torch.equal(by_batch[0], by_token[0, :1].expand(3, 8))
    assert torch.equal(by_batch[1], by_token[0, 1:2].expand(3, 8))


def test_action_tuning_adapter_is_the_seeds_grouped_convolution():
    adapter = ActionTuningAdapter(8, rank=4, groups=2, dropout=0.0)
    torch.nn.init.normal_(adapter.up_weight)
    torch.nn.init.normal_(adapter.up_bias)
    conv_a = torch.nn.Conv1d(8, 4, 1)
    conv_d = torch.nn.Conv1d(4, 8, 1, groups=2)
    with torch.no_grad():
        conv_a.weight.copy_(adapter.down.weight[..., None])
        conv_a.bias.copy_(adapter.down.bias)
        conv_d.weight.copy_(adapter.up_weight.reshape(8, 2, 1))
        conv_d.bias.copy_(adapter.up_bias)
    x = torch.randn(3, 5, 8)
    expected = x + conv_d(conv_a(x.transpose(1, 2))).transpose(1, 2)  # mm_adapter.py's forward
    torch.testing.assert_close(adapter(x), expected)


def test_adapters_start_as_identity_and_act_before_the_attention():
    model = tiny()
    model.eval()
    plain = model._decode_packed(*_streams(model), [10, 6, 6])[2]
    for adapter in model.action_adapters:  # zero-initialised up projection: the LLM as is
        assert torch.equal(adapter.up_weight, torch.zeros_like(adapter.up_weight))
    with torch.no_grad():
        model.action_adapters[-1].up_bias.fill_(0.5)
    assert not torch.allclose(model._decode_packed(*_streams(model), [10, 6, 6])[2], plain)


def _streams(model, batch_size=3, frames=10):
    torch.manual_seed(1)
    width = model.config.text_config.hidden_size
    return (torch.randn(batch_size, frames, width), torch.randn(batch_size, frames, width),
            torch.randn(batch_size, QUERIES, width))


@pytest.mark.parametrize("use_kernels", [True, False])
def test_llm_attention_is_bidirectional(use_kernels):
    """The first text token sees the last future token (a causal LLM would not)."""
    model = tiny(use_kernels=use_kernels)
    model.eval()
    text, video, future = _streams(model)
    first = model._decode_packed if use_kernels else model._decode_padded
    before = first(text, video, future, [10, 6, 6])[0][:, 0]
    future[:, -1] += 1.0
    after = first(text, video, future, [10, 6, 6])[0][:, 0]
    assert (after - before).abs().amax(-1).min() > 1e-4


def test_clue_embeddings_are_mean_name_embeddings():
    model = tiny()
    table = model.get_input_embeddings().weight
    expected = torch.stack([table[ids].mean(0) for ids in model.config.class_name_token_ids])
    torch.testing.assert_close(model.clue_embeddings(), expected)


def test_save_and_load_round_trip(tmp_path):
    model = tiny(use_kernels=False)
    with torch.no_grad():
        for adapter in model.action_adapters:
            adapter.up_bias.normal_()
    model.eval()
    inputs = batch()
    expected = model(**inputs).action_logits
    model.save_pretrained(tmp_path)
    loaded = ActionLLMForAnticipation.from_pretrained(tmp_path)
    assert loaded.use_kernels is False and loaded.config.class_name_token_ids
    loaded.eval()
    torch.testing.assert_close(loaded(**inputs).action_logits, expected)  # hooks active again
    assert ActionLLMForAnticipation.from_pretrained(tmp_path, use_kernels=True).use_kernels


def test_language_model_from_a_local_directory(tmp_path):
    llm = AutoModel.from_config(tiny().config.text_config)
    llm.save_pretrained(tmp_path / "llm")
    model = ActionLLMForAnticipation.from_parts(
        language_model=tmp_path / "llm", num_classes=CLASSES, feature_dim=FEATURES,
        interaction_size=16, interaction_heads=4, num_future_queries=QUERIES)
    torch.testing.assert_close(model.get_input_embeddings().weight,
                               llm.get_input_embeddings().weight)


def test_clue_embeds_instead_of_labels_and_bad_inputs():
    model = tiny()
    inputs = batch()
    clues = model.clue_embeddings()[inputs.pop("clue_labels")]
    out = model(**inputs, clue_embeds=clues)
    assert out.action_logits.shape == (3, QUERIES, CLASSES + 1)
    with pytest.raises(ValueError, match="pass clue_labels"):
        model(inputs["video_features"])
    with pytest.raises(ValueError, match=r"observed lengths must be 3 values in \[1, 10\]"):
        model(inputs["video_features"], clue_embeds=clues, observed_lengths=[11, 1, 1])
    with pytest.raises(ValueError, match="class_name_token_ids needs one"):
        ActionLLMConfig(num_classes=3, class_name_token_ids=[[1], [2]])
