"""Time, peak memory and out-of-memory of one profiler stage.

Timing reuses the benchmarks' loop (vidcore.bench.harness.time_providers: a warm-up call, then
providers taking turns on CPU, CUDA events on GPU). Memory is the peak above what the process
held when the frame count started: on CUDA torch's allocator statistics, on CPU the resident set
size's high-water mark (Linux /proc/self/status VmHWM, reset through /proc/self/clear_refs).

Out of memory is caught, not suffered: on CUDA torch raises OutOfMemoryError; on CPU the stage
runs under an address-space limit (RLIMIT_AS, raised back afterwards) of `host_limit_bytes`
beyond what the process had mapped, so an allocation too large fails with an error instead of
swapping the machine or waking the OOM killer.
"""
from __future__ import annotations

import contextlib
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


def _release_host_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so that the resident set
    size counts what is live, not what an earlier stage freed and the allocator kept."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline includes kept free memory
        pass


def _reset_host_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory in MiB above a baseline taken by `set_baseline()` (the start of a frame
    count), over the calls between `reset()` and `peak_mib()`. None where it cannot be read
    (CPU on a system without /proc)."""

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0

    def _current(self) -> int | None:
        if self.device == "cuda":
            return torch.cuda.memory_allocated()
        rss = _status_kib("VmRSS")
        return None if rss is None else rss * 1024

    def set_baseline(self) -> None:
        if self.device != "cuda":
            _release_host_memory()
        self.baseline = self._current() or 0

    def reset(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_host_peak()

    def peak_mib(self) -> float | None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            hwm = _status_kib("VmHWM")
            if hwm is None:
                return None
            peak = hwm * 1024
        return max(0, peak - self.baseline) / 2**20


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


def time_stage(fns: dict[str, Callable[[], object]], device: str, meter: MemoryMeter, *,
               repeats: int, host_limit_bytes: int | None) -> dict[str, StageTiming]:
    """Each provider's first call measures its peak memory and keeps its output (or records that
    it ran out of memory); those that ran are then timed together by time_providers."""
    from vidcore.bench.harness import time_providers

    results = {name: StageTiming() for name in fns}
    for name, fn in fns.items():
        meter.reset()
        try:
            with host_limit(host_limit_bytes if device == "cpu" else None):
                results[name].output = fn()
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            results[name].status = "out of memory"
            _release(device)
            continue
        results[name].peak_mib = meter.peak_mib()
    ran = {name: fns[name] for name, r in results.items() if r.status == "ok"}
    try:
        with host_limit(host_limit_bytes if device == "cpu" else None):
            timings = time_providers(ran, device, min_time_s=0.0, min_reps=repeats,
                                     max_reps=repeats) if ran else {}
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        _release(device)  # together they no longer fit: time them one by one
        timings = {}
        for name, fn in ran.items():
            try:
                with host_limit(host_limit_bytes if device == "cpu" else None):
                    timings.update(time_providers({name: fn}, device, min_time_s=0.0,
                                                  min_reps=repeats, max_reps=repeats))
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                results[name].status = "out of memory"
                _release(device)
    for name, timing in timings.items():
        results[name].seconds, results[name].min_seconds = timing.median, timing.min
        results[name].reps = timing.reps
    return results


def _release(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
