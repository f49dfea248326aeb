"""What a benchmark case is, and how one provider of it is timed.

A case is one op at one named shape with several providers: callables that do the same work
the op's way ("vidcore"), the reference's way ("reference", "compiled" = torch.compile of the
reference) or a peer's way ("seed_eager", "index_select", "sdpa_flash", ...). Speedups are
against `baseline`, GB/s from `bytes` (logical bytes read + written), TFLOP/s from `flops`.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["BenchCase", "time_provider", "time_providers", "peak_memory_mib",
           "copy_bandwidth_gbps", "synced", "compiled", "run_pytest_benchmark"]


@dataclass
class BenchCase:
    """`build()` allocates the inputs and returns {provider name: zero-argument callable}; it is
    called only when the case runs, so listing cases costs no memory."""

    op: str  # e.g. "unit_keys"
    name: str  # e.g. "B8-U64K"
    shape: dict[str, object]  # recorded in the JSON
    build: Callable[[], dict[str, Callable[[], object]]]
    providers: tuple[str, ...]  # the names build() returns, in report order
    bytes: int = 0  # logical bytes read + written by one call
    flops: int = 0  # floating-point operations of one call (attention)
    baseline: str = "reference"
    dtype: str = ""
    kernel_ops: tuple[str, ...] = ()  # the vidcore ops the "vidcore" provider runs (default: op)


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """fn followed by a device synchronise, so that host timers measure the device's work."""
    if device != "cuda":
        return fn

    def run() -> object:
        result = fn()
        torch.cuda.synchronize()
        return result

    return run


def compiled(fn: Callable[..., object]) -> Callable[..., object]:
    """torch.compile as the baseline to beat: static shapes, default (Inductor) backend."""
    return torch.compile(fn, dynamic=False)


def _do_bench_cuda(fn: Callable[[], object]) -> float:
    """Median seconds per call by triton.testing.do_bench (CUDA events, L2 flushed between
    runs, after warm-up)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3


def time_provider(fn: Callable[[], object], device: str, *, min_time_s: float = 0.2,
                  min_reps: int = 5, max_reps: int = 1000) -> float:
    """Median seconds per call after warm-up (see time_providers)."""
    if device == "cuda":
        return _do_bench_cuda(fn)
    return time_providers({"fn": fn}, device, min_time_s=min_time_s, min_reps=min_reps,
                          max_reps=max_reps)["fn"]


def time_providers(fns: dict[str, Callable[[], object]], device: str, *,
                   min_time_s: float = 0.2, min_reps: int = 5, max_reps: int = 1000
                   ) -> dict[str, float]:
    """Median seconds per call of each provider. On CPU (perf_counter) the providers take turns,
    one call each per round, so that a machine whose speed drifts (shared VMs vary up to 2x
    within seconds) slows every provider alike and their ratios hold; on CUDA each is timed by
    do_bench."""
    if device == "cuda":
        return {name: _do_bench_cuda(fn) for name, fn in fns.items()}
    for fn in fns.values():
        fn()  # warm-up: compilation, allocator, caches
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for reps in range(1, max_reps + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if reps >= min_reps and time.perf_counter() - start >= min_time_s * len(fns):
            break
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory_mib(fn: Callable[[], object], device: str) -> float | None:
    """Device memory one call allocates beyond what is live before it (its workspace and
    outputs), in MiB: what "memory linear in sequence length" is checked with. None on CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second / 1e9): the
    ceiling that memory-bound ops are reported against."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_provider(lambda: dst.copy_(src), device)
    return 2 * nbytes / seconds / 1e9


def run_pytest_benchmark(benchmark, case: BenchCase, provider: str, device: str) -> None:
    """One pytest-benchmark row: `benchmark.group` is the case, so rows compare providers."""
    fn = synced(case.build()[provider], device)
    benchmark.group = f"{case.op}/{case.name}"
    benchmark.extra_info.update(provider=provider, device=device, dtype=case.dtype,
                                shape=case.shape, bytes=case.bytes, flops=case.flops)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
