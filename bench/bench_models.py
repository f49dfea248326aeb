"""Model-level benchmark: one training step (forward + backward) of ST-LLM, MiniGPT4-Video,
ActionLLM and Task-Adapter++ with vidcore's kernels ("vidcore": packed sequences, varlen
attention, fused token ops) against the seeds' way ("reference": use_kernels=False, padded
batches, SDPA, per-sample Python splicing), at realistic widths with few layers. For the video-QA
models the vision tower is skipped (the seeds freeze it): the step starts from precomputed
per-frame features.

- ST-LLM: 64 frames x 32 Q-Former tokens, residual (global-local) mode with 16 local frames,
  dynamic masking (ratio 0.5) and the MVM loss (a second, no-grad LLM pass).
- MiniGPT4-Video: 45 frames x 64 merged tokens interleaved with text; the reference pads every
  prompt to the seed's max_context_len 3600.
- ActionLLM: per-frame features (2048-d) of a batch of observed prefixes of unequal length,
  the CMIB at width 128 with head dim 4 (multi_source_attention), a frozen LLM with
  bidirectional attention and rank-4 adapters (bench/action_models.py).
- Task-Adapter++: one 5-way 1-shot episode of 8-frame clips through a frozen CLIP ViT whose
  adapted blocks add temporal, spatial and task attention (axis_attention), and the text tower
  over 3 sentences per class (bench/action_models.py).
GPU targets (unmeasured here): >= 1.5x step throughput and <= 0.7x peak memory vs the reference.
"""
from __future__ import annotations

import torch
from vidcore.bench.action_models import (
    ACTIONLLM_SIZES,
    TASK_ADAPTER_SIZES,
    actionllm_step_inputs,
    task_adapter_step_inputs,
)
from vidcore.bench.harness import BenchCase, run_pytest_benchmark

from vidcore.info import backend_status
from vidcore.models.sequence import IGNORE_INDEX, sequence_layout

# Not an op: `vidcore bench --ops` lists public ops only. Run these cases with
# `python -m vidcore.bench.bench_models --size small` (or pytest bench/bench_models.py).
OPS = ()
VIDEO_TOKEN = 4
# size -> (LM width, LM layers, heads, vocab, batch, vision width, ST-LLM frames, MiniGPT4 frames)
SIZES = {
    "tiny": (64, 1, 4, 256, 2, 32, 8, 4),
    "small": (512, 2, 8, 32000, 2, 1408, 64, 45),
    "full": (4096, 2, 32, 32000, 4, 1408, 64, 45),
}


def _text_config(width: int, layers: int, heads: int, vocab: int) -> dict:
    return dict(model_type="llama", vocab_size=vocab, hidden_size=width,
                intermediate_size=width * 11 // 4, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=8192, tie_word_embeddings=False)


def _prompts(runs: list[list[int]], vocab: int, generator: torch.Generator) -> dict:
    """Right-padded prompts: per sample, text pieces of varying length around the given video
    runs, then a 6-token answer (the labels)."""
    rows, targets = [], []
    for b, sample_runs in enumerate(runs):
        ids: list[int] = [1]
        for run in sample_runs:
            ids += torch.randint(5, vocab, (3 + b % 3,), generator=generator).tolist()
            ids += [VIDEO_TOKEN] * run
        ids += torch.randint(5, vocab, (20 + 3 * b,), generator=generator).tolist()
        answer = [*torch.randint(5, vocab, (6,), generator=generator).tolist(), 2]
        rows.append(ids + answer)
        targets.append([IGNORE_INDEX] * len(ids) + answer)
    width = max(map(len, rows))
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    mask = torch.zeros_like(input_ids)
    for b, (row, target) in enumerate(zip(rows, targets, strict=True)):
        input_ids[b, :len(row)], labels[b, :len(row)], mask[b, :len(row)] = (
            torch.tensor(row), torch.tensor(target), 1)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "sequence_layout": sequence_layout(input_ids, mask, VIDEO_TOKEN)}


def _step(model, batch: dict, use_kernels: bool, **extra):
    def run():
        model.use_kernels = use_kernels
        model.zero_grad(set_to_none=True)
        out = model(**batch, **extra)
        out.loss.backward()
        return out.loss

    return run


