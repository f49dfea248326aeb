"""The `vidcore` command: `vidcore info` (versions, device, live backends and why others are
not), `vidcore bench` (time every op against its baselines; JSON + PNG under bench/results),
`vidcore profile` (every stage of a video's token pipeline, vidcore against the reference path,
over frame counts; JSON + CSV + PNG under report/), `vidcore plan` (frames that fit a context)
and `vidcore chat`.

Exit status: 0 on success, 2 for a request that cannot be honoured (printed as one line on
stderr, no traceback), 141 (128 + SIGPIPE, as other Unix tools) when the reader of stdout went
away, e.g. `vidcore info --json | head -1`: then it stops quietly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]

_DTYPES = ("float32", "bfloat16", "float16", "float64")


def _info(args: argparse.Namespace) -> int:
    import vidcore

    about = vidcore.info()
    if args.json:
        print(json.dumps(about, indent=1))
    else:
        from rich.console import Console

        Console(width=120).print(about.rich_table())
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from vidcore.bench.runner import run

    ops = [op.strip() for op in args.ops.split(",") if op.strip()] if args.ops else None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    results = run(ops, args.size, args.device, args.out, plot=not args.no_plot, shape=args.shape,
                  dtype=dtype)
    png = f" and {results['png']}" if "png" in results else ""
    note = f" (no PNG: {results['png_skipped']})" if "png_skipped" in results else ""
    print(f"copy bandwidth {results['copy_bandwidth_gbps']:.1f} GB/s; wrote {results['json']}"
          f"{png}{note}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device and which backends are live")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(handler=_info)
    bench = sub.add_parser("bench", help="time each op against the reference and its peers")
    bench.add_argument("--ops", help="comma-separated op names, as vidcore.ops names them "
                                     "(default: every op with a benchmark)")
    bench.add_argument("--size", default="small", choices=["tiny", "small", "full"],
                       help="named shapes (default: small)")
    bench.add_argument("--shape", help="your own sizes instead of --size, by the op's dimension "
                                       "names, e.g. B=8,T=64,H=16,W=16,D=1024")
    bench.add_argument("--dtype", choices=_DTYPES, help="input dtype (default: the op's own)")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    bench.add_argument("--out", default="bench/results",
                       help="folder for <device>-<date>-<time>.json and .png")
    bench.add_argument("--no-plot", action="store_true")
    bench.set_defaults(handler=_bench)
    from vidcore.models import chat  # import-light: models load when the command runs

    chat_parser = sub.add_parser("chat", help="answer a question about a video with a trained "
                                 "ST-LLM / MiniGPT4-Video")
    chat.add_arguments(chat_parser)
    chat_parser.set_defaults(handler=chat.run)
    from vidcore.profiler import commands

    profile = sub.add_parser("profile", help="time and memory of every stage of a video's token "
                             "pipeline, vidcore against the reference, over frame counts")
    commands.add_profile_arguments(profile)
    profile.set_defaults(handler=commands.run_profile)
    plan = sub.add_parser("plan", help="how many frames fit a context under each pooling preset")
    commands.add_plan_arguments(plan)
    plan.set_defaults(handler=commands.run_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from vidcore.bench.runner import BenchError
    from vidcore.profiler.runner import ProfileError

    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except (BenchError, ProfileError) as e:
        print(f"vidcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader left: point stdout at /dev/null so the interpreter's final flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
