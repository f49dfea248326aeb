"""unit_keys: per-unit mask keys for a batch of videos (a pure write: 8 bytes per key)."""
from __future__ import annotations

import torch
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark, shapes

from vidcore import reference
from vidcore.ops import unit_keys

# (videos, units per video): ST-LLM training batch (8 x 64 frames x 256 tokens) and a long video
SHAPES = {
    "tiny": [(1, 64)],
    "small": [(8, 64 * 256)],
    "full": [(8, 64 * 256), (1, 8192 * 256)],
}
DIMS = {"videos": 8, "units": 64 * 256}  # `vidcore bench --shape videos=1,units=65536`


def cases(size: str | dict[str, object], device: str) -> list[BenchCase]:
    def make(videos: int, units: int) -> BenchCase:
        def build():
            index = torch.arange(videos, device=device)
            ref = compiled(reference.unit_keys)
            return {
                "reference": lambda: reference.unit_keys(index, 7, units),
                "compiled": lambda: ref(index, 7, units),
                "vidcore": lambda: unit_keys(7, index, units),
            }

        return BenchCase("unit_keys", f"B{videos}-U{units}", {"videos": videos, "units": units},
                         build, ("reference", "compiled", "vidcore"), bytes=8 * videos * units,
                         dtype="int64")

    return [make(*shape) for shape in shapes(SHAPES, size, DIMS)]


def test_unit_keys(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
