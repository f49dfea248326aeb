"""The `vidcore bench` runner: times every provider of every case of the chosen ops in one
process, prints time / spread / GB/s / TFLOP/s / speedup, and writes JSON + a PNG plot.

Bench modules register themselves: every bench/bench_*.py whose `OPS` names the public ops its
cases time (default: the module's name after `bench_`) is found by `available_ops()`, so an op
whose benchmark lands later appears in `vidcore bench --ops` without editing a list here.
Ratios measured side by side in one run are the figures that count; absolute times hold only
on the device that produced them.
"""
from __future__ import annotations

import datetime as dt
import functools
import gc
import importlib
import inspect
import json
import pkgutil
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import torch
from vidcore.bench.dispatch import check_dispatch, kernel_label
from vidcore.bench.harness import (
    BenchCase,
    copy_bandwidth_gbps,
    copy_provider,
    graph_seconds,
    peak_memory_mib,
    time_providers,
)
from vidcore.bench.report import plot_speedups, print_rows, progress

import vidcore
from vidcore import bench

__all__ = ["BenchError", "available_ops", "cases_for", "time_case", "run"]

SIZES = ("tiny", "small", "full")
GRAPH_BELOW_S = 100e-6  # CUDA-graph column for cases whose vidcore call is faster than this
_COPY = "_same_size_copy"  # timed alongside the providers, reported as copy_gbps


class BenchError(ValueError):
    """A request the benchmarks cannot honour (unknown op, no such device, bad --shape):
    `vidcore bench` prints it as one line."""


@functools.cache
def _modules() -> dict[str, ModuleType]:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    return {name: importlib.import_module(f"vidcore.bench.{name}") for name in names}


def available_ops() -> dict[str, ModuleType]:
    """Public op name -> the bench module that times it."""
    found = {}
    for name, module in _modules().items():
        for op in getattr(module, "OPS", (name.removeprefix("bench_"),)):
            found[op] = module
    return dict(sorted(found.items()))


def _parse_value(text: str, default: object) -> object:
    if isinstance(default, bool) or text.lower() in ("true", "false"):
        if text.lower() not in ("true", "false", "1", "0"):
            raise BenchError(f"--shape expects true or false, got {text!r}")
        return text.lower() in ("true", "1")
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if isinstance(default, int) and kind is float:
            raise BenchError(f"--shape expects an integer, got {text!r}")
        return value
    return None if text.lower() == "none" else text


def parse_shape(text: str, op: str, module: ModuleType) -> dict[str, object]:
    """`B=2,T=32,D=1024` -> {"B": 2, "T": 32, "D": 1024}, checked against the module's DIMS."""
    dims = getattr(module, "DIMS", None)
    if dims is None:
        raise BenchError(f"the {op} benchmark takes no --shape (its module has no DIMS)")
    shape = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in dims:
            raise BenchError(f"--shape {item!r} for {op}: expected NAME=VALUE with NAME in "
                             f"{', '.join(dims)}")
        shape[key.strip()] = _parse_value(value.strip(), dims[key.strip()])
    return shape


def cases_for(op: str, size: str, device: str, *, shape: str | None = None,
              dtype: torch.dtype | None = None) -> list[BenchCase]:
    """The cases of one op at a named size, or at the user's own --shape / --dtype."""
    module = available_ops()[op]
    kwargs = {}
    if dtype is not None:
        if "dtype" not in inspect.signature(module.cases).parameters:
            raise BenchError(f"the {op} benchmark takes no --dtype")
        kwargs["dtype"] = dtype
    chosen: str | Mapping[str, object] = size if shape is None else parse_shape(shape, op, module)
    return [case for case in module.cases(chosen, device, **kwargs) if case.op == op]


