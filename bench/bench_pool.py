"""pool presets against the seeds' own op sequences (eager and torch.compile'd).

bytes = the input read once + every output written (the one-pass ideal the kernel aims for).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark, shapes

from vidcore.ops import slowfast, st_llm_global_local, video_chatgpt


def slowfast_seed(x: torch.Tensor) -> torch.Tensor:
    """SlowFast-LLaVA (llava_arch.py prepare_slowfast): 10 frames at
    torch.linspace(0, T, 11).to(int32)[:-1] max-pooled in raster pairs, then every frame
    adaptive-avg-pooled to 4 x 4; slow tokens first."""
    batch, frames, height, width, dim = x.shape
    idx = torch.linspace(0, frames, 11).to(torch.int32)[:-1].to(x.device)
    slow = F.max_pool1d(x[:, idx].reshape(-1, height * width, dim).transpose(1, 2), 2, 2)
    fast = F.adaptive_avg_pool2d(x.reshape(-1, height, width, dim).permute(0, 3, 1, 2), (4, 4))
    return torch.cat([slow.transpose(1, 2).reshape(batch, -1, dim),
                      fast.flatten(2).transpose(1, 2).reshape(batch, -1, dim)], 1)


def st_llm_seed(x: torch.Tensor, num_local: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """ST-LLM 'residual' input: frames at segment centres and the temporal mean."""
    seg = x.shape[1] / num_local
    idx = [int(seg / 2 + round(seg * i)) for i in range(num_local)]
    return x[:, idx].flatten(1, 2), x.mean(1)


def video_chatgpt_seed(x: torch.Tensor) -> torch.Tensor:
    """Video-ChatGPT: per-frame spatial means, then per-location temporal means."""
    flat = x.flatten(2, 3)
    return torch.cat([flat.mean(2), flat.mean(1)], 1)


# name -> (shape [B, T, H, W, D] per size, seed fn, vidcore fn)
PRESETS: dict[str, tuple[dict[str, list[tuple[int, ...]]], Callable, Callable]] = {
    "slowfast": ({"tiny": [(1, 10, 4, 4, 8)], "small": [(1, 50, 24, 24, 256)],
                  "full": [(1, 50, 24, 24, 4096)]}, slowfast_seed, slowfast),
    "st_llm": ({"tiny": [(1, 16, 1, 32, 8)], "small": [(1, 64, 1, 32, 1024)],
                "full": [(1, 64, 1, 32, 4096)]}, st_llm_seed, st_llm_global_local),
    "video_chatgpt": ({"tiny": [(1, 10, 4, 4, 8)], "small": [(1, 100, 16, 16, 256)],
                       "full": [(1, 100, 16, 16, 1024), (1, 2048, 16, 16, 1024)]},
                      video_chatgpt_seed, video_chatgpt),
}


DIMS = {"B": 1, "T": 64, "H": 24, "W": 24, "D": 1024}  # `vidcore bench --shape T=256` (every preset)


def cases(size: str | dict[str, object], device: str, dtype: torch.dtype | None = None
          ) -> list[BenchCase]:
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    result = []
    for name, (preset_shapes, seed_fn, vidcore_fn) in PRESETS.items():
        for shape in shapes(preset_shapes, size, DIMS):
            def build(shape=shape, seed_fn=seed_fn, vidcore_fn=vidcore_fn):
                x = torch.randn(shape, device=device, dtype=dtype)
                seed_compiled = compiled(seed_fn)
                return {"seed_eager": lambda: seed_fn(x), "compiled": lambda: seed_compiled(x),
                        "vidcore": lambda: vidcore_fn(x)}

            with torch.device("meta"):  # output sizes without computing anything
                out = seed_fn(torch.empty(shape))
            out_numel = sum(t.numel() for t in (out if isinstance(out, tuple) else (out,)))
            itemsize = torch.finfo(dtype).bits // 8
            b, t, h, w, d = shape
            result.append(BenchCase(
                "pool", f"{name}-B{b}-T{t}-{h}x{w}-D{d}", {"B": b, "T": t, "H": h, "W": w,
                                                            "D": d, "preset": name},
                build, ("seed_eager", "compiled", "vidcore"),
                bytes=(b * t * h * w * d + out_numel) * itemsize, baseline="seed_eager",
                dtype=str(dtype).removeprefix("torch.")))
    return result


def test_pool(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
