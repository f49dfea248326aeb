"""The `vidcore` command: `vidcore info` (versions, device, live backends and why others are
not) and `vidcore bench` (time every op against its baselines; JSON + PNG under bench/results)."""
from __future__ import annotations

import argparse
import json
import sys


def _print_info(as_json: bool) -> None:
    import vidcore

    about = vidcore.info()
    if as_json:
        print(json.dumps(about, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    versions = ", ".join(f"{k} {v}" for k, v in about["versions"].items())
    console.print(f"[bold]vidcore[/bold]  {versions}\ndevice: {about['device']}\n"
                  f"extension: {about['extension']}")
    table = Table(title="backends", title_justify="left")
    for column in ("op", "device", "kernel", "live", "why"):
        table.add_column(column)
    for row in about["backends"]:
        table.add_row(row["op"], row["device"], row["kernel"], "yes" if row["live"] else "no",
                      row["reason"] or "")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidcore", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device and which backends are live")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench = sub.add_parser("bench", help="time each op against the reference and its peers")
    bench.add_argument("--ops", help="comma-separated op names (default: all)")
    bench.add_argument("--size", default="small", choices=["tiny", "small", "full"])
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    bench.add_argument("--out", default="bench/results", help="folder for the JSON and PNG")
    bench.add_argument("--no-plot", action="store_true")
    from vidcore.models import chat  # import-light: models load when the command runs

    chat.add_arguments(sub.add_parser("chat", help="answer a question about a video with a "
                                      "trained ST-LLM / MiniGPT4-Video"))
    args = parser.parse_args(argv)
    if args.command == "info":
        _print_info(args.json)
        return 0
    if args.command == "chat":
        return chat.run(args)
    from vidcore.bench.runner import run

    results = run(args.ops.split(",") if args.ops else None, args.size, args.device, args.out,
                  plot=not args.no_plot)
    print(f"copy bandwidth {results['copy_bandwidth_gbps']:.1f} GB/s; wrote {results['json']}"
          + (f" and {results['png']}" if "png" in results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
