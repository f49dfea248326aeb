"""Time, peak memory and out-of-memory of one profiler stage.

Timing reuses the benchmarks' loop (vidcore.bench.harness.time_providers: a warm-up call, then
providers taking turns on CPU, CUDA events on GPU). Memory is measured per call, as the
benchmarks' `peak_memory_mib` does on CUDA: what the call allocates beyond what is live before
it, at its peak (workspace and outputs), and also the highest point since the frame count
started. On CUDA from torch's allocator statistics; on CPU from the resident set size and its
high-water mark (Linux /proc/self/status VmRSS and VmHWM, reset through /proc/self/clear_refs),
with freed heap memory handed back to the OS first so that the resident set counts live data.

Out of memory is caught, not suffered: on CUDA torch raises OutOfMemoryError; on CPU the stage
runs under an address-space limit (RLIMIT_AS, raised back afterwards) of `host_limit_bytes`
beyond what the process had mapped, so an allocation too large fails with an error instead of
swapping the machine or waking the OOM killer.
"""
from __future__ import annotations

import contextlib
import functools
import re
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["MemoryMeter", "host_limit", "is_out_of_memory", "timed_call", "time_stage",
           "StageTiming"]

_PROC_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    try:
        with open(_PROC_STATUS) as f:
            found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: freed memory the allocator keeps is counted
        return None


def _release_host_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so that the resident set
    size counts what is live, not what an earlier call freed and the allocator kept."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _reset_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryMeter:
    """Memory of calls on one device, in MiB. `measure(fn)` runs fn and returns its result and
    what it allocated beyond what was live before it, at its peak; `since_baseline_mib()` is the
    highest point any measured call reached above the memory at `set_baseline()` (the start of a
    frame count). None where memory cannot be read (a CPU without /proc)."""

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0
        self.highest: int | None = None

    def _current(self) -> int | None:
        if self.device == "cuda":
            return torch.cuda.memory_allocated()
        rss = _status_kib("VmRSS")
        return None if rss is None else rss * 1024

    def _peak(self) -> int | None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        hwm = _status_kib("VmHWM")
        return None if hwm is None else hwm * 1024

    def set_baseline(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        else:
            _release_host_memory()
        self.baseline, self.highest = self._current() or 0, None

    def measure(self, fn: Callable[[], object]) -> tuple[object, float | None]:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:  # freed pages go back first: memory the call reuses is counted, as on CUDA
            _release_host_memory()
            _reset_host_peak()
        before = self._current()
        result = fn()
        peak = self._peak()
        if peak is None or before is None:
            return result, None
        self.highest = peak if self.highest is None else max(self.highest, peak)
        return result, max(0, peak - before) / 2**20

    def since_baseline_mib(self) -> float | None:
        return None if self.highest is None else max(0, self.highest - self.baseline) / 2**20


def _mapped_bytes() -> int | None:
    size = _status_kib("VmSize")
    return None if size is None else size * 1024


@contextlib.contextmanager
def host_limit(limit_bytes: int | None) -> Iterator[None]:
    """Caps the process's address space at what it maps now + `limit_bytes` (None: no cap)."""
    mapped = _mapped_bytes() if limit_bytes else None
    if mapped is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = mapped + limit_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, a failed CPU allocation (RuntimeError from torch's
    allocator, MemoryError from Python or NumPy)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error)
                                                or "out of memory" in str(error).lower())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_call(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """(seconds, result) of one call, the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


@dataclass
class StageTiming:
    """One provider of one stage: seconds (median) and min over `reps` calls, peak MiB, and
    'ok' or why it did not run ('out of memory')."""

    seconds: float | None = None
    min_seconds: float | None = None
    reps: int = 0
    peak_mib: float | None = None
    status: str = "ok"
    output: object = None


def _guarded(fn: Callable[[], object], device: str, limit: int | None) -> tuple[bool, object]:
    """(True, fn()) or, when it runs out of memory, (False, None); other errors propagate."""
    try:
        with host_limit(limit if device == "cpu" else None):
            return True, fn()
    except Exception as e:  # only running out of memory is caught; the rest re-raise
        if not is_out_of_memory(e):
            raise
        _release(device)
        return False, None


def time_stage(fns: dict[str, Callable[[], object]], device: str, meter: MemoryMeter, *,
               repeats: int, host_limit_bytes: int | None) -> dict[str, StageTiming]:
    """Each provider's first call measures the memory it allocates and keeps its output (or
    records that it ran out of memory); those that ran are then timed together by
    time_providers (one by one if together they no longer fit)."""
    from vidcore.bench.harness import time_providers

    def timings_of(chosen: dict[str, Callable[[], object]]):
        return lambda: time_providers(chosen, device, min_time_s=0.0, min_reps=repeats,
                                      max_reps=repeats)

    results = {name: StageTiming() for name in fns}
    for name, fn in fns.items():
        ran, measured = _guarded(functools.partial(meter.measure, fn), device, host_limit_bytes)
        if ran:
            results[name].output, results[name].peak_mib = measured
        else:
            results[name].status = "out of memory"
    ok = {name: fns[name] for name, r in results.items() if r.status == "ok"}
    together, timings = _guarded(timings_of(ok), device, host_limit_bytes) if ok else (True, {})
    if not together:
        timings = {}
        for name, fn in ok.items():
            ran, timing = _guarded(timings_of({name: fn}), device, host_limit_bytes)
            if ran:
                timings.update(timing)
            else:
                results[name].status = "out of memory"
    for name, timing in timings.items():
        results[name].seconds, results[name].min_seconds = timing.median, timing.min
        results[name].reps = timing.reps
    return results


def _release(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
