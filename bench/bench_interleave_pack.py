"""interleave_pack (MiniGPT4-Video's interleaved prompt, ST-LLM's prompt + video + answer)
against the seeds' way of building the LLM input.

Baselines, measured in the same run: the seeds' per-sample splicing (prompt_wrap: torch.cat of
each sample's text segments and frame tokens, pad to the longest sample with an attention mask
and -100 labels: minigpt4/models/mini_gpt4_llama_v2.py, stllm/models/st_llm.py:379-432), the
same splicing packed without padding (the eager varlen way), the reference and torch.compile of
it. The vidcore row includes planning the segments on the host (no plan is reused).
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark

from vidcore import reference
from vidcore.ops import interleave_pack, plan_interleave

# (name, samples, frames, visual tokens per frame, text tokens per frame, prompt tokens, D)
SHAPES = {
    "tiny": [("minigpt4", 2, 3, 4, 3, 8, 32)],
    "small": [("minigpt4", 2, 8, 64, 12, 40, 1024), ("stllm", 8, 1, 256, 0, 60, 1024)],
    "full": [("minigpt4", 4, 45, 64, 12, 60, 4096), ("stllm", 16, 1, 256, 0, 60, 4096),
             ("minigpt4-mistral", 2, 90, 64, 12, 60, 4096)],
}


def segments_of(samples: int, frames: int, visual: int, text: int, prompt: int
                ) -> list[tuple[int, int, int]]:
    """Per sample: per frame an "<Img>" marker (2 tokens), the frame's tokens and a subtitle of
    `text` tokens (MiniGPT4-Video); then a prompt of `prompt` tokens. ST-LLM (frames = 1,
    text = 0): a prompt prefix, the video tokens, the rest of the prompt and the answer."""
    rows = []
    for b in range(samples):
        if frames == 1 and text == 0:
            rows += [(b, 0, prompt // 2), (b, 1, visual - 7 * b % 13), (b, 0, prompt - prompt // 2)]
            continue
        for _ in range(frames):
            rows += [(b, 0, 2), (b, 1, visual), (b, 0, text)]
        rows.append((b, 0, prompt + b))
    return rows


def seed_way(text: torch.Tensor, visual: torch.Tensor, segments, labels: torch.Tensor,
             pad: bool):
    """Per-sample torch.cat of the segments in order; padded (the seeds) or packed."""
    used = [0, 0]
    samples = segments[-1][0] + 1
    parts, part_labels = [[] for _ in range(samples)], [[] for _ in range(samples)]
    for sample, kind, length in segments:
        parts[sample].append((text, visual)[kind][used[kind]:used[kind] + length])
        part_labels[sample].append(labels[used[0]:used[0] + length] if kind == 0 else
                                   labels.new_full((length,), -100))
        used[kind] += length
    embeds = [torch.cat(p) for p in parts]
    targets = [torch.cat(p) for p in part_labels]
    if not pad:
        return torch.cat(embeds), torch.cat(targets)
    lengths = torch.tensor([e.shape[0] for e in embeds], device=text.device)
    mask = torch.arange(int(lengths.max()), device=text.device)[None] < lengths[:, None]
    return (pad_sequence(embeds, batch_first=True), mask,
            pad_sequence(targets, batch_first=True, padding_value=-100))


def cases(size: str, device: str) -> list[BenchCase]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def make(name, samples, frames, visual, text, prompt, dim) -> BenchCase:
        segments = segments_of(samples, frames, visual, text, prompt)
        totals = [sum(n for _, k, n in segments if k == kind) for kind in (0, 1)]

        def build():
            text_rows = torch.randn(totals[0], dim, device=device, dtype=dtype)
            visual_rows = torch.randn(totals[1], dim, device=device, dtype=dtype)
            labels = torch.randint(0, 1000, (totals[0],), device=device)
            plan = plan_interleave(segments, device=device)
            ref = compiled(reference.interleave_pack)
            args = (text_rows, visual_rows, plan.segment_table, labels, sum(totals))
            return {
                "seed_eager": lambda: seed_way(text_rows, visual_rows, segments, labels, True),
                "seed_packed": lambda: seed_way(text_rows, visual_rows, segments, labels, False),
                "compiled": lambda: ref(*args),
                "reference": lambda: interleave_pack(text_rows, visual_rows, segments, labels,
                                                     backend="torch"),
                "vidcore": lambda: interleave_pack(text_rows, visual_rows, segments, labels),
            }

        itemsize = torch.finfo(dtype).bits // 8
        total = sum(totals)
        nbytes = 2 * total * dim * itemsize + 8 * (totals[0] + 3 * total)
        shape = {"samples": samples, "frames": frames, "visual_per_frame": visual,
                 "text_per_frame": text, "prompt": prompt, "D": dim, "segments": len(segments)}
        return BenchCase("interleave_pack", f"{name}-B{samples}-F{frames}-D{dim}", shape, build,
                         ("seed_eager", "seed_packed", "compiled", "reference", "vidcore"),
                         bytes=nbytes, baseline="seed_eager", dtype=str(dtype).removeprefix("torch."))

    return [make(*shape) for shape in SHAPES[size]]


def test_interleave_pack(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
