"""attn_implementation="vidcore" on tiny video/image LLMs (Qwen2-VL, LLaVA-NeXT-Video,
PaliGemma with its prefix-LM mask) against the same weights on sdpa (eager for PaliGemma, whose
sdpa path reads `is_causal` where the mask says otherwise): padded batches, training gradients,
greedy generation with dynamic and static caches."""
import functools

import pytest
import torch

transformers = pytest.importorskip("transformers")

VIDEO, IMAGE, START, END = 121, 120, 122, 123  # special token ids of the tiny vocabularies
TEXT = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=None,
            eos_token_id=None)
VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=16)


def _qwen2_vl(attn):
    config = transformers.Qwen2VLConfig(
        text_config=dict(**TEXT, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                  "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
        vision_end_token_id=END)
    return transformers.Qwen2VLForConditionalGeneration._from_config(config,
                                                                     attn_implementation=attn)


def _qwen2_vl_inputs(ids, mask):
    """One 2-frame 8x8 video per row: 4 patches of 2x4x4 pixels -> 4 merged tokens at 3:7."""
    ids[:, 6], ids[:, 7:11], ids[:, 11] = START, VIDEO, END
    generator = torch.Generator().manual_seed(3)
    return dict(input_ids=ids, attention_mask=mask, video_grid_thw=torch.tensor([[1, 4, 4]] * 2),
                pixel_values_videos=torch.randn(32, 3 * 2 * 4 * 4, generator=generator),
                mm_token_type_ids=(ids == VIDEO).int() * 2)


def _llava_next_video(attn):
    config = transformers.LlavaNextVideoConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION, num_hidden_layers=2, patch_size=4),
        text_config=transformers.LlamaConfig(**TEXT),
        video_token_index=VIDEO, image_token_index=IMAGE, spatial_pool_stride=2,
        image_seq_length=16, video_seq_length=8)
    return transformers.LlavaNextVideoForConditionalGeneration._from_config(
        config, attn_implementation=attn)


def _llava_next_video_inputs(ids, mask):
    """Two 16x16 frames per row, pooled to 2x2 tokens each: 8 video tokens at 5:13."""
    ids[:, 5:13] = VIDEO
    generator = torch.Generator().manual_seed(3)
    return dict(input_ids=ids, attention_mask=mask,
                pixel_values_videos=torch.randn(2, 2, 3, 16, 16, generator=generator))


def _paligemma(attn):
    config = transformers.PaliGemmaConfig(
        vision_config=transformers.SiglipVisionConfig(**VISION, num_hidden_layers=1, patch_size=8),
        text_config=transformers.GemmaConfig(**{**TEXT, "num_key_value_heads": 1}, head_dim=8),
        image_token_index=IMAGE, vocab_size=128, projection_dim=32, hidden_size=32)
    return transformers.PaliGemmaForConditionalGeneration._from_config(config,
                                                                       attn_implementation=attn)


def _paligemma_inputs(ids, mask):
    """4 image tokens, then the prompt: the prefix (token type 0: padding, image, 6 prompt
    tokens) attends bidirectionally, the suffix (token type 1) causally."""
    types = torch.ones_like(ids)
    generator = torch.Generator().manual_seed(3)
    for row, first in enumerate(mask.argmax(1).tolist()):  # first valid token
        ids[row, first:first + 4] = IMAGE
        types[row, :first + 10] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types,
                pixel_values=torch.randn(2, 3, 16, 16, generator=generator))


MODELS = {
    "qwen2_vl": (_qwen2_vl, _qwen2_vl_inputs, "sdpa"),
    "llava_next_video": (_llava_next_video, _llava_next_video_inputs, "sdpa"),
    "paligemma": (_paligemma, _paligemma_inputs, "eager"),
}


@functools.cache
def _twins(name, twins):
    build, _, reference = MODELS[name]
    return twins(build, reference)


@pytest.fixture(params=list(MODELS))
def vlm(request, hf):
    """(vidcore model, oracle model, inputs(ids, mask) -> kwargs) for each multimodal LLM."""
    return (*_twins(request.param, hf.twins), MODELS[request.param][1])


def _batch(hf, inputs, pads=(0, 2), length=16, side="left"):
    ids, mask = hf.left_padded(2, length, list(pads))
    if side == "right":
        ids, mask = ids.roll(-pads[1], 1), mask.roll(-pads[1], 1)
    return inputs(ids, mask)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch(vlm, hf, side):
    ours, theirs, inputs = vlm
    batch = _batch(hf, inputs, side=side)
    with torch.no_grad():
        got, expected = ours(**batch).logits, theirs(**batch).logits
    hf.assert_logits_match(got, expected, batch["attention_mask"].bool())


def test_bf16_error_within_twice_the_oracles(vlm, hf):
    ours, theirs, inputs = vlm
    hf.assert_bf16_no_worse(ours, theirs, _batch(hf, inputs))


def test_training_gradients(vlm, hf):
    ours, theirs, inputs = vlm
    batch = _batch(hf, inputs)
    labels = hf.training_labels(batch["input_ids"], batch["attention_mask"])
    batch["labels"] = labels.masked_fill(labels >= IMAGE, -100)
    hf.assert_same_gradients(ours, theirs, **batch)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation(vlm, hf, cache):
    ours, theirs, inputs = vlm
    hf.assert_same_generation(ours, theirs, cache, max_new_tokens=5, **_batch(hf, inputs))


def test_paligemma_prefix_is_bidirectional(hf):
    """PaliGemma's prefix really sees its future (else the test above could not tell a causal
    mask from the prefix-LM one): all-suffix token types change the prefix logits."""
    ours, _ = _twins("paligemma", hf.twins)
    batch = _batch(hf, _paligemma_inputs)
    causal = {**batch, "token_type_ids": torch.ones_like(batch["token_type_ids"])}
    with torch.no_grad():
        prefix, causal_prefix = (ours(**b).logits[:, 4:10] for b in (batch, causal))
    assert not torch.allclose(prefix, causal_prefix, atol=1e-4)


def test_paligemma_without_token_types_follows_its_causal_mask(hf):
    """Without token_type_ids transformers builds PaliGemma a causal mask; vidcore follows the
    mask (as eager does), not the Gemma layers' is_causal=False (which sdpa's maskless path
    reads, attending bidirectionally)."""
    ours, theirs = _twins("paligemma", hf.twins)
    batch = _batch(hf, _paligemma_inputs, pads=(0, 0))
    del batch["token_type_ids"]
    with torch.no_grad():
        hf.assert_logits_match(ours(**batch).logits, theirs(**batch).logits)
