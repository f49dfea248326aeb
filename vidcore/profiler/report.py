"""Tables, CSV and the sweep plot of `vidcore profile` results (the dict `profile()` returns and
writes as JSON). Same console and conventions as `vidcore bench` (vidcore.bench.report)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["LEGEND", "SHARED", "stage_table", "sweep_table", "write_csv", "plot_sweep",
           "as_text", "provider_rows"]

PROVIDERS = ("vidcore", "reference")
SHARED = "shared"  # stages one implementation runs for both paths (decode, a stand-in vision)
LEGEND = (
    "ms: CPU perf_counter around each call (CUDA: events), device synchronised; streamed stages "
    "(decode, vision, pool) are one pass over the video, summed over its chunks; the other "
    "stages the median of --repeats calls after a warm-up call.\n"
    "speedup: reference ms / vidcore ms, measured side by side in this run.\n"
    "MiB: memory one call allocates beyond what is live before it, at its peak (workspace and "
    "output; streamed stages: the most over their chunks). CPU: resident set high-water mark; "
    "CUDA: torch's allocator. OOM: out of memory under the cap.\n"
    "tokens: in>out of the stage (attention: keys>queries). max diff: largest difference "
    "between the two paths' outputs (data movement: 0).\n"
    "sweep: vidcore / ref MiB = the most any one call of that path allocated; stream MiB = the "
    "peak of the whole decode + vision + pool pass above the memory at the start of the frame "
    "count; tokens MiB = what every vision token of the video would take if held at once (it "
    "never is)."
)


def provider_rows(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """stage -> {provider: row}; a stage with one implementation gets it under SHARED."""
    stages: dict[str, dict[str, dict]] = {}
    for row in rows:
        provider = row["provider"] if row["provider"] in PROVIDERS else SHARED
        stages.setdefault(row["stage"], {})[provider] = row
    return stages


def _ms(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return "OOM" if row["status"] == "out of memory" else row["status"]
    return f"{row['ms']:.1f}"


def _mib(row: dict | None) -> str:
    return "-" if row is None or row["peak_mib"] is None else f"{row['peak_mib']:.0f}"


def _diff(value: float | None) -> str:
    return "-" if value is None else ("0" if value == 0 else f"{value:.1e}")


def stage_table(point: dict, title: str) -> Table:
    """One line per stage of one frame count: both paths' time and peak memory, the speedup,
    the two outputs' largest difference and what vidcore ran."""
    table = Table(title=title, title_justify="left")
    for column in ("stage", "tokens", "vidcore ms", "ref ms", "speedup", "vidcore MiB",
                   "ref MiB", "max diff", "vidcore ran"):
        table.add_column(column, justify="left" if column in ("stage", "vidcore ran") else "right",
                         no_wrap=column != "vidcore ran")
    for stage, by in provider_rows(point["rows"]).items():
        fast = by.get("vidcore", by.get(SHARED))
        ref = by.get("reference", by.get(SHARED))
        speedup = fast.get("speedup") if "vidcore" in by else None
        table.add_row(stage, f"{fast['tokens_in']:,}>{fast['tokens_out']:,}", _ms(fast),
                      _ms(ref), "-" if speedup is None else f"{speedup:.2f}x", _mib(fast),
                      _mib(ref), _diff(fast["max_abs_diff"]), str(fast["kernel"]))
    return table


def _total(value: float | None) -> str:
    return "OOM" if value is None else f"{value:.1f}"


def sweep_table(results: dict) -> Table:
    """One line per frame count: tokens after pooling / masking, whole-pipeline time and peak
    memory of each path, and which stages ran out of memory."""
    table = Table(title=f"sweep: {results['source']['name']}, preset {results['settings']['preset']}"
                        f", {results['device']}", title_justify="left")
    for column in ("frames", "pooled", "kept", "vidcore ms", "ref ms", "speedup", "vidcore MiB",
                   "ref MiB", "stream MiB", "tokens MiB", "out of memory"):
        table.add_column(column, justify="right" if column != "out of memory" else "left")
    for point in results["points"]:
        total, peak, oom = point["total_ms"], point["peak_mib"], point["out_of_memory"]
        memory = point["memory"]
        speedup = (f"{total['reference'] / total['vidcore']:.2f}x"
                   if total["vidcore"] and total["reference"] else "-")
        table.add_row(f"{point['frames']:,}", f"{point['tokens'].get('pooled', 0):,}",
                      f"{point['tokens'].get('kept', point['tokens'].get('pooled', 0)):,}",
                      _total(total["vidcore"]), _total(total["reference"]), speedup,
                      _mib({"peak_mib": peak["vidcore"]}), _mib({"peak_mib": peak["reference"]}),
                      _mib({"peak_mib": memory["streamed_pass_mib"]}),
                      f"{memory['all_vision_tokens_mib']:,.0f}",
                      "; ".join(f"{p}: {', '.join(s)}" for p, s in oom.items() if s) or "none")
    return table


def as_text(*renderables: object) -> str:
    """Renderables as plain text (the table file next to the JSON)."""
    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None)
    for item in renderables:
        console.print(item)
    return out.getvalue()


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Every row (one per frame count, stage and provider) with the JSON's keys as columns."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def plot_sweep(results: dict, png: str | Path) -> Path | None:
    """Whole-pipeline time and memory against frames, log-log, one line per path (memory: the
    largest call), with the streamed pass's peak and the size of every vision token beside
    them; a path's out-of-memory frame counts are marked with an x on the axis floor. None
    without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = results["points"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "total_ms", "pipeline time (ms)"),
                           (axes[1], "peak_mib", "memory (MiB)")):
        for provider, style in zip(PROVIDERS, ("o-", "s--"), strict=True):
            ran = [(p["frames"], p[key][provider]) for p in points if p[key][provider]]
            if ran:
                ax.plot(*zip(*ran, strict=True), style,
                        label=provider if key == "total_ms" else f"{provider}: largest call")
            failed = [p["frames"] for p in points if p["out_of_memory"][provider]]
            if failed:
                ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "x", color="red", markersize=10,
                        clip_on=False, label=f"{provider} out of memory")
        if key == "peak_mib":
            streamed = [(p["frames"], p["memory"]["streamed_pass_mib"]) for p in points
                        if p["memory"]["streamed_pass_mib"]]
            if streamed:
                ax.plot(*zip(*streamed, strict=True), "^-", color="grey",
                        label="streamed pass, peak above start")
            ax.plot([p["frames"] for p in points],
                    [p["memory"]["all_vision_tokens_mib"] for p in points], ":", color="black",
                    label="all vision tokens (never held)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    settings = results["settings"]
    fig.suptitle(f"vidcore profile: {results['source']['name']}, preset {settings['preset']}, "
                 f"mask {settings['mask_ratio']}, {results['device']} ({results['date'][:10]})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
