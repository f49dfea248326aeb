"""Tables, progress and plots of benchmark results (the dicts `runner.run` returns and writes as
JSON)."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

__all__ = ["LEGEND", "progress", "print_rows", "plot_speedups"]

CONSOLE = Console(width=120)
LEGEND = (
    "median us: median over the repeats (CPU: perf_counter, providers taking turns; CUDA: CUDA "
    "events, no host sync inside)\n"
    "min/med: fastest repeat over the median (1.00 = no spread; low = noisy timing)\n"
    "graph us (CUDA, fast cases): per call when replayed from a CUDA graph, launch overhead gone\n"
    "% of copy: GB/s over that of a device copy (dst.copy_(src)) of the same bytes timed in the "
    "same loop;\n  above 100% means the op beat torch's own copy at this size (small sizes: "
    "fixed per-call costs dominate both)\n"
    "kernel: what the vidcore provider ran, traced before timing (vidcore:: op + dispatch key)"
)


def progress(cases: list, quiet: bool = False) -> Iterator:
    """Yields the cases under a rich progress bar: the case being timed, how many are done, time
    elapsed and the ETA (nothing is shown when quiet); the column legend follows the last."""
    if quiet:
        yield from cases
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=CONSOLE) as bar:
        task = bar.add_task("bench", total=len(cases))
        for case in cases:
            bar.update(task, description=f"{case.op} {case.name}")
            yield case
            bar.advance(task)
    CONSOLE.print(LEGEND, style="dim", highlight=False)


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_rows(rows: list[dict[str, object]]) -> None:
    """One table per case: provider, kernel, time and its spread, CUDA-graph time, GB/s, TFLOP/s,
    share of a same-size copy, speedup over the case's baseline and (CUDA) the memory one call
    allocates. The columns are explained by LEGEND."""
    first = rows[0]
    copy = f", same-size copy {first['copy_gbps']:.1f} GB/s" if first.get("copy_gbps") else ""
    table = Table(title=f"{first['op']} {first['case']} {first['dtype']}  (speedup vs "
                        f"{first['baseline']}{copy})", title_justify="left")
    columns = ["provider", "kernel", "median us", "min/med"]
    columns += ["graph us"] * any(row.get("graph_us") is not None for row in rows)
    columns += ["GB/s", "TFLOP/s", "% of copy", "speedup"]
    columns += ["peak MiB"] * any(row.get("peak_mib") is not None for row in rows)
    for column in columns:
        table.add_column(column, justify="left" if column in ("provider", "kernel") else "right")
    for row in rows:
        fraction = row["fraction_of_copy"]
        cells = {
            "provider": str(row["provider"]), "kernel": str(row["kernel"]),
            "median us": _fmt(row["median_us"], ".1f"),
            "min/med": _fmt(row["min_us"] / row["median_us"], ".2f"),
            "graph us": _fmt(row.get("graph_us"), ".1f"),
            "GB/s": _fmt(row["gbps"], ".1f"), "TFLOP/s": _fmt(row["tflops"], ".1f"),
            "% of copy": _fmt(None if fraction is None else 100 * fraction, ".0f"),
            "speedup": _fmt(row["speedup"], ".2f") + "x", "peak MiB": _fmt(row.get("peak_mib"), ".0f"),
        }
        table.add_row(*(cells[c] for c in columns))
    CONSOLE.print(table)


def plot_speedups(results: dict[str, object] | str | Path, png: str | Path) -> Path | None:
    """Bar chart: speedup of each provider over the baseline, one group of bars per case.
    None when matplotlib (the `bench` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    rows = results["rows"]
    cases = list(dict.fromkeys(f"{r['op']}\n{r['case']}" for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cases)), 4.0))
    for i, provider in enumerate(providers):
        by_case = {f"{r['op']}\n{r['case']}": r["speedup"] for r in rows if r["provider"] == provider}
        xs = [c + i * width for c in range(len(cases))]
        ax.bar(xs, [by_case.get(c, 0.0) for c in cases], width, label=provider)
    ax.set_yscale("log")  # ratios: 0.5x and 2x are equally far from parity
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))], cases, fontsize=7)
    ax.set_ylabel("speedup vs baseline (higher is better)")
    ax.set_title(f"vidcore on {results['device']} ({results['date'][:10]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)
