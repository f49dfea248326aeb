"""torch.compile with attn_implementation="vidcore": a model's forward compiles with
fullgraph=True (mask building included) and static-cache generation compiles its decoding
step, both matching eager. CI traces with aot_eager (dynamo + AOT autograd + fake tensors: every
graph break or fake-tensor mismatch shows); the inductor runs are marked slow."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

BACKENDS = ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["llama", pytest.param("gemma3", marks=pytest.mark.slow)])
def test_forward_compiles_fullgraph(hf, name, backend):
    ours, _ = hf.decoder_twins(name)
    ids, mask = hf.left_padded(2, 9, [0, 3])
    compiled = torch.compile(ours, fullgraph=True, backend=backend)
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask).logits
        expected = ours(input_ids=ids, attention_mask=mask).logits
    hf.assert_logits_match(got, expected, mask.bool())


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_cache_generation_compiles(hf, backend):
    """generate() compiles the decoding step on a static cache (fullgraph) when asked to on
    CPU; tokens and per-step logits match uncompiled generation."""
    ours, _ = hf.decoder_twins("llama")
    ids, mask = hf.left_padded(2, 9, [0, 3])
    config = transformers.CompileConfig(fullgraph=True, backend=backend, mode=None)
    config._compile_all_devices = True  # transformers compiles on CUDA only by default
    runs = []
    for compile_config, disable in ((config, False), (None, True)):
        runs.append(ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                                  do_sample=False, cache_implementation="static",
                                  compile_config=compile_config, disable_compile=disable,
                                  output_logits=True, return_dict_in_generate=True))
    assert hasattr(ours, "_compiled_call")  # the decoding step ran compiled
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for compiled_step, eager_step in zip(runs[0].logits, runs[1].logits, strict=True):
        hf.assert_logits_match(compiled_step, eager_step)
