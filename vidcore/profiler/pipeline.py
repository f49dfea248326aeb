"""One profiled frame count: the stages, each run by vidcore and, side by side, by the
reference path on the same input.

    decode -> vision tokens -> pool (preset)      streamed chunk by chunk (one pass)
    -> mask (ratio) -> cross attention (text queries over the video tokens)
    -> self attention (causal, over video + text) -> prefill (with a model)

The data flows on through vidcore's outputs; each reference call gets the same input, and the
largest difference between the two outputs is recorded. A stage that runs out of memory is
recorded as such; when vidcore's does, the stages after it are skipped.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vidcore.ops import attention, mask_and_pack
from vidcore.profiler.measure import (
    MemoryMeter,
    StageTiming,
    host_limit,
    is_out_of_memory,
    time_stage,
    timed_call,
)
from vidcore.profiler.presets import min_frames
from vidcore.profiler.stream import StreamingPool

__all__ = ["Pipeline"]

PROVIDERS = ("vidcore", "reference")


def _kernel_labels() -> dict[tuple[str, str], str]:
    from vidcore.info import backend_status

    return {(row.op, row.device): row.kernel for row in backend_status()}


@dataclass
class Pipeline:
    """Everything one frame count needs (built once per profile): the source, the vision
    model, the preset, sizes, and the helpers that measure."""

    source: object  # sources.VideoSource
    vision: torch.nn.Module  # sources.PatchEmbedding or sources.HFVision
    preset: object  # presets.Preset
    device: str
    dtype: torch.dtype
    chunk: int
    mask_ratio: float
    text_tokens: int
    head_dim: int
    repeats: int
    seed: int = 0
    fps: float | None = None
    host_limit_bytes: int | None = None
    prefill_model: object = None  # prefill.PrefillModel
    trace: bool = False
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None
    _kernels: dict = field(default_factory=_kernel_labels)

    # ---- helpers ------------------------------------------------------------------------
    def _ranged(self, name: str, fn: Callable[[], object]) -> Callable[[], object]:
        """fn inside a named torch.profiler range (in --trace files) when tracing."""
        if not self.trace:
            return fn

        def run() -> object:
            with torch.profiler.record_function(f"vidcore.profile/{name}"):
                return fn()

        return run

    def _kernel(self, op: str) -> str:
        """What vidcore runs for `op` on this device: 'pool (C++)', 'attention (Triton)', ..."""
        return f"{op} ({self._kernels.get((op, self.device), 'reference')})"

    @staticmethod
    def _diff(a: object, b: object) -> float | None:
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.shape != b.shape:
            return None
        if a.numel() == 0:
            return 0.0
        return float((a.float() - b.float()).abs().max())

    def _row(self, frames: int, stage: str, provider: str, kernel: str, timing: StageTiming,
             tokens_in: int, tokens_out: int, how: str) -> dict[str, object]:
        ms = None if timing.seconds is None else timing.seconds * 1e3
        return {"frames": frames, "stage": stage, "provider": provider, "kernel": kernel,
                "tokens_in": tokens_in, "tokens_out": tokens_out, "ms": ms,
                "min_ms": None if timing.min_seconds is None else timing.min_seconds * 1e3,
                "reps": timing.reps, "timing": how, "peak_mib": timing.peak_mib,
                "status": timing.status, "speedup": None, "max_abs_diff": None}

    def _compare(self, frames: int, stage: str, timings: dict[str, StageTiming], kernel: str,
                 tokens_in: int, tokens_out: int) -> list[dict]:
        """Rows of a two-provider stage timed by time_stage."""
        fast, ref = timings["vidcore"], timings["reference"]
        how = "median of repeats" if self.device == "cpu" else "median (CUDA events)"
        rows = [self._row(frames, stage, "vidcore", kernel, fast, tokens_in, tokens_out, how),
                self._row(frames, stage, "reference", "reference path", ref, tokens_in,
                          tokens_out, how)]
        _pair(rows, self._diff(_first(fast.output), _first(ref.output)))
        return rows

    # ---- the streamed stages ------------------------------------------------------------
    def _stream(self, frames: int, indices: list[int], meter: MemoryMeter
                ) -> tuple[list[dict], dict[str, Tensor] | None]:
        """decode -> vision -> pool, chunk by chunk: the rows of the three stages, and each
        path's pooled tokens (None when the pass ran out of memory)."""
        pools = {name: StreamingPool(self.preset, frames, *self.vision.grid, self.vision.dim,
                                     dtype=self.dtype, device=self.device, backend=backend)
                 for name, backend in zip(PROVIDERS, ("auto", "torch"), strict=True)}
        vision = self._vision_providers()
        totals = _Totals(meter, self.device)
        status = "ok"
        try:
            with host_limit(self.host_limit_bytes if self.device == "cpu" else None):
                chunks = iter(self.source.frames(indices, self.vision.frame_size, self.chunk))
                decode = self._ranged("decode", lambda: _next_on(chunks, self.device))
                while (batch := totals.timed("decode", self.source.decoder, decode)) is not None:
                    self._stream_chunk(batch, vision, pools, totals)
                    self.progress("decode", totals.chunks * self.chunk, frames)
        except Exception as e:  # only running out of memory is recorded; the rest re-raise
            if not is_out_of_memory(e):
                raise
            status = "out of memory"
        ok = status == "ok"
        how = f"one pass, sum over {totals.chunks} chunks"

        def row(stage: str, name: str, kernel: str, tokens_in: int, tokens_out: int) -> dict:
            seconds = totals.seconds[stage, name] if ok else None
            timing = StageTiming(seconds, seconds, totals.chunks, totals.peaks.get((stage, name)),
                                 status)
            return self._row(frames, stage, name, kernel, timing, tokens_in, tokens_out, how)

        cells = frames * self.vision.grid[0] * self.vision.grid[1]
        rows = [row("decode", self.source.decoder, self.source.decoder, 0, frames)
                ] if self.source.path is not None else []
        kernels = {"vidcore": self._kernel("attention"), "reference": "sdpa", "torch": "stand-in"}
        vision_rows = [row("vision", name, kernels[name], frames, cells) for name in vision]
        pool_rows = [row("pool", name, self._kernel("pool") if name == "vidcore" else
                         "reference path", cells, pools["vidcore"].tokens) for name in PROVIDERS]
        pooled = {name: pools[name].result() for name in PROVIDERS} if ok else None
        if ok:
            _pair(vision_rows, totals.diffs.get("vision"))
            _pair(pool_rows, self._diff(pooled["vidcore"], pooled["reference"]))
        return rows + vision_rows + pool_rows, pooled

    def _stream_chunk(self, batch: Tensor, vision: dict[str, Callable[[Tensor], Tensor]],
                      pools: dict[str, StreamingPool], totals: _Totals) -> None:
        """One chunk through every vision path (vidcore's tokens go on) and both pools."""
        outputs = {name: totals.timed("vision", name, self._ranged(
            f"vision/{name}", functools.partial(fn, batch))) for name, fn in vision.items()}
        tokens = outputs.get("vidcore", outputs.get("torch"))
        if "reference" in outputs:
            totals.diff("vision", self._diff(tokens, outputs["reference"]))
        del outputs
        for name, pool in pools.items():
            totals.timed("pool", name, self._ranged(f"pool/{name}", functools.partial(
                pool.add, tokens)))

    def _vision_providers(self) -> dict[str, Callable[[Tensor], Tensor]]:
        if hasattr(self.vision, "set_attention"):  # a transformers model: vidcore vs sdpa
            def run(batch: Tensor, name: str) -> Tensor:
                self.vision.set_attention(name)
                return self.vision(batch)

            return {"vidcore": lambda b: run(b, "vidcore"), "reference": lambda b: run(b, "sdpa")}
        return {"torch": self.vision}

    # ---- one frame count ----------------------------------------------------------------
    def warm_up(self) -> None:
        """One untimed run over the fewest frames the preset takes (the first frames of a file):
        libraries load, thread pools start and kernels compile before anything is measured."""
        count = min_frames(self.preset.name, *self.vision.grid)
        total = self.source.total_frames if self.source.path is not None else count
        repeats, self.repeats = self.repeats, 1
        try:
            self.run(count, sorted(i % total for i in range(count)))
        finally:
            self.repeats = repeats

    def run(self, frames: int | None, indices: list[int] | None = None) -> dict[str, object]:
        """Rows of every stage for `frames` sampled frames (None: every frame / the fps rate)
        or the given frame `indices` of the file, and the token counts after each stage."""
        meter = MemoryMeter(self.device)
        if self.device == "cuda":
            torch.cuda.empty_cache()
        meter.set_baseline()
        if indices is None:
            indices = (self.source.indices(frames, self.fps) if self.source.path is not None
                       else list(range(frames)))
        count = len(indices)
        rows, pooled = self._stream(count, indices, meter)
        tokens = {"frames": count, "vision": count * self.vision.grid[0] * self.vision.grid[1]}
        item = torch.empty(0, dtype=self.dtype).element_size()
        memory = {"streamed_pass_mib": meter.since_baseline_mib(),  # decode + vision + pool
                  "all_vision_tokens_mib": tokens["vision"] * self.vision.dim * item / 2**20}
        if pooled is None:
            return {"frames": count, "rows": rows, "tokens": tokens, "memory": memory}
        video = pooled["vidcore"]
        del pooled
        tokens["pooled"] = video.shape[0]
        for stage, step in (("mask", self._mask), ("attention", self._attention),
                            ("prefill", self._prefill)):
            stage_rows, video = step(count, video, meter)
            rows += stage_rows
            if stage == "mask":
                tokens["kept"] = video.shape[0]
            if any(r["provider"] == "vidcore" and r["status"] != "ok" for r in stage_rows):
                break  # vidcore's own output is missing: nothing to feed the next stage
        if "kept" in tokens:
            tokens["sequence"] = tokens["kept"] + self.text_tokens
        return {"frames": count, "rows": rows, "tokens": tokens, "memory": memory}

    def _mask(self, frames: int, video: Tensor, meter: MemoryMeter):
        if self.mask_ratio == 0:
            return [], video
        x = video.view(1, 1, 1, *video.shape)  # one video, its tokens as one row of a frame
        fns = {name: self._ranged(f"mask/{name}", lambda b=backend: mask_and_pack(
            x, self.mask_ratio, seed=self.seed, backend=b)) for name, backend in
            zip(PROVIDERS, ("auto", "torch"), strict=True)}
        timings = time_stage(fns, self.device, meter, repeats=self.repeats,
                             host_limit_bytes=self.host_limit_bytes)
        kept = _first(timings["vidcore"].output)
        rows = self._compare(frames, "mask", timings, self._kernel("mask_and_pack"), video.shape[0],
                             video.shape[0] if kept is None else kept.shape[0])
        return rows, video if kept is None else kept

    def _attention(self, frames: int, video: Tensor, meter: MemoryMeter):
        width = video.shape[1]
        heads = width // self.head_dim  # the runner checked that head_dim divides the width
        generator = torch.Generator().manual_seed(self.seed + 1)
        text = torch.randn(self.text_tokens, width, generator=generator).to(self.device,
                                                                              self.dtype)
        sequence = torch.cat([video, text])
        rows = []
        cases = (("cross_attention", text, video, False), ("self_attention", sequence, sequence,
                                                            True))
        for stage, queries, keys, causal in cases:
            q = queries.view(-1, heads, self.head_dim)
            kv = keys.view(-1, heads, self.head_dim)
            args = dict(cu_seqlens_q=_offsets(q.shape[0], self.device),
                        cu_seqlens_k=_offsets(kv.shape[0], self.device), max_seqlen_q=q.shape[0],
                        max_seqlen_k=kv.shape[0], causal=causal)
            fns = {name: self._ranged(f"{stage}/{name}", lambda b=backend, q=q, kv=kv, a=args:
                                      attention(q, kv, kv, backend=b, **a))
                   for name, backend in zip(PROVIDERS, ("auto", "torch"), strict=True)}
            timings = time_stage(fns, self.device, meter, repeats=self.repeats,
                                 host_limit_bytes=self.host_limit_bytes)
            rows += self._compare(frames, stage, timings, self._kernel("attention"),
                                  kv.shape[0], q.shape[0])
            for timing in timings.values():
                timing.output = None
        return rows, sequence

    def _prefill(self, frames: int, sequence: Tensor, meter: MemoryMeter):
        if self.prefill_model is None:
            return [], sequence
        embeds = self.prefill_model.embed(sequence)
        fns = {name: self._ranged(f"prefill/{name}", fn)
               for name, fn in self.prefill_model.providers(embeds).items()}
        timings = time_stage(fns, self.device, meter, repeats=self.repeats,
                             host_limit_bytes=self.host_limit_bytes)
        rows = self._compare(frames, "prefill", timings, self._kernel("attention"),
                             sequence.shape[0], 1)
        rows[1]["kernel"] = "sdpa"
        return rows, sequence


