"""Tiny random Hugging Face models on attn_implementation="vidcore", each with a twin holding the
same weights on transformers' own sdpa (or eager, where sdpa lacks the feature): the oracle.
Built once per session; tests that change a model (training, dtype) work on copies."""
import copy
import functools
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import vidcore.integrations.transformers  # noqa: E402,F401  registers "vidcore"
from vidcore.testing import assert_close, assert_no_worse_than_torch  # noqa: E402

VOCAB = 97
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=128, pad_token_id=0, bos_token_id=None, eos_token_id=None)
# name -> (config class, config overrides, oracle attention). Windows (5) are shorter than the
# test sequences; Gemma2's larger weights make its scores big enough for softcap 1.0 to bind.
DECODERS = {
    "llama": ("LlamaConfig", {}, "sdpa"),
    "mistral": ("MistralConfig", dict(sliding_window=5), "sdpa"),
    "qwen2": ("Qwen2Config", {}, "sdpa"),
    "gemma2": ("Gemma2Config", dict(sliding_window=5, attn_logit_softcapping=1.0,
                                    final_logit_softcapping=None, query_pre_attn_scalar=8,
                                    initializer_range=0.2),
               "eager"),
    "gemma3": ("Gemma3TextConfig", dict(sliding_window=5, query_pre_attn_scalar=8,
                                        layer_types=["sliding_attention", "full_attention"]),
               "sdpa"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the threads'
    hand-offs cost 10x the work: run these tests on one thread, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def decoder_config(name: str, **overrides) -> transformers.PretrainedConfig:
    config_class, extra, _ = DECODERS[name]
    return getattr(transformers, config_class)(**{**_DECODER, **extra, **overrides})


def twins(build, reference: str):
    """(vidcore model, oracle model) with identical weights; build(attn) -> model."""
    torch.manual_seed(0)
    ours = build("vidcore").eval()
    theirs = build(reference).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@functools.cache
def decoder_twins(name: str):
    def build(attn):
        return transformers.AutoModelForCausalLM.from_config(decoder_config(name),
                                                             attn_implementation=attn)
    return twins(build, DECODERS[name][2])


@pytest.fixture(params=list(DECODERS))
def decoder(request):
    """(name, vidcore model, oracle model) for each decoder LLM."""
    return (request.param, *decoder_twins(request.param))


def assert_logits_match(ours, theirs, valid: torch.Tensor | None = None) -> None:
    """fp32 logits (or hidden states) of the valid positions match within the fp32 tolerance."""
    if valid is not None:
        ours, theirs = ours[valid], theirs[valid]
    assert_close(ours, theirs, dtype=torch.float32)


def assert_same_generation(ours, theirs, cache: str, max_new_tokens: int = 8, **inputs) -> None:
    """Greedy generation with `cache` ("dynamic" or "static"): the same tokens, and per-step
    logits within the fp32 tolerance."""
    results = [model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                              cache_implementation=cache, output_logits=True,
                              return_dict_in_generate=True, disable_compile=True)
               for model in (ours, theirs)]
    assert torch.equal(results[0].sequences, results[1].sequences)
    for step_ours, step_theirs in zip(results[0].logits, results[1].logits, strict=True):
        assert_close(step_ours, step_theirs, dtype=torch.float32)


def assert_same_gradients(ours, theirs, **batch) -> None:
    """One training step on copies of both models: loss and every parameter's gradient match."""
    ours, theirs = copy.deepcopy(ours).train(), copy.deepcopy(theirs).train()
    losses = [model(**batch).loss for model in (ours, theirs)]
    for loss in losses:
        loss.backward()
    assert_close(losses[0], losses[1], dtype=torch.float32)
    grads = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if param.grad is not None or grads[name].grad is not None:
            assert_close(param.grad, grads[name].grad, dtype=torch.float32)


def assert_bf16_no_worse(ours, theirs, batch: dict) -> None:
    """bf16 logits: vidcore's error against the fp32 oracle is at most twice the oracle's own
    bf16 error (plus bf16's atol), over the valid positions."""
    with torch.no_grad():
        reference = theirs(**batch).logits
        got, expected = (copy.deepcopy(model).to(torch.bfloat16)(**batch).logits
                         for model in (ours, theirs))
    valid = batch.get("decoder_attention_mask", batch["attention_mask"]).bool()
    assert_no_worse_than_torch(got[valid], expected[valid], reference[valid])


def training_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels of the valid tokens, except each row's first valid token after left padding: the
    logits that predict it come from a padding position, whose output is undefined (sdpa gives
    0, eager a uniform average)."""
    previous_valid = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=1).bool()
    return ids.masked_fill(~mask.bool() | ~previous_valid, -100)


def left_padded(batch: int, length: int, pads: list[int], seed: int = 1):
    """Random ids and a 2-D mask whose row b has pads[b] padding tokens on the left."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


@pytest.fixture(scope="session")
def hf() -> SimpleNamespace:
    """The helpers above, for test modules (they cannot import conftest in importlib mode)."""
    return SimpleNamespace(
        VOCAB=VOCAB, decoder_config=decoder_config, twins=twins, decoder_twins=decoder_twins,
        assert_logits_match=assert_logits_match, assert_same_generation=assert_same_generation,
        assert_same_gradients=assert_same_gradients, assert_bf16_no_worse=assert_bf16_no_worse,
        training_labels=training_labels,
        left_padded=left_padded)
