"""The `vidcore profile` and `vidcore plan` subcommands: their arguments, and how they print."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_profile_arguments", "run_profile", "add_plan_arguments", "run_plan"]

_PRESET_HELP = ("pooling preset: st_llm_global_local, slowfast, video_chatgpt, llava_next_video, "
                "minigpt4_video or none")


def _grid(text: str) -> tuple[int, int]:
    from vidcore.profiler.runner import ProfileError

    height, sep, width = text.lower().partition("x")
    try:
        return (int(height), int(width)) if sep else (int(text), int(text))
    except ValueError:
        raise ProfileError(f"--grid expects HxW (e.g. 16x16), got {text!r}") from None


def _counts(text: str) -> list[int]:
    from vidcore.profiler.runner import ProfileError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ProfileError(f"--sweep expects frame counts like 256,1024,4096, got {text!r}") \
            from None


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", nargs="?", help="a video file (anything FFmpeg decodes)")
    parser.add_argument("--synthetic", type=int, metavar="FRAMES",
                        help="profile this many frames of seeded noise instead of a file")
    sampling = parser.add_argument_group("frames (at most one; default: every frame)")
    sampling.add_argument("--frames", type=int, help="sample this many frames uniformly")
    sampling.add_argument("--fps", type=float, help="sample at this rate")
    sampling.add_argument("--sweep", help="frame counts to profile in turn, e.g. 256,1024,4096 "
                                          "(frames repeat when a count exceeds the video's)")
    parser.add_argument("--decoder", default="pyav", choices=["pyav", "torchcodec"],
                        help="torchcodec when installed (system FFmpeg; NVDEC on a GPU)")
    vision = parser.add_argument_group("vision tokens (default: a patch-embedding stand-in)")
    vision.add_argument("--vision", metavar="PATH", help="a transformers vision model: a "
                        "directory with config.json (weights optional: random without)")
    vision.add_argument("--grid", default="16x16", help="stand-in tokens per frame, HxW")
    vision.add_argument("--patch", type=int, default=14, help="stand-in patch size in pixels")
    vision.add_argument("--dim", type=int, default=1024, help="stand-in token width")
    parser.add_argument("--preset", default="slowfast", help=_PRESET_HELP + " (default slowfast)")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="share of the pooled "
                        "tokens masked out (random, ST-LLM style); 0 skips the stage")
    parser.add_argument("--text-tokens", type=int, default=64,
                        help="text tokens: the cross-attention queries, appended for self-attention")
    parser.add_argument("--head-dim", type=int, default=64, help="attention head size")
    parser.add_argument("--model", metavar="DIR", help="a save_pretrained directory (vidcore "
                        "ST-LLM / MiniGPT4-Video or any causal LM): adds the LLM prefill stage")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--chunk", type=int, default=64, help="frames decoded and pooled at once")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage")
    parser.add_argument("--host-limit-gib", type=float, help="host memory a stage may add "
                        "before it counts as out of memory (default: half of what is available)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 "
                        "gives steadier timings on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", metavar="FILE", help="write a chrome trace (torch.profiler; "
                        "open in Perfetto) with a named range per stage and path")
    parser.add_argument("--out", default="report", help="folder for the JSON, CSV, table and PNG")
    parser.add_argument("--no-plot", action="store_true")


def run_profile(args: argparse.Namespace) -> int:
    from vidcore.bench.report import CONSOLE
    from vidcore.profiler import report
    from vidcore.profiler.runner import profile, tables

    results = profile(args.video, synthetic=args.synthetic, frames=args.frames, fps=args.fps,
                      sweep=_counts(args.sweep) if args.sweep is not None else None,
                      decoder=args.decoder, vision=args.vision, grid=_grid(args.grid),
                      patch=args.patch, dim=args.dim, preset=args.preset,
                      mask_ratio=args.mask_ratio, text_tokens=args.text_tokens,
                      head_dim=args.head_dim, model=args.model, device=args.device,
                      dtype=args.dtype, chunk=args.chunk, repeats=args.repeats,
                      host_limit_gib=args.host_limit_gib, threads=args.threads, seed=args.seed,
                      trace=args.trace, out_dir=args.out, plot=not args.no_plot, quiet=False)
    if len(results["points"]) > 1:
        CONSOLE.print(tables(results)[-1])
    CONSOLE.print(report.LEGEND, style="dim", highlight=False)
    for provider, hit in results["out_of_memory"].items():
        if hit:
            print(f"{provider} runs out of memory at {hit['frames']:,} frames "
                  f"({', '.join(hit['stages'])})")
    written = [results[k] for k in ("json", "csv", "table", "png", "trace") if k in results]
    print("wrote " + ", ".join(written))
    return 0


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", type=int, required=True, help="tokens the prompt may take "
                        "(MiniGPT4-Video's max_context_len: 3600 Llama-2, 7200 Mistral)")
    parser.add_argument("--preset", help=_PRESET_HELP + " (default: every preset)")
    parser.add_argument("--grid", default="16x16", help="the vision model's tokens per frame, "
                        "HxW (CLIP ViT-L/14 at 224 px: 16x16)")
    share = parser.add_mutually_exclusive_group()
    share.add_argument("--text-tokens", type=int, help="tokens kept for text")
    share.add_argument("--visual-share", type=float, help="share of the context for video "
                       "tokens (default 0.8, MiniGPT4-Video's 2880 of 3600)")
    parser.add_argument("--duration", type=float, help="video length in seconds: prints the "
                        "sampling rate the frames imply")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_plan(args: argparse.Namespace) -> int:
    from vidcore.profiler.plan import plan
    from vidcore.profiler.runner import ProfileError

    try:
        plans = plan(args.context, preset=args.preset, grid=_grid(args.grid),
                     text_tokens=args.text_tokens, visual_share=args.visual_share,
                     duration=args.duration)
    except ValueError as e:
        raise ProfileError(str(e)) from e
    if args.json:
        print(json.dumps([p.as_dict() for p in plans], indent=1))
        return 0
    from rich.table import Table

    from vidcore.bench.report import CONSOLE

    first = plans[0]
    table = Table(title=f"context {first.context:,} tokens: {first.visual_budget:,} for video, "
                        f"{first.text_tokens:,} for text; {args.grid} = "
                        f"{first.tokens_per_frame} tokens per frame", title_justify="left")
    for column in ("preset", "frames that fit", "video tokens", "tokens per view", "fps"):
        table.add_column(column, justify="left" if column in ("preset", "tokens per view")
                         else "right")
    for p in plans:
        if p.frames is None:
            frames = f"any (>= {p.min_frames})" if p.fits else "none"
        else:
            frames = f"{p.frames:,}"
        views = "\n".join(f"{tokens:>7,}  {view}" for view, tokens in p.views)
        fps = "-" if p.fps is None else f"{p.fps:.3g}"
        table.add_row(p.preset, frames, f"{p.visual_tokens:,}" + ("" if p.fits else " (too many)"),
                      views, fps)
    CONSOLE.print(table)
    return 0
