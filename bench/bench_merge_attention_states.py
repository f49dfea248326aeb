"""merge_attention_states: combine two partial attention results (memory-bound: reads two outputs
and two lse, writes one of each)."""
from __future__ import annotations

import torch
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark, shapes

from vidcore import reference
from vidcore.ops import merge_attention_states

# (rows, heads, head dim): a long-video shard (64 frames x 256 tokens, 32 heads x 128), a text
# query block, and a tiny shape where launch overhead decides
SHAPES = {
    "tiny": [(16, 2, 32)],
    "small": [(512, 8, 64), (4096, 16, 128)],
    "full": [(512, 32, 128), (16384, 32, 128), (65536, 8, 128)],
}
DIMS = {"rows": 4096, "heads": 16, "head_dim": 128}  # `vidcore bench --shape rows=...`


def cases(size: str | dict[str, object], device: str, dtype: torch.dtype | None = None
          ) -> list[BenchCase]:
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)

    def make(rows: int, heads: int, dim: int) -> BenchCase:
        def build():
            out_a, out_b = (torch.randn(rows, heads, dim, device=device, dtype=dtype)
                            for _ in range(2))
            lse_a, lse_b = (torch.randn(heads, rows, device=device) for _ in range(2))
            args = (out_a, lse_a, out_b, lse_b)
            ref = compiled(reference.merge_attention_states)
            return {
                "reference": lambda: reference.merge_attention_states(*args),
                "compiled": lambda: ref(*args),
                "vidcore": lambda: merge_attention_states(*args),
            }

        itemsize = torch.finfo(dtype).bits // 8
        nbytes = 3 * rows * heads * dim * itemsize + 3 * rows * heads * 4
        return BenchCase("merge_attention_states", f"N{rows}-H{heads}-d{dim}",
                         {"rows": rows, "heads": heads, "head_dim": dim}, build,
                         ("reference", "compiled", "vidcore"), bytes=nbytes,
                         dtype=str(dtype).removeprefix("torch."))

    return [make(*shape) for shape in shapes(SHAPES, size, DIMS)]


def test_merge_attention_states(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
