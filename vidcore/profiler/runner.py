"""`vidcore.profile()` and `vidcore profile`: time and memory of every stage of a video LLM's
token pipeline on a real video (or synthetic frames), vidcore against the reference path, at one
frame count or over a sweep of frame counts; JSON + CSV + table + PNG like `vidcore bench`.

    import vidcore
    results = vidcore.profile("talk.mp4", sweep=[64, 256, 1024], preset="slowfast")
    results["points"][-1]["total_ms"]     # {"vidcore": ..., "reference": ...}
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vidcore.profiler import report
from vidcore.profiler.pipeline import Pipeline
from vidcore.profiler.presets import min_frames
from vidcore.profiler.sources import SourceError

__all__ = ["ProfileError", "ProfileConfig", "profile"]

SCHEMA_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ProfileError(ValueError):
    """A profile request that cannot run (bad argument, missing or unreadable video, no frames):
    `vidcore profile` prints it as one line and exits with status 2."""


@dataclass
class ProfileConfig:
    """Every setting of a profile (see `vidcore profile --help` for each)."""

    video: str | None = None
    synthetic: int | None = None  # frames of seeded noise instead of a file
    frames: int | None = None  # sample this many frames uniformly (default: every frame)
    fps: float | None = None  # or sample at this rate
    sweep: Sequence[int] | None = None  # frame counts, each sampled uniformly
    decoder: str = "pyav"
    vision: str | None = None  # HF vision config / checkpoint directory
    grid: tuple[int, int] = (16, 16)  # stand-in vision model's frame grid
    patch: int = 14
    dim: int = 1024
    preset: str = "slowfast"
    mask_ratio: float = 0.5
    text_tokens: int = 64
    head_dim: int = 64
    model: str | None = None
    device: str | None = None
    dtype: str | None = None  # default: bfloat16 on CUDA, float32 on CPU
    chunk: int = 64
    repeats: int = 3
    host_limit_gib: float | None = None  # default: half the memory available at the start
    threads: int | None = None  # CPU threads for torch (default: torch's)
    seed: int = 0

    def check(self) -> None:
        """ProfileError naming the first bad setting."""
        if (self.video is None) == (self.synthetic is None):
            raise ProfileError("give a video file or --synthetic FRAMES (one of the two)")
        if self.synthetic is not None:
            _positive("--synthetic", self.synthetic)
            if self.fps is not None:
                raise ProfileError("--fps needs a video file (synthetic frames have no rate)")
        if sum(x is not None for x in (self.frames, self.fps, self.sweep)) > 1:
            raise ProfileError("give at most one of --frames, --fps and --sweep")
        if self.frames is not None:
            _positive("--frames", self.frames)
        if self.fps is not None and not self.fps > 0:
            raise ProfileError(f"--fps must be > 0, got {self.fps}")
        if self.sweep is not None:
            if not self.sweep:
                raise ProfileError("--sweep needs at least one frame count")
            for count in self.sweep:
                _positive("--sweep", count)
        if self.threads is not None:
            _positive("--threads", self.threads)
        for name in ("patch", "dim", "chunk", "repeats", "head_dim"):
            _positive(f"--{name.replace('_', '-')}", getattr(self, name))
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ProfileError(f"--grid must be HxW with positive sides, got {self.grid}")
        if not 0 <= self.mask_ratio < 1:
            raise ProfileError(f"--mask-ratio must be in [0, 1), got {self.mask_ratio}")
        if self.text_tokens < 0:
            raise ProfileError(f"--text-tokens must be >= 0, got {self.text_tokens}")
        if self.device not in (None, "cpu", "cuda"):
            raise ProfileError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ProfileError("--device cuda, but torch sees no CUDA device here")
        if self.dtype not in (None, *_DTYPES):
            raise ProfileError(f"--dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.host_limit_gib is not None and not self.host_limit_gib > 0:
            raise ProfileError(f"--host-limit-gib must be > 0, got {self.host_limit_gib}")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProfileError(f"{name} must be a positive integer, got {value!r}")


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _build(cfg: ProfileConfig, device: str, dtype: torch.dtype):
    """(source, vision model, preset, prefill model) for the settings; ProfileError if any
    cannot be had."""
    from vidcore.profiler.presets import get_preset
    from vidcore.profiler.sources import PatchEmbedding, open_source, vision_model

    try:
        source = open_source(cfg.video, decoder=cfg.decoder, device=device,
                             synthetic_frames=cfg.synthetic, seed=cfg.seed)
        vision = (vision_model(cfg.vision) if cfg.vision else
                  PatchEmbedding(cfg.grid, cfg.patch, cfg.dim, seed=cfg.seed))
        preset = get_preset(cfg.preset)
        preset.check_grid(*vision.grid)
        prefill = None
        if cfg.model:
            from vidcore.profiler.prefill import load_prefill_model

            prefill = load_prefill_model(cfg.model, device=device, dtype=dtype, seed=cfg.seed)
    except (SourceError, ValueError) as e:
        raise ProfileError(str(e)) from e
    width = preset.channels(vision.dim)
    if width % cfg.head_dim or cfg.head_dim > 256:
        raise ProfileError(f"--head-dim {cfg.head_dim} must divide the pooled token width {width}"
                           f" and be <= 256")
    return source, vision.to(device=device, dtype=dtype).eval(), preset, prefill


def _summarise(frames: int, result: dict) -> dict:
    """Whole-pipeline time and peak memory of each path (shared stages count for both), the
    stages that ran out of memory, and the streamed pass's peak next to the size of every
    vision token (which it never holds at once)."""
    by_stage = report.provider_rows(result["rows"])
    point = {"frames": frames, "tokens": result["tokens"], "memory": result["memory"],
             "total_ms": {}, "peak_mib": {}, "out_of_memory": {}}
    for provider in report.PROVIDERS:
        rows = [by.get(provider, by.get(report.SHARED)) for by in by_stage.values()]
        rows = [r for r in rows if r is not None]
        failed = [r["stage"] for r in rows if r["status"] != "ok"]
        point["out_of_memory"][provider] = failed
        # after vidcore fails the stages that follow are skipped, so no path has a total
        incomplete = failed or point["out_of_memory"].get("vidcore")
        point["total_ms"][provider] = None if incomplete else sum(r["ms"] for r in rows)
        peaks = [r["peak_mib"] for r in rows if r["peak_mib"] is not None]
        point["peak_mib"][provider] = max(peaks) if peaks and not failed else None
    return point


def _first_oom(points: list[dict]) -> dict[str, dict | None]:
    first = {}
    for provider in report.PROVIDERS:
        hit = next((p for p in points if p["out_of_memory"][provider]), None)
        first[provider] = None if hit is None else {
            "frames": hit["frames"], "stages": hit["out_of_memory"][provider]}
    return first


def profile(video: str | os.PathLike | None = None, *, out_dir: str | os.PathLike | None = None,
            trace: str | os.PathLike | None = None, plot: bool = True, quiet: bool = True,
            **settings) -> dict[str, object]:
    """Profile `video` (or `synthetic=FRAMES`) with the ProfileConfig `settings`; returns the
    results (what the JSON holds). With `out_dir`, writes <device>-<date>-<time>.json, .csv,
    .txt (the tables) and .png (the sweep plot) there; with `trace`, a torch.profiler chrome
    trace (open it in Perfetto) with a named range per stage and path; `quiet=False` shows
    progress bars and each frame count's table (the CLI's way). Raises ProfileError for requests
    it cannot run."""
    cfg = ProfileConfig(video=None if video is None else os.fspath(video), **settings)
    cfg.check()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES[cfg.dtype] if cfg.dtype else (torch.bfloat16 if device == "cuda"
                                                  else torch.float32)
    source, vision, preset, prefill = _build(cfg, device, dtype)
    available = _available_bytes()
    limit = (int(cfg.host_limit_gib * 2**30) if cfg.host_limit_gib
             else None if available is None else available // 2)
    counts = list(cfg.sweep) if cfg.sweep else [cfg.synthetic if cfg.video is None else cfg.frames]
    fewest = min_frames(preset.name, *vision.grid)
    for count in counts:
        sampled = count or len(source.indices(None, cfg.fps))
        if sampled < fewest:
            raise ProfileError(f"preset {preset.name} needs at least {fewest} frames, got "
                               f"{sampled}")
    pipeline = Pipeline(source, vision, preset, device, dtype, cfg.chunk, cfg.mask_ratio,
                        cfg.text_tokens, cfg.head_dim, cfg.repeats, seed=cfg.seed, fps=cfg.fps,
                        host_limit_bytes=limit, prefill_model=prefill, trace=trace is not None)
    now = dt.datetime.now(dt.timezone.utc)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or threads)
    try:
        results = _header(cfg, device, dtype, source, vision, prefill, limit, now)
        _run(pipeline, counts, results, trace, device, quiet)
    finally:
        torch.set_num_threads(threads)
    results["out_of_memory"] = _first_oom(results["points"])
    if trace is not None:
        results["trace"] = os.fspath(trace)
    if out_dir is not None:
        _write(results, out_dir, now, plot)
    return results


def _run(pipeline: Pipeline, counts: list[int | None], results: dict, trace, device: str,
         quiet: bool) -> None:
    try:
        with torch.no_grad():
            pipeline.warm_up()
        with _tracing(trace, device), torch.no_grad(), _Progress(quiet) as progress:
            pipeline.progress = progress.decode
            for count in progress.points(counts):
                result = pipeline.run(count)
                point = _summarise(result["frames"], result)
                results["rows"].extend(result["rows"])
                results["points"].append(point)
                progress.print(report.stage_table(result, _title(results, point)))
    except SourceError as e:  # a read error mid-stream: a truncated file
        raise ProfileError(str(e)) from e


def _title(results: dict, point: dict) -> str:
    return (f"{results['source']['name']}: {point['frames']:,} frames, preset "
            f"{results['settings']['preset']}, {results['device']}")


def _header(cfg: ProfileConfig, device: str, dtype: torch.dtype, source, vision, prefill,
            limit: int | None, now: dt.datetime) -> dict[str, object]:
    import vidcore

    about = vidcore.info()
    settings = dataclasses.asdict(cfg)
    settings.update(device=device, dtype=str(dtype).removeprefix("torch."),
                    sweep=list(cfg.sweep) if cfg.sweep else None, grid=list(vision.grid),
                    dim=vision.dim)
    return {
        "kind": "vidcore profile", "schema_version": SCHEMA_VERSION,
        "device": about["device"] if device == "cuda" else
        f"cpu ({torch.get_num_threads()} threads)",
        "versions": about["versions"], "date": now.isoformat(timespec="seconds"),
        "settings": settings,
        "source": {"name": source.name, "path": source.path, "decoder": source.decoder
                   if source.path else None, "frames": source.total_frames,
                   "fps": source.fps or None},
        "vision": {"model": vision.label, "frame_size": vision.frame_size,
                   "grid": list(vision.grid), "dim": vision.dim},
        "prefill_model": None if prefill is None else prefill.label,
        "host_limit_mib": None if limit is None else limit / 2**20,
        "points": [], "rows": [],
    }


class _tracing:
    """torch.profiler around the run, exported as a chrome trace (nothing when path is None)."""

    def __init__(self, path: str | os.PathLike | None, device: str):
        self.path, self.device, self.profiler = path, device, None

    def __enter__(self) -> None:
        if self.path is None:
            return
        from torch.profiler import ProfilerActivity

        activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (self.device == "cuda")
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.__enter__()

    def __exit__(self, *exc) -> None:
        if self.profiler is None:
            return
        self.profiler.__exit__(*exc)
        if exc[0] is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.profiler.export_chrome_trace(os.fspath(self.path))


class _Progress:
    """Rich progress bars: frame counts of the sweep and frames decoded of the current one."""

    def __init__(self, quiet: bool):
        self.bar = None
        if not quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            from vidcore.bench.report import CONSOLE

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), console=CONSOLE)
        self._points = self._decode = None

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def points(self, counts: list[int | None]):
        if self.bar is not None:
            self._points = self.bar.add_task("frame counts", total=len(counts))
        for count in counts:
            if self.bar is not None:
                self._decode = self.bar.add_task(f"frames ({count or 'all'})", total=None)
            yield count
            if self.bar is not None:
                self.bar.advance(self._points)
                self.bar.remove_task(self._decode)

    def decode(self, stage: str, done: int, total: int) -> None:
        if self.bar is not None and self._decode is not None:
            self.bar.update(self._decode, completed=min(done, total), total=total)

    def print(self, renderable: object) -> None:
        if self.bar is not None:
            self.bar.console.print(renderable)


def tables(results: dict) -> list[object]:
    """The rich tables of a result: one per frame count, and the sweep summary."""
    by_frames: dict[int, list[dict]] = {}
    for row in results["rows"]:
        by_frames.setdefault(row["frames"], []).append(row)
    shown = [report.stage_table({"rows": by_frames.get(p["frames"], [])}, _title(results, p))
             for p in results["points"]]
    if len(results["points"]) > 1:
        shown.append(report.sweep_table(results))
    return shown


def _write(results: dict, out_dir: str | os.PathLike, now: dt.datetime, plot: bool) -> None:
    from vidcore.bench.runner import _output_path

    path = _output_path(out_dir, f"profile-{results['device']}", now)
    results["run_id"] = path.stem
    results["json"] = str(path)
    results["csv"] = str(report.write_csv(results["rows"], path.with_suffix(".csv")))
    text = path.with_suffix(".txt")
    text.write_text(report.as_text(*tables(results), report.LEGEND))
    results["table"] = str(text)
    if plot:
        png = report.plot_sweep(results, path.with_suffix(".png"))
        results["png" if png else "png_skipped"] = str(png or "matplotlib is not installed")
    path.write_text(json.dumps(results, indent=1))