def _on(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def cases(size: str, device: str) -> list[BenchCase]:
    width, layers, heads, vocab, batch, vision, st_frames, mg_frames = SIZES[size]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    live = {row.op for row in backend_status()}

    def build_stllm():
        from vidcore.models.stllm import STLLMConfig, STLLMForVideoQA  # transformers: lazily

        config = STLLMConfig(
            vision_config=dict(model_type="clip_vision_model", hidden_size=vision,
                               num_attention_heads=8, image_size=224, patch_size=14,
                               num_hidden_layers=1, intermediate_size=vision),
            qformer_config=dict(hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                                intermediate_size=3072),
            text_config=_text_config(width, layers, heads, vocab), video_input="residual",
            residual_size=min(16, st_frames), num_query_tokens=32,
            video_token_index=VIDEO_TOKEN)
        model = STLLMForVideoQA(config).to(device, dtype).train()
        generator = torch.Generator().manual_seed(0)
        inputs = _prompts([[config.video_tokens(st_frames)]] * batch, vocab, generator)
        inputs["video_features"] = torch.randn(batch, st_frames, 257, vision, generator=generator)
        inputs = _on(inputs, device)
        inputs["video_features"] = inputs["video_features"].to(dtype)
        return {"reference": _step(model, inputs, False, mask_seed=1),
                "vidcore": _step(model, inputs, True, mask_seed=1)}

    def build_minigpt4_video():
        from vidcore.models.minigpt4_video import MiniGPT4VideoConfig, MiniGPT4VideoForVideoQA

        config = MiniGPT4VideoConfig(
            vision_config=dict(model_type="clip_vision_model", hidden_size=vision,
                               num_attention_heads=8, image_size=224 if size != "tiny" else 32,
                               patch_size=14 if size != "tiny" else 8, num_hidden_layers=1,
                               intermediate_size=vision),
            text_config=_text_config(width, layers, heads, vocab),
            max_context_len=3600 if size != "tiny" else 64, video_token_index=VIDEO_TOKEN)
        model = MiniGPT4VideoForVideoQA(config).to(device, dtype).train()
        generator = torch.Generator().manual_seed(0)
        inputs = _prompts([[config.tokens_per_frame] * mg_frames] * batch, vocab, generator)
        patches = config.tokens_per_frame * 4 + 1
        inputs["video_features"] = torch.randn(batch, mg_frames, patches, vision,
                                               generator=generator)
        inputs = _on(inputs, device)
        inputs["video_features"] = inputs["video_features"].to(dtype)
        return {"reference": _step(model, inputs, False), "vidcore": _step(model, inputs, True)}

    dtype_name = str(dtype).removeprefix("torch.")
    mg_tokens = 64 if size != "tiny" else 4
    shape = {"width": width, "layers": layers, "batch": batch}
    return [
        BenchCase("models", f"stllm-residual-T{st_frames}x32-w{width}",
                  {**shape, "frames": st_frames, "tokens_per_frame": 32}, build_stllm,
                  ("reference", "vidcore"), dtype=dtype_name,
                  kernel_ops=tuple(op for op in ("attention", "mask_and_pack", "pool",
                                                 "interleave_pack", "cosine_consistency_loss")
                                   if op in live)),
        BenchCase("models", f"minigpt4_video-T{mg_frames}x{mg_tokens}-w{width}",
                  {**shape, "frames": mg_frames, "tokens_per_frame": mg_tokens},
                  build_minigpt4_video,
                  ("reference", "vidcore"), dtype=dtype_name,
                  kernel_ops=tuple(op for op in ("attention", "interleave_pack") if op in live)),
        *_action_model_cases(size, device, dtype, live),
    ]


def _action_model_cases(size: str, device: str, dtype: torch.dtype, live: set[str]
                        ) -> list[BenchCase]:
    def build(make_inputs):
        def run():
            model, inputs = make_inputs(size, device, dtype)
            return {"reference": _step(model, inputs, False), "vidcore": _step(model, inputs, True)}
        return run

    width, layers, _, features, batch, frames, _ = ACTIONLLM_SIZES[size]
    vit, _, vit_layers, image, _, _, shots = TASK_ADAPTER_SIZES[size]
    dtype_name = str(dtype).removeprefix("torch.")
    return [
        BenchCase("models", f"actionllm-S{frames}-F{features}-w{width}",
                  {"width": width, "layers": layers, "batch": batch, "frames": frames,
                   "feature_dim": features}, build(actionllm_step_inputs),
                  ("reference", "vidcore"), dtype=dtype_name,
                  kernel_ops=tuple(op for op in ("attention", "multi_source_attention")
                                   if op in live)),
        BenchCase("models", f"task_adapter-5way{shots}shot-T8-{image}px-w{vit}",
                  {"width": vit, "layers": vit_layers, "image_size": image, "shots": shots},
                  build(task_adapter_step_inputs), ("reference", "vidcore"), dtype=dtype_name,
                  kernel_ops=tuple(op for op in ("attention", "axis_attention") if op in live)),
    ]


def test_models(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)


def main(argv: list[str] | None = None) -> None:
    """Time every case through the bench runner and print its table."""
    import argparse

    from vidcore.bench.report import print_rows
    from vidcore.bench.runner import time_case

    parser = argparse.ArgumentParser(prog="python -m vidcore.bench.bench_models")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for case in cases(args.size, args.device):
        print_rows(time_case(case, args.device))


if __name__ == "__main__":
    main()
