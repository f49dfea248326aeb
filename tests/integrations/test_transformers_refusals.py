"""What attn_implementation="vidcore" cannot compute exactly is refused with a ValueError that
names the model, the layer and the one feature that fired; what it can, it runs (a sliding
window that cannot bind is no reason to refuse)."""
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vidcore.integrations.transformers import vidcore_attention_forward  # noqa: E402

LAYER = r"llama LlamaAttention \(layer 3\)"


@pytest.fixture
def module():
    """Stands in for a decoder attention layer: what the messages read from it."""
    layer = torch.nn.Module()
    layer.config, layer.layer_idx, layer.is_causal = SimpleNamespace(model_type="llama"), 3, True
    layer.__class__ = type("LlamaAttention", (torch.nn.Module,), {})
    return layer


def _qkv(value_dim=8):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 5, 8, generator=generator)
    k = torch.randn(1, 2, 5, 8, generator=generator)
    return q, k, torch.randn(1, 2, 5, value_dim, generator=generator)


@pytest.mark.parametrize("kwargs, feature", [
    (dict(dropout=0.1), r"attention dropout while training \(p=0.1\)"),
    (dict(output_attentions=True), r"returning attention weights \(output_attentions=True\)"),
    (dict(position_bias=torch.zeros(1, 4, 5, 5)), r"an additive position bias"),
    (dict(s_aux=torch.zeros(4)), r"a sink logit per head \(attention sinks\)"),
    (dict(sinks=torch.zeros(4)), r"a sink logit per head \(attention sinks\)"),
    (dict(indices=torch.zeros(1, 5, 2, dtype=torch.long)), r"sparse key selection"),
    (dict(cache=object()), r"a paged KV cache"),
])
def test_each_refusal_names_the_layer_and_its_feature(module, kwargs, feature):
    with pytest.raises(ValueError, match=rf"^vidcore attention: {LAYER}: {feature}.* is not "
                                         r"supported \(.*\); use attn_implementation='sdpa'"):
        vidcore_attention_forward(module, *_qkv(), None, **kwargs)


def test_one_feature_per_message(module):
    """Dropout and a position bias at once: the message names the first one only."""
    with pytest.raises(ValueError) as error:
        vidcore_attention_forward(module, *_qkv(), None, dropout=0.1,
                                  position_bias=torch.zeros(1, 4, 5, 5))
    assert "dropout" in str(error.value) and "position bias" not in str(error.value)


def test_value_head_dim_and_mask_type_are_checked(module):
    with pytest.raises(ValueError, match=rf"{LAYER}: a value head dim \(6\) different"):
        vidcore_attention_forward(module, *_qkv(value_dim=6), None)
    with pytest.raises(ValueError, match=rf"{LAYER}: an attention mask of type dict"):
        vidcore_attention_forward(module, *_qkv(), {"full_attention": None})


def test_dropout_refused_in_training_only(hf):
    config = hf.decoder_config("llama", attention_dropout=0.1)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="vidcore")
    ids, _ = hf.left_padded(1, 6, [0])
    with pytest.raises(ValueError, match=r"llama LlamaAttention \(layer 0\): attention dropout "
                                         r"while training \(p=0.1\)"):
        model.train()(input_ids=ids)
    with torch.no_grad():
        model.eval()(input_ids=ids)  # p = 0 in eval: runs


def test_t5_position_bias_is_refused(hf):
    config = transformers.T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                   num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration._from_config(
        config, attn_implementation="vidcore").eval()
    ids, _ = hf.left_padded(1, 6, [0])
    with pytest.raises(ValueError, match=r"t5 T5Attention \(layer 0\): an additive position "
                                         r"bias"):
        model(input_ids=ids, decoder_input_ids=ids)


def test_a_window_longer_than_the_sequence_runs(hf):
    """Mistral's default window (4096) cannot bind on 12 tokens: no refusal, sdpa's logits."""
    ours, theirs = hf.twins(lambda attn: transformers.AutoModelForCausalLM.from_config(
        hf.decoder_config("mistral", sliding_window=4096), attn_implementation=attn), "sdpa")
    ids, mask = hf.left_padded(2, 12, [0, 5])
    with torch.no_grad():
        got, expected = (model(input_ids=ids, attention_mask=mask).logits
                         for model in (ours, theirs))
    hf.assert_logits_match(got, expected, mask.bool())
