"""Tables and plots of benchmark results (the dicts `runner.run` returns and writes as JSON)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["print_rows", "plot_speedups"]


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_rows(rows: list[dict[str, object]]) -> None:
    """One table per case: provider, kernel, time, GB/s, TFLOP/s, share of copy bandwidth,
    speedup over the case's baseline and (on CUDA) the memory one call allocates."""
    from rich.console import Console
    from rich.table import Table

    first = rows[0]
    table = Table(title=f"{first['op']} {first['case']} {first['dtype']}  "
                        f"(speedup vs {first['baseline']})", title_justify="left")
    columns = ["provider", "kernel", "median us", "GB/s", "TFLOP/s", "% of copy", "speedup"]
    with_memory = any(row.get("peak_mib") is not None for row in rows)
    for column in columns + ["peak MiB"] * with_memory:
        table.add_column(column, justify="left" if column in ("provider", "kernel") else "right")
    for row in rows:
        fraction = row["fraction_of_copy"]
        cells = [str(row["provider"]), str(row["kernel"]), _fmt(row["median_us"], ".1f"),
                 _fmt(row["gbps"], ".1f"), _fmt(row["tflops"], ".1f"),
                 _fmt(None if fraction is None else 100 * fraction, ".0f"),
                 _fmt(row["speedup"], ".2f") + "x"]
        table.add_row(*cells, *[_fmt(row.get("peak_mib"), ".0f")] * with_memory)
    Console(width=120).print(table)


def plot_speedups(results: dict[str, object] | str | Path, png: str | Path) -> Path:
    """Bar chart: speedup of each provider over the baseline, one group of bars per case."""
    import matplotlib

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
