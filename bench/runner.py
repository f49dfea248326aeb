"""The `vidcore bench` runner: times every provider of every case of the chosen ops in one
process, prints time / GB/s / TFLOP/s / speedup, and writes JSON + a PNG plot.

Ratios measured side by side in one run are the figures that count; absolute times hold only
on the device that produced them.
"""
from __future__ import annotations

import datetime as dt
import gc
import importlib
import json
import pkgutil
import re
from pathlib import Path

import torch
from vidcore.bench.harness import (
    BenchCase,
    copy_bandwidth_gbps,
    peak_memory_mib,
    synced,
    time_providers,
)

import vidcore
from vidcore import bench
from vidcore.info import backend_status

__all__ = ["available_ops", "run"]


def available_ops() -> list[str]:
    """Ops with a bench/bench_<op>.py module."""
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(bench.__path__)
                  if m.name.startswith("bench_"))


def _cases(op: str, size: str, device: str) -> list[BenchCase]:
    return importlib.import_module(f"vidcore.bench.bench_{op}").cases(size, device)


def _time_case(case: BenchCase, device: str, kernels: dict[str, str],
               copy_gbps: float | None) -> list[dict[str, object]]:
    fns = case.build()
    seconds = time_providers({name: synced(fns[name], device) for name in case.providers}, device)
    peaks = {name: peak_memory_mib(fns[name], device) for name in case.providers}
    del fns
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    kernel = " + ".join(kernels[op] for op in case.kernel_ops or (case.op,))
    rows = []
    for name, sec in seconds.items():
        gbps = case.bytes / sec / 1e9 if case.bytes else None
        rows.append({
            "op": case.op, "case": case.name, "shape": case.shape, "dtype": case.dtype,
            "provider": name, "kernel": kernel if name == "vidcore" else name,
            "median_us": sec * 1e6, "bytes": case.bytes, "gbps": gbps,
            "tflops": case.flops / sec / 1e12 if case.flops else None,
            "fraction_of_copy": gbps / copy_gbps if gbps and copy_gbps else None,
            "speedup": seconds[case.baseline] / sec, "baseline": case.baseline,
            "peak_mib": peaks[name],
        })
    return rows


def run(ops: list[str] | None = None, size: str = "small", device: str | None = None,
        out_dir: Path | str = "bench/results", plot: bool = True, quiet: bool = False
        ) -> dict[str, object]:
    """Benchmark `ops` (default: all) at `size` ("tiny", "small", "full") on `device`
    (default: cuda when present); returns the results and writes them under `out_dir`."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ops = ops or available_ops()
    unknown = sorted(set(ops) - set(available_ops()))
    if unknown:
        raise ValueError(f"bench: unknown ops {unknown}; available: {available_ops()}")
    about = vidcore.info()
    kernels = {row.op: row.kernel for row in backend_status() if row.device == device}
    copy_gbps = copy_bandwidth_gbps(device, 1 << 30 if device == "cuda" else 1 << 28)
    results: dict[str, object] = {
        "device": about["device"] if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "versions": about["versions"], "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "size": size, "copy_bandwidth_gbps": copy_gbps, "rows": [],
    }
    for op in ops:
        for case in _cases(op, size, device):
            rows = _time_case(case, device, kernels, copy_gbps)
            results["rows"].extend(rows)
            if not quiet:
                from vidcore.bench.report import print_rows

                print_rows(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", str(results["device"]).lower()).strip("-")
    path = out / f"{slug}-{dt.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(results, indent=1))
    results["json"] = str(path)
    if plot:
        from vidcore.bench.report import plot_speedups

        results["png"] = str(plot_speedups(results, path.with_suffix(".png")))
    return results
