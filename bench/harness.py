"""What a benchmark case is, and how its providers are timed.

A case is one op at one shape with several providers: callables that do the same work the op's
way ("vidcore"), the reference's way ("reference", "compiled" = torch.compile of the reference)
or a peer's way ("seed_eager", "index_select", "sdpa_flash", ...). Speedups are against
`baseline`, GB/s from `bytes` (logical bytes read + written), TFLOP/s from `flops`.

Timing. CPU: perf_counter around each call, providers taking turns call by call. CUDA: CUDA events
around each call by `triton.testing.do_bench` (L2 flushed before each call), with no host
synchronisation inside the timed region, so a sample is what the device spent on the call
(launch gaps included: that is the eager cost a user pays); for fast calls also the per-call time
of a CUDA-graph replay, where launch overhead is gone.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

__all__ = ["BenchCase", "Timing", "shapes", "time_providers", "graph_seconds", "peak_memory_mib",
           "copy_provider", "copy_bandwidth_gbps", "synced", "compiled", "run_pytest_benchmark"]


@dataclass
class BenchCase:
    """`build()` allocates the inputs and returns {provider name: zero-argument callable}; it is
    called only when the case runs, so listing cases costs no memory."""

    op: str  # the public op it times, e.g. "pack" (`vidcore bench --ops pack`)
    name: str  # e.g. "B8-U64K"
    shape: dict[str, object]  # recorded in the JSON
    build: Callable[[], dict[str, Callable[[], object]]]
    providers: tuple[str, ...]  # the names build() returns, in report order
    bytes: int = 0  # logical bytes read + written by one call
    flops: int = 0  # floating-point operations of one call (attention)
    baseline: str = "reference"
    dtype: str = ""
    kernel_ops: tuple[str, ...] = ()  # the vidcore:: ops "vidcore" must run (default: (op,))


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one provider over its repeats."""

    median: float
    min: float
    reps: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        return cls(statistics.median(seconds), min(seconds), len(seconds))


def shapes(table: Mapping[str, list[tuple]], size: str | Mapping[str, object],
           dims: Mapping[str, object]) -> list[tuple]:
    """The shape tuples a bench module times: `table[size]` for a named size, or for the user's
    own dims (`vidcore bench --shape B=2,T=32`) one tuple of `dims`' defaults overridden by
    name. `dims` names the tuple's fields in order."""
    if isinstance(size, str):
        return list(table[size])
    return [tuple({**dims, **size}.values())]


def synced(fn: Callable[[], object], device: str) -> Callable[[], object]:
    """fn followed by a device synchronise, for host timers (pytest-benchmark) only: the runner's
    CUDA timings use events and must not sync inside the timed region."""
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


def _cuda_samples(fn: Callable[[], object]) -> list[float]:
    """Seconds of each timed call: CUDA events around fn() alone (do_bench, after warm-up)."""
    import triton.testing

    return [ms / 1e3 for ms in triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="all")]


def time_providers(fns: dict[str, Callable[[], object]], device: str, *,
                   clock: Callable[[], float] = time.perf_counter, min_time_s: float = 0.2,
                   min_reps: int = 5, max_reps: int = 1000) -> dict[str, Timing]:
    """Per-call timing of each provider after a warm-up call. On CPU the providers take turns,
    one call each per round, so a machine whose speed drifts (shared VMs vary up to 2x within
    seconds) slows every provider alike and their ratios hold; `clock` is injectable so tests can
    check the arithmetic with known times. On CUDA each provider is timed by do_bench."""
    if device == "cuda":
        return {name: Timing.of(_cuda_samples(fn)) for name, fn in fns.items()}
    for fn in fns.values():
        fn()  # warm-up: compilation, allocator, caches
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = clock()
    for reps in range(1, max_reps + 1):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append(clock() - t0)
        if reps >= min_reps and clock() - start >= min_time_s * len(fns):
            break
    stalled = [name for name, s in samples.items() if max(s) <= 0]
    if stalled:
        raise RuntimeError(f"bench: the clock did not advance while {stalled} ran: no timing")
    return {name: Timing.of(s) for name, s in samples.items()}


def graph_seconds(fn: Callable[[], object]) -> tuple[Timing | None, str | None]:
    """CUDA only: per-call time of fn replayed from a CUDA graph (do_bench_cudagraph), i.e.
    without launch overhead; (None, why) when fn cannot be captured. A provider that syncs with
    the host (a data-dependent size, a pageable copy) cannot be captured, so that is checked
    first, with torch's sync debug mode, instead of letting a capture fail half-way."""
    import triton.testing

    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError:
        return None, "syncs with the host"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    try:
        ms = triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="all")
    except RuntimeError as e:
        torch.cuda.synchronize()
        return None, f"not capturable: {str(e).splitlines()[0]}"
    return Timing.of([t / 1e3 for t in ms]), None


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


def copy_provider(nbytes: int, device: str) -> Callable[[], object]:
    """dst.copy_(src) moving `nbytes` in all (nbytes / 2 read, nbytes / 2 written): the ceiling
    a memory-bound op of that many logical bytes is measured against, at its own size, so that
    data which fit in a cache are compared with a copy that fits there too."""
    src = torch.empty(max(1, nbytes // 8), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 30) -> float:
    """Device copy bandwidth at a size far beyond the caches (read + write bytes per second /
    1e9), timed the way the providers are."""
    timing = time_providers({"copy": copy_provider(nbytes, device)}, device)["copy"]
    return nbytes / timing.median / 1e9


def run_pytest_benchmark(benchmark, case: BenchCase, provider: str, device: str) -> None:
    """One pytest-benchmark row: `benchmark.group` is the case, so rows compare providers.
    pytest-benchmark reads a host clock, so CUDA calls end with a sync here; the CUDA-event time
    is recorded as extra_info["cuda_us"]. The vidcore provider must run its op's kernel (see
    bench/dispatch.py) before it is timed."""
    from vidcore.bench.dispatch import check_dispatch

    fn = case.build()[provider]
    benchmark.group = f"{case.op}/{case.name}"
    benchmark.extra_info.update(provider=provider, device=device, dtype=case.dtype,
                                shape=case.shape, bytes=case.bytes, flops=case.flops)
    if provider == "vidcore":
        dispatch = check_dispatch(case, fn, device)
        benchmark.extra_info["dispatch"] = [d.as_dict() for d in dispatch]
    if device == "cuda":
        benchmark.extra_info["cuda_us"] = Timing.of(_cuda_samples(fn)).median * 1e6
    benchmark.pedantic(synced(fn, device), rounds=5, warmup_rounds=1, iterations=1)
