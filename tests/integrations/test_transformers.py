"""attn_implementation="vidcore": tiny Llama and Qwen2 give the logits of "sdpa" on packed and
on padded inputs."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import vidcore.integrations.transformers  # noqa: E402,F401  registers "vidcore"
from vidcore.testing import assert_close  # noqa: E402

CONFIGS = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
}


def tiny_model(kind: str, attn: str) -> torch.nn.Module:
    config = CONFIGS[kind](vocab_size=97, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=128)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.mark.parametrize("kind", CONFIGS)
def test_packed_sequences_match_sdpa_per_sequence(kind):
    lengths = [5, 9, 1]
    ids = [torch.randint(0, 97, (1, n)) for n in lengths]
    vidcore_model, sdpa_model = tiny_model(kind, "vidcore"), tiny_model(kind, "sdpa")
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = vidcore_model(input_ids=torch.cat(ids, 1), position_ids=positions).logits
        expected = torch.cat([sdpa_model(input_ids=i).logits for i in ids], 1)
    assert_close(packed, expected, dtype=torch.float32)


@pytest.mark.parametrize("kind", CONFIGS)
def test_padded_batch_matches_sdpa(kind):
    ids = torch.randint(0, 97, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0  # right padding
    vidcore_model, sdpa_model = tiny_model(kind, "vidcore"), tiny_model(kind, "sdpa")
    with torch.no_grad():
        got = vidcore_model(input_ids=ids, attention_mask=mask).logits
        expected = sdpa_model(input_ids=ids, attention_mask=mask).logits
    valid = mask.bool()
    assert_close(got[valid], expected[valid], dtype=torch.float32)


def test_flash_attention_kwargs_are_used():
    model, sdpa_model = tiny_model("llama", "vidcore"), tiny_model("llama", "sdpa")
    ids = torch.randint(0, 97, (1, 10))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]]),
                    cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=6, max_length_k=6).logits
        expected = torch.cat([sdpa_model(input_ids=ids[:, :4]).logits,
                              sdpa_model(input_ids=ids[:, 4:]).logits], 1)
    assert_close(got, expected, dtype=torch.float32)


def test_greedy_generation_with_kv_cache_matches_sdpa():
    # Decoding: one query against a growing cache (bottom-right causal, Lq != Lk).
    prompt = torch.randint(0, 97, (1, 6))
    outputs = [tiny_model("qwen2", attn).generate(prompt, max_new_tokens=5, do_sample=False)
               for attn in ("vidcore", "sdpa")]
    assert torch.equal(*outputs)
