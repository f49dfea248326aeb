"""Task-Adapter++ on vidcore ops: the kernels path against the seed's rearrange path (logits,
loss, every gradient), the score orientation flag, stage windows, frozen backbone, pooling at
EOS, loading CLIP from a local directory, save/load."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from vidcore.data.synthetic import OrderedSubActionEpisodes
from vidcore.models.task_adapter import TaskAdapterForFewShot
from vidcore.models.task_adapter_blocks import axis_self_attention, cosine_matrix
from vidcore.models.task_adapter_task import (
    episode_batch,
    frame_average_accuracy,
    frame_average_predictions,
    synthetic_tokenizer,
    tiny_task_adapter_config,
)
from vidcore.testing import MODEL_TOLERANCES

TOKENIZER = synthetic_tokenizer()


def tiny(**overrides) -> TaskAdapterForFewShot:
    torch.manual_seed(0)
    return TaskAdapterForFewShot(tiny_task_adapter_config(len(TOKENIZER), frame_size=16,
                                                          width=32, **overrides))


def episode(n_way=3, k_shot=2, n_query=1, seed=0) -> dict:
    data = OrderedSubActionEpisodes(1, n_way=n_way, k_shot=k_shot, n_query=n_query,
                                    frame_size=16, seed=seed)
    return episode_batch(data[0], TOKENIZER)


def run(model, inputs, use_kernels):
    model.use_kernels = use_kernels
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [{}, dict(alignment_layernorm=True, freeze_backbone=False)],
                         ids=["seed-defaults", "layernorm-full-training"])
def test_task_adapter_kernels_match_reference(overrides):
    model = tiny(**overrides)
    inputs = episode(n_way=3, k_shot=2, n_query=2)
    fast, fast_grads = run(model, inputs, True)
    ref, ref_grads = run(model, inputs, False)
    tol = MODEL_TOLERANCES[torch.float32]
    for key in ("loss", "logits", "semantic_scores", "visual_scores"):
        torch.testing.assert_close(fast[key], ref[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
    assert fast_grads.keys() == ref_grads.keys()
    assert "temporal_embedding" in fast_grads and len(fast_grads) > 30
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_axis_self_attention_matches_the_clip_attention_along_each_axis():
    """Along the last grid axis, the op path is the CLIP module's own attention."""
    model = tiny()
    attn = model.vision_model.encoder.layers[0].self_attn
    x = torch.randn(2, 3, 5, 32)
    for dim in (0, 1, 2):
        moved = x.movedim(dim, 2).reshape(-1, x.shape[dim], 32)
        expected = attn(moved)[0].view(x.movedim(dim, 2).shape).movedim(2, dim)
        for use_kernels in (True, False):
            torch.testing.assert_close(axis_self_attention(attn, x, dim, use_kernels), expected,
                                       **MODEL_TOLERANCES[torch.float32])


def test_scores_fixed_and_seed_orientation():
    """Fixed: logits[q, c] = 64 * semantic[q, c] * visual[q, c]. Seed: semantic laid out
    [class, query] times visual [query, class], which runs only with as many queries as ways."""
    inputs = episode(n_way=3, k_shot=1, n_query=1)
    fixed, seed = tiny(), tiny(transposed_scores=True)
    out, seed_out = fixed(**inputs), seed(**inputs)
    torch.testing.assert_close(out.logits, 64 * out.semantic_scores * out.visual_scores)
    torch.testing.assert_close(seed_out.semantic_scores, out.semantic_scores.T)
    torch.testing.assert_close(seed_out.logits, 64 * out.semantic_scores.T * out.visual_scores)
    with pytest.raises(ValueError, match="as many queries as classes"):
        seed(**episode(n_way=3, k_shot=1, n_query=2))


def test_semantic_score_is_the_stage_window_mean_of_cosines():
    """(1/9) sum over stages s and transitions f in window s of cos(E_s, a_f), written out."""
    model = tiny()
    inputs = episode(n_way=3, k_shot=1, n_query=1)
    out = model(**inputs)
    stages = model.encode_class_texts(inputs["class_input_ids"])  # [3 ways, 3 stages, D]
    query = model.encode_videos(inputs["query_videos"])  # [3, 8, D]
    expected = torch.zeros(3, 3)
    for q in range(3):
        for f in range(7):
            scores = torch.softmax(torch.stack([query[q, f] @ query[j, f + 1] for j in range(3)])
                                   / query.shape[-1] ** 0.5, 0)
            attended = sum(scores[j] * query[j, f + 1] for j in range(3)) + query[q, f + 1]
            for s, window in enumerate(([0, 1, 2], [2, 3, 4], [4, 5, 6])):
                if f in window:
                    for c in range(3):
                        expected[q, c] += torch.cosine_similarity(stages[c, s], attended, 0) / 9
    torch.testing.assert_close(out.semantic_scores, expected, atol=1e-5, rtol=1e-5)


