"""attn_implementation="vidcore" on a tiny encoder-decoder (BART: padded encoder, decoder longer
than the encoder, cross-attention) and a tiny encoder (BERT) against the same weights on sdpa."""
import functools

import pytest
import torch

transformers = pytest.importorskip("transformers")


def _bart(attn):
    config = transformers.BartConfig(
        vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, pad_token_id=0,
        bos_token_id=1, eos_token_id=None, decoder_start_token_id=1, forced_eos_token_id=None)
    return transformers.BartForConditionalGeneration._from_config(config, attn_implementation=attn)


def _bert(attn):
    config = transformers.BertConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    return transformers.BertForMaskedLM._from_config(config, attn_implementation=attn)


@functools.cache
def _twins(name, twins):
    return twins({"bart": _bart, "bert": _bert}[name], "sdpa")


def _encoder_batch(hf, length=7, pads=(0, 3), side="right"):
    ids, mask = hf.left_padded(2, length, list(pads))
    return (ids.flip(1), mask.flip(1)) if side == "right" else (ids, mask)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bart_padded_encoder_and_a_longer_decoder(hf, side):
    """Cross-attention: decoder queries (11, some padded) see only the valid encoder keys (7)."""
    ours, theirs = _twins("bart", hf.twins)
    ids, mask = _encoder_batch(hf, side=side)
    decoder_ids, decoder_mask = _encoder_batch(hf, length=11, pads=(2, 0), side=side)
    batch = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                 decoder_attention_mask=decoder_mask)
    with torch.no_grad():
        got, expected = ours(**batch).logits, theirs(**batch).logits
    hf.assert_logits_match(got, expected, decoder_mask.bool())


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_bart_greedy_generation(hf, cache):
    ours, theirs = _twins("bart", hf.twins)
    ids, mask = _encoder_batch(hf)
    hf.assert_same_generation(ours, theirs, cache, max_new_tokens=10, input_ids=ids,
                              attention_mask=mask)


def test_bart_training_gradients(hf):
    ours, theirs = _twins("bart", hf.twins)
    ids, mask = _encoder_batch(hf)
    labels, _ = _encoder_batch(hf, length=9, pads=(0, 0))
    hf.assert_same_gradients(ours, theirs, input_ids=ids, attention_mask=mask, labels=labels)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bert_padded_batch(hf, side):
    ours, theirs = _twins("bert", hf.twins)
    ids, mask = _encoder_batch(hf, length=9, pads=(2, 4), side=side)
    with torch.no_grad():
        got, expected = ours(input_ids=ids, attention_mask=mask).logits, \
            theirs(input_ids=ids, attention_mask=mask).logits
    hf.assert_logits_match(got, expected, mask.bool())


def test_bert_training_gradients(hf):
    ours, theirs = _twins("bert", hf.twins)
    ids, mask = _encoder_batch(hf, length=9, pads=(0, 4))
    hf.assert_same_gradients(ours, theirs, input_ids=ids, attention_mask=mask,
                             labels=ids.masked_fill(mask == 0, -100))


def test_bert_4d_mask(hf):
    """A user 4-D mask: every token sees the tokens of its own segment (two per row)."""
    ours, theirs = _twins("bert", hf.twins)
    ids, _ = _encoder_batch(hf, length=9, pads=(0, 0))
    segments = torch.tensor([[0] * 4 + [1] * 5, [0] * 7 + [1] * 2])
    visible = (segments[:, :, None] == segments[:, None, :])[:, None]
    with torch.no_grad():
        got, expected = ours(input_ids=ids, attention_mask=visible).logits, \
            theirs(input_ids=ids, attention_mask=visible).logits
    hf.assert_logits_match(got, expected)


@pytest.mark.parametrize("name", ["bart", "bert"])
def test_bf16_error_within_twice_the_oracles(hf, name):
    ours, theirs = _twins(name, hf.twins)
    ids, mask = _encoder_batch(hf, length=9, pads=(0, 4))
    batch = dict(input_ids=ids, attention_mask=mask)
    if name == "bart":
        decoder_ids, decoder_mask = _encoder_batch(hf, length=11, pads=(2, 0))
        batch.update(decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)
    hf.assert_bf16_no_worse(ours, theirs, batch)
