"""cosine_consistency_loss (ST-LLM's MVM loss), forward + backward as in training.

Baselines, measured in the same run: the seed's code (stllm/models/st_llm.py:56-92: normalise
both sides, 2 - 2 * rowwise dot, mean; autograd keeps the normalised copies), the reference and
torch.compile of it. bytes: a and b read twice (forward, backward) and both gradients written.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark

from vidcore import reference
from vidcore.ops import cosine_consistency_loss

# (rows N, width D): ST-LLM's visible video tokens of a batch (16 samples x ~256) at 4096
SHAPES = {
    "tiny": [(64, 32)],
    "small": [(1024, 1024), (4096, 1024)],
    "full": [(4096, 4096), (16 * 512, 4096), (65536, 1024)],
}


def seed_way(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_hat, b_hat = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    return (2 - 2 * (a_hat * b_hat).sum(dim=-1)).mean()


def cases(size: str, device: str) -> list[BenchCase]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def make(rows: int, dim: int) -> BenchCase:
        def build():
            a = torch.randn(rows, dim, device=device, dtype=dtype, requires_grad=True)
            b = torch.randn(rows, dim, device=device, dtype=dtype, requires_grad=True)
            ref = compiled(reference.cosine_consistency_loss)

            def train_step(loss_fn):
                def step():
                    a.grad = b.grad = None
                    loss_fn(a, b).backward()
                return step

            return {
                "seed_eager": train_step(seed_way),
                "compiled": train_step(ref),
                "reference": train_step(lambda x, y: cosine_consistency_loss(x, y, backend="torch")),
                "vidcore": train_step(cosine_consistency_loss),
            }

        itemsize = torch.finfo(dtype).bits // 8
        return BenchCase("cosine_consistency_loss", f"fwd+bwd-N{rows}-D{dim}",
                         {"N": rows, "D": dim}, build,
                         ("seed_eager", "compiled", "reference", "vidcore"),
                         bytes=6 * rows * dim * itemsize, baseline="seed_eager",
                         dtype=str(dtype).removeprefix("torch."),
                         kernel_ops=("cosine_consistency_loss", "cosine_consistency_loss_backward"))

    return [make(*shape) for shape in SHAPES[size]]


def test_cosine_consistency_loss(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