def test_prototypes_average_the_shots_of_each_class():
    model = tiny()
    inputs = episode(n_way=2, k_shot=3, n_query=1)
    support = model.encode_videos(inputs["support_videos"])
    query = model.encode_videos(inputs["query_videos"])
    prototypes = torch.stack([support[inputs["support_labels"] == c].mean(0) for c in range(2)])
    expected = cosine_matrix(query.mean(1), prototypes.mean(1))
    torch.testing.assert_close(model(**inputs).visual_scores, expected)


def test_frozen_backbone_and_trainable_adapters():
    model = tiny()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"temporal_embedding", "vision_adapters", "text_adapters"}
    task = model.vision_adapters[0].task.fc2.weight  # the seed leaves the task adapter random
    assert task.abs().sum() > 0 and model.vision_adapters[0].temporal.fc2.weight.abs().sum() == 0


def test_config_checks():
    with pytest.raises(ValueError, match="stage_windows must list"):
        tiny_task_adapter_config(len(TOKENIZER), stage_windows=[[0, 7]])
    with pytest.raises(ValueError, match="adapter_layers must be in"):
        tiny_task_adapter_config(len(TOKENIZER), adapter_layers=3)
    model = tiny()
    inputs = episode()
    inputs["class_input_ids"] = inputs["class_input_ids"][:, :2]
    with pytest.raises(ValueError, match="one sentence per stage"):
        model(**inputs)


def test_clip_from_a_local_directory_and_save_load(tmp_path):
    reference = tiny()
    clip = CLIPModel(CLIPConfig(text_config=reference.config.text_config.to_dict(),
                                vision_config=reference.config.vision_config.to_dict(),
                                projection_dim=32))
    clip.save_pretrained(tmp_path / "clip")
    model = TaskAdapterForFewShot.from_clip(tmp_path / "clip", adapter_layers=1,
                                            text_adapter_layers=1, use_kernels=False)
    torch.testing.assert_close(model.visual_projection.weight, clip.visual_projection.weight)
    inputs = episode()
    with torch.no_grad():
        model.temporal_embedding.normal_()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path / "ta")
    loaded = TaskAdapterForFewShot.from_pretrained(tmp_path / "ta")
    assert loaded.use_kernels is False
    torch.testing.assert_close(loaded(**inputs).logits, expected)


# The order-blind baseline, on hand-made frame features [N, T=2, D=2]
SUPPORT = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],   # class 0, shot 1: mean (1, 0)
                        [[0.0, 1.0], [0.0, 1.0]],   # class 0, shot 2: mean (0, 1)
                        [[1.0, 0.2], [1.0, 0.0]]])  # class 1: mean (1, 0.1)
SUPPORT_LABELS = torch.tensor([0, 0, 1])


def test_frame_average_baseline_by_hand():
    # prototypes: class 0 = mean of its shots (0.5, 0.5), class 1 = (1, 0.1)
    query = torch.tensor([[[0.4, 0.6], [0.5, 0.5]],    # mean (0.45, 0.55): cos 0.995 vs 0.70 -> 0
                          [[3.0, 0.0], [1.0, 0.4]],    # mean (2, 0.2): cos 0.77 vs 1.0 -> 1
                          [[0.0, 1.0], [0.0, 1.0]]])   # mean (0, 1): cos 0.71 vs 0.10 -> 0
    guess = frame_average_predictions(SUPPORT, SUPPORT_LABELS, query, ways=2)
    assert guess.tolist() == [0, 1, 0]
    # a prototype from class 0's first shot alone, (1, 0), would give query 0 to class 1
    assert cosine_matrix(query[:1].mean(1), torch.tensor([[1.0, 0.0], [1.0, 0.1]])
                         ).argmax(-1).tolist() == [1]


def test_frame_average_baseline_ignores_frame_order():
    query = torch.tensor([[[1.0, 0.0], [0.3, 0.9]], [[0.2, 0.1], [2.0, 0.3]]])
    reversed_frames = query.flip(1)
    assert torch.equal(frame_average_predictions(SUPPORT, SUPPORT_LABELS, query, 2),
                       frame_average_predictions(SUPPORT, SUPPORT_LABELS, reversed_frames, 2))


def test_frame_average_accuracy_counts_right_queries_over_episodes():
    """A stand-in CLIP whose per-frame feature is the frame's pixel vector; two episodes, three
    queries, two right."""
    model = SimpleNamespace(
        vision_model=lambda pixel_values: SimpleNamespace(pooler_output=pixel_values.flatten(1)),
        visual_projection=lambda x: x)

    def batch(query, labels):
        return {"support_videos": SUPPORT[..., None, None], "support_labels": SUPPORT_LABELS,
                "query_videos": query[..., None, None], "labels": torch.tensor(labels),
                "class_input_ids": torch.zeros(2, 3, 4, dtype=torch.long)}

    episodes = [batch(torch.tensor([[[0.4, 0.6], [0.5, 0.5]], [[3.0, 0.0], [1.0, 0.4]]]), [0, 0]),
                batch(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), [0])]
    assert frame_average_accuracy(model, episodes) == pytest.approx(2 / 3)