def time_case(case: BenchCase, device: str, *, clock: Callable[[], float] = time.perf_counter,
              copy: bool = True) -> list[dict[str, object]]:
    """One row per provider. The vidcore provider is first checked to run its op's kernel on
    `device` (bench/dispatch.py); a device copy of the case's bytes is timed alongside, so that
    "% of copy" compares like with like."""
    fns = case.build()
    timed = {name: fns[name] for name in case.providers}
    dispatch = check_dispatch(case, timed["vidcore"], device)
    if copy and case.bytes:
        timed[_COPY] = copy_provider(case.bytes, device)
    timings = time_providers(timed, device, clock=clock)
    copy_timing = timings.pop(_COPY, None)
    graphs = {}
    if device == "cuda" and timings["vidcore"].median < GRAPH_BELOW_S:
        graphs = {name: graph_seconds(fns[name]) for name in case.providers}
    peaks = {name: peak_memory_mib(fns[name], device) for name in case.providers}
    del fns, timed
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    copy_gbps = case.bytes / copy_timing.median / 1e9 if copy_timing else None
    rows = []
    for name, timing in timings.items():
        gbps = case.bytes / timing.median / 1e9 if case.bytes else None
        graph, graph_note = graphs.get(name, (None, None))
        rows.append({
            "op": case.op, "case": case.name, "shape": case.shape, "dtype": case.dtype,
            "provider": name, "kernel": kernel_label(dispatch) if name == "vidcore" else name,
            "median_us": timing.median * 1e6, "min_us": timing.min * 1e6, "reps": timing.reps,
            "graph_us": graph.median * 1e6 if graph else None, "graph_note": graph_note,
            "bytes": case.bytes, "gbps": gbps, "copy_gbps": copy_gbps,
            "fraction_of_copy": gbps / copy_gbps if gbps and copy_gbps else None,
            "tflops": case.flops / timing.median / 1e12 if case.flops else None,
            "speedup": timings[case.baseline].median / timing.median, "baseline": case.baseline,
            "peak_mib": peaks[name],
            "dispatch": [d.as_dict() for d in dispatch] if name == "vidcore" else None,
        })
    return rows


def _check_request(ops: list[str], device: str) -> None:
    unknown = [op for op in ops if op not in available_ops()]
    if unknown:
        raise BenchError(f"unknown op{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                         f"available: {', '.join(available_ops())}")
    if device not in ("cpu", "cuda"):
        raise BenchError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda, but torch sees no CUDA device here "
                         "(torch.cuda.is_available() is False)")


def check_out_dir(out_dir: Path | str) -> None:
    """A BenchError, before any run, when `out_dir` cannot become a results directory (it or an
    ancestor is a file); creates nothing, so a run that fails later leaves no empty folder."""
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise BenchError(f"cannot write results to {out}: {path} is not a directory")
            return


def _output_path(out_dir: Path | str, device_name: str, now: dt.datetime) -> Path:
    """<device>-<yyyymmdd>-<hhmmss>.json under `out_dir` (created if missing); a second run in
    the same second gets a suffix."""
    check_out_dir(out_dir)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"cannot write results to {out}: {e.strerror or e}") from None
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    stem = f"{slug}-{now:%Y%m%d-%H%M%S}"
    path, n = out / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = out / f"{stem}-{n}.json"
    return path


def run(ops: list[str] | None = None, size: str = "small", device: str | None = None,
        out_dir: Path | str = "bench/results", plot: bool = True, quiet: bool = False, *,
        shape: str | None = None, dtype: torch.dtype | None = None) -> dict[str, object]:
    """Benchmark `ops` (default: all) at `size` ("tiny", "small", "full"), or at the user's own
    `shape` ("B=2,T=32,...") and `dtype`, on `device` (default: cuda when present); returns the
    results and writes them as JSON (+ PNG) under `out_dir`. Raises BenchError for requests it
    cannot honour."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ops = ops or list(available_ops())
    _check_request(ops, device)
    if size not in SIZES:
        raise BenchError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    cases = [case for op in ops for case in cases_for(op, size, device, shape=shape, dtype=dtype)]
    about = vidcore.info()
    now = dt.datetime.now(dt.timezone.utc)
    results: dict[str, object] = {
        "device": about["device"] if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "versions": about["versions"], "date": now.isoformat(timespec="seconds"),
        "size": size if shape is None else f"custom {shape}", "dtype": str(dtype or "default"),
        "copy_bandwidth_gbps": copy_bandwidth_gbps(device, 1 << 31 if device == "cuda" else 1 << 29),
        "rows": [],
    }
    path = _output_path(out_dir, str(results["device"]), now)
    results["run_id"] = path.stem
    for case in progress(cases, quiet):
        rows = time_case(case, device)
        results["rows"].extend(rows)
        if not quiet:
            print_rows(rows)
    path.write_text(json.dumps(results, indent=1))
    results["json"] = str(path)
    if plot:
        png = plot_speedups(results, path.with_suffix(".png"))
        results["png" if png else "png_skipped"] = str(png or "matplotlib is not installed")
    return results
