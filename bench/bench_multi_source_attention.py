"""multi_source_attention (ActionLLM's Cross-Modality Interaction Block): three modalities,
nine attention maps with their own softmax, contexts averaged per query modality.

Baselines, measured in the same run: the seed's code (actionllm/model.py Multi_Attention: per
pair matmul, softmax, matmul, then the mean; autograd keeps the nine score matrices), SDPA per
pair, the reference and torch.compile of the seed's code. Forward alone and forward + backward
(as in training). TFLOP/s: 4 * B * H * d * (query-key pairs) forward, 2.5x that backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark

from vidcore.ops import multi_source_attention

# (name, B, H, d, text, video, future): ActionLLM's CMIB (width 128, 32 heads of 4) on
# Breakfast (8 future queries) and 50Salads (20), observed lengths of a few hundred frames
SHAPES = {
    "tiny": [("actionllm", 1, 2, 4, 8, 8, 2)],
    "small": [("actionllm-breakfast", 1, 32, 4, 128, 128, 8)],
    "full": [("actionllm-breakfast", 1, 32, 4, 512, 512, 8),
             ("actionllm-50salads", 1, 32, 4, 700, 700, 20),
             ("d64-batch8", 8, 8, 64, 256, 1024, 32)],
}


def seed_way(queries, keys, values):
    outs = []
    for q in queries:
        contexts = [torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
                    for k, v in zip(keys, values, strict=True)]
        outs.append(sum(contexts) / len(contexts))
    return outs


def sdpa_way(queries, keys, values):
    return [sum(F.scaled_dot_product_attention(q, k, v) for k, v in zip(keys, values, strict=True))
            / len(keys) for q in queries]


def cases(size: str, device: str) -> list[BenchCase]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def make(name, batch, heads, dim, *lengths) -> list[BenchCase]:
        pairs = sum(lengths) ** 2  # every modality attends to every modality
        flops = 4 * batch * heads * dim * pairs
        shape = {"B": batch, "H": heads, "d": dim, "lengths": list(lengths)}

        def build(backward: bool):
            def make_sources():
                return [torch.randn(batch, heads, n, dim, device=device, dtype=dtype,
                                    requires_grad=backward) for n in lengths]

            q, k, v = make_sources(), make_sources(), make_sources()
            seed_compiled = compiled(seed_way)

            def run(fn):
                if not backward:
                    return lambda: fn(q, k, v)

                def step():
                    sum(o.float().sum() for o in fn(q, k, v)).backward()
                return step

            return {"seed_eager": run(seed_way), "sdpa": run(sdpa_way),
                    "compiled": run(seed_compiled),
                    "reference": run(lambda *a: multi_source_attention(*a, backend="torch")),
                    "vidcore": run(multi_source_attention)}

        providers = ("seed_eager", "sdpa", "compiled", "reference", "vidcore")
        return [
            BenchCase("multi_source_attention", f"fwd-{name}", shape, lambda: build(False),
                      providers, flops=flops, baseline="seed_eager",
                      dtype=str(dtype).removeprefix("torch.")),
            BenchCase("multi_source_attention", f"fwd+bwd-{name}", shape, lambda: build(True),
                      providers, flops=int(3.5 * flops), baseline="seed_eager",
                      dtype=str(dtype).removeprefix("torch."),
                      kernel_ops=("multi_source_attention", "multi_source_attention_backward")),
        ]

    return [case for shape in SHAPES[size] for case in make(*shape)]


def test_multi_source_attention(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