class _Totals:
    """Per (stage, path) over the chunks of a streamed pass: seconds summed, the most memory one
    call allocated; and the largest difference seen between paths."""

    def __init__(self, meter: MemoryMeter, device: str):
        self.meter, self.device = meter, device
        self.seconds: dict[tuple[str, str], float] = {}
        self.peaks: dict[tuple[str, str], float] = {}
        self.diffs: dict[str, float] = {}
        self.chunks = 0

    def timed(self, stage: str, name: str, fn: Callable[[], object]) -> object:
        (seconds, result), mib = self.meter.measure(lambda: timed_call(fn, self.device))
        key = (stage, name)
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        if mib is not None:
            self.peaks[key] = max(self.peaks.get(key, 0.0), mib)
        if stage == "decode" and result is not None:
            self.chunks += 1
        return result

    def diff(self, stage: str, value: float | None) -> None:
        if value is not None:
            self.diffs[stage] = max(self.diffs.get(stage, 0.0), value)


def _pair(rows: list[dict], diff: float | None) -> None:
    """The speedup and output difference of a stage's two paths (when it has two)."""
    if len(rows) != 2:
        return
    fast, ref = rows
    for row in rows:
        row["max_abs_diff"] = diff
    if fast["ms"] and ref["ms"] is not None:
        fast["speedup"], ref["speedup"] = ref["ms"] / fast["ms"], 1.0


def _first(output: object) -> object:
    return output[0] if isinstance(output, tuple) else output


def _offsets(length: int, device: str) -> Tensor:
    return torch.tensor([0, length], dtype=torch.int32, device=device)


def _next_on(stream, device: str) -> Tensor | None:
    batch = next(stream, None)
    return None if batch is None else batch.to(device, non_blocking=False)

