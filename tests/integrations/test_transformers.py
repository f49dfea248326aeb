"""attn_implementation="vidcore" on tiny decoder LLMs (Llama, Mistral with a window shorter than
the sequences, Qwen2, Gemma2 with softcap and window, Gemma3 with sliding and global layers)
against the same weights on sdpa (eager for Gemma2): padded and packed batches, gradients,
greedy generation with dynamic and static caches, chunked prefill, 4-D masks, bf16."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from vidcore.integrations.transformers import vidcore_attention_forward  # noqa: E402
from vidcore.testing import assert_close  # noqa: E402


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch(decoder, hf, side):
    _, ours, theirs = decoder
    ids, mask = hf.left_padded(3, 11, [0, 4, 1])
    if side == "right":
        ids, mask = ids.flip(1), mask.flip(1)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits
        expected = theirs(input_ids=ids, attention_mask=mask).logits
    hf.assert_logits_match(got, expected, mask.bool())


def test_packed_rows_batch_2_match_each_sequence_alone(decoder, hf):
    """Two rows, each several sequences whose position_ids restart: every sequence must see
    only itself (the oracle runs each sequence alone). transformers reads packing from
    position_ids only without a cache, hence use_cache=False (as in training)."""
    _, ours, theirs = decoder
    lengths = [[4, 7], [6, 2, 3]]
    ids, _ = hf.left_padded(2, 11, [0, 0], seed=2)
    positions = torch.tensor([[p for n in row for p in range(n)] for row in lengths])
    with torch.no_grad():
        got = ours(input_ids=ids, position_ids=positions, use_cache=False).logits
        for row, row_lengths in enumerate(lengths):
            start = 0
            for n in row_lengths:
                alone = theirs(input_ids=ids[row:row + 1, start:start + n]).logits
                hf.assert_logits_match(got[row, start:start + n], alone[0])
                start += n


def test_training_gradients(decoder, hf):
    _, ours, theirs = decoder
    ids, mask = hf.left_padded(2, 10, [0, 3])
    hf.assert_same_gradients(ours, theirs, input_ids=ids, attention_mask=mask,
                             labels=hf.training_labels(ids, mask))


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("batch", ["one", "left_padded"])
def test_greedy_generation(decoder, hf, cache, batch):
    _, ours, theirs = decoder
    ids, mask = hf.left_padded(1, 9, [0]) if batch == "one" else hf.left_padded(2, 9, [0, 3])
    hf.assert_same_generation(ours, theirs, cache, input_ids=ids, attention_mask=mask)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_chunked_prefill_over_a_cache(decoder, hf, cache):
    """A prompt fed in two chunks through a cache gives the logits of one full pass."""
    _, ours, theirs = decoder
    ids, mask = hf.left_padded(2, 12, [0, 3])
    caches = {"dynamic": lambda: transformers.DynamicCache(config=ours.config),
              "static": lambda: transformers.StaticCache(config=ours.config, max_cache_len=16)}
    past = caches[cache]()
    with torch.no_grad():
        first = ours(input_ids=ids[:, :7], attention_mask=mask[:, :7], past_key_values=past)
        second = ours(input_ids=ids[:, 7:], attention_mask=mask, past_key_values=past)
        expected = theirs(input_ids=ids, attention_mask=mask).logits
    got = torch.cat([first.logits, second.logits], 1)
    hf.assert_logits_match(got, expected, mask.bool())


def _causal_4d(mask_2d: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    length = mask_2d.shape[1]
    visible = torch.ones(length, length, dtype=torch.bool).tril()[None] & mask_2d.bool()[:, None]
    if segments is not None:
        visible = visible & (segments[:, :, None] == segments[:, None, :])
    return visible[:, None]


@pytest.mark.parametrize("form", ["bool", "float"])
def test_4d_masks(decoder, hf, form):
    """User 4-D masks are honoured: causal with right padding, and two packed sequences."""
    _, ours, theirs = decoder
    ids, mask = hf.left_padded(2, 10, [0, 3])
    ids, mask = ids.flip(1), mask.flip(1)
    segments = torch.tensor([[0] * 6 + [1] * 4, [0] * 10])
    for visible in (_causal_4d(mask), _causal_4d(torch.ones_like(mask), segments)):
        additive = torch.where(visible, 0.0, torch.finfo(torch.float32).min)
        with torch.no_grad():
            mask_4d = visible if form == "bool" else additive
            got = ours(input_ids=ids, attention_mask=mask_4d).logits
            # eager adds a 4-D mask to the scores, so the oracle always gets the float form
            expected = theirs(input_ids=ids, attention_mask=additive).logits
        hf.assert_logits_match(got, expected, visible[:, 0].any(-1))


def test_4d_mask_with_holes_is_refused_naming_the_layer(decoder, hf):
    name, ours, _ = decoder
    ids, mask = hf.left_padded(1, 6, [0])
    visible = _causal_4d(mask)
    visible[0, 0, 5, 2] = False
    with pytest.raises(ValueError, match=rf"{name}\w* \w+Attention \(layer 0\) \(user 4-D mask\): "
                                         r"batch row 0, query 5 sees keys 0-1, 3-5"):
        ours(input_ids=ids, attention_mask=visible)


def test_bf16_error_within_twice_the_oracles(decoder, hf):
    _, ours, theirs = decoder
    ids, mask = hf.left_padded(2, 11, [0, 4])
    hf.assert_bf16_no_worse(ours, theirs, dict(input_ids=ids, attention_mask=mask))


@pytest.mark.parametrize("name, without_feature", [
    ("mistral", dict(sliding_window=None)),
    ("gemma2", dict(attn_logit_softcapping=None)),
    ("gemma3", dict(layer_types=["full_attention"] * 2)),
])
def test_windows_and_softcaps_change_the_output(hf, name, without_feature):
    """The features the tests above compare really bind on these inputs (else those tests could
    not fail): the oracle without them gives other logits."""
    _, theirs = hf.decoder_twins(name)
    without = transformers.AutoModelForCausalLM.from_config(
        hf.decoder_config(name, **without_feature),
        attn_implementation=theirs.config._attn_implementation).eval()
    without.load_state_dict(theirs.state_dict())
    ids, _ = hf.left_padded(1, 11, [0])
    with torch.no_grad():
        assert not torch.allclose(without(input_ids=ids).logits, theirs(input_ids=ids).logits,
                                  atol=1e-4)


@pytest.mark.parametrize("positions", ["restarting", "running"])
def test_flash_attention_offsets_are_honoured(hf, positions):
    """cu_seq_lens_q/k (DataCollatorWithFlattening) split a row into sequences whether or not
    position_ids restart; the oracle gets the equivalent block-diagonal 4-D mask."""
    ours, theirs = hf.decoder_twins("llama")
    ids, mask = hf.left_padded(1, 10, [0])
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]) if positions == "restarting" \
        else torch.arange(10)[None]
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    block_causal = _causal_4d(mask, torch.tensor([[0] * 4 + [1] * 6]))
    with torch.no_grad():
        got = ours(input_ids=ids, position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                   max_length_q=6, max_length_k=6).logits
        expected = theirs(input_ids=ids, position_ids=position_ids,
                          attention_mask=block_causal).logits
    hf.assert_logits_match(got, expected)


def _attention_f64(q, k, v, visible, softcap=None):
    """softmax(cap(q k^T / sqrt(d)) + mask) v in float64, GQA by repeating key heads."""
    group = q.shape[1] // k.shape[1]
    q, k, v = (t.double() for t in (q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    return (scores.masked_fill(~visible, -torch.inf).softmax(-1) @ v).float()


@pytest.mark.parametrize("causal, window, len_q", [(True, None, 7), (False, None, 7),
                                                   (True, 3, 7), (True, 3, 2), (False, 3, 7),
                                                   (True, 9, 7)])
@pytest.mark.parametrize("softcap", [None, 0.5])
def test_maskless_layers(causal, window, len_q, softcap):
    """Layers called without a mask (vision towers, custom code) run the module's causality, the
    flash-attention window convention (i - window < j <= i, + window - 1 when bidirectional)
    and softcap. The oracle is a float64 loop."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, len_q, 8, generator=generator)
    k, v = (torch.randn(2, 2, 7, 8, generator=generator) for _ in range(2))
    module = torch.nn.Module()
    module.is_causal = causal
    got, _ = vidcore_attention_forward(module, q, k, v, None, sliding_window=window,
                                       softcap=softcap)
    i = torch.arange(len_q)[:, None] + 7 - len_q  # bottom-right aligned
    j = torch.arange(7)[None]
    visible = (j <= i) if causal else torch.ones(len_q, 7, dtype=torch.bool)
    if window is not None:
        visible = visible & (j > i - window) & (j < i + window)
    assert_close(got, _attention_f64(q, k, v, visible, softcap).transpose(1, 2),
                 dtype=torch.float32)


def test_maskless_layers_with_flash_attention_offsets():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=generator) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = True
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    got, _ = vidcore_attention_forward(module, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                                       max_length_q=5, max_length_k=5)
    expected = torch.cat([_attention_f64(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                         torch.ones(b - a, b - a, dtype=torch.bool).tril())
                          for a, b in ((0, 4), (4, 9))], 2)
    assert_close(got, expected.transpose(1, 2), dtype=torch.float32)
