"""mask_and_pack and pack (ST-LLM dynamic masking) against the seed's way of doing it.

Baselines, measured in the same run: the seed's way transcribed in PyTorch (per-video random
permutation, boolean keep mask, x[keep] gather: ST-LLM's RandomMaskingGenerator + v[~mask]),
the same with the pad-to-max + attention mask a non-varlen LLM needs, torch.compile of the seed's
way, vidcore's two-op path (make_mask then pack: what the fused op replaces), and
torch.index_select with vidcore's indices (one gather: the floor for pack).
"""
from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark, shapes

from vidcore.ops import draw_ratios, make_mask, mask_and_pack, pack


def make_mask_then_pack(x: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """The unfused path: two ops, keep_idx written by one and read back by the other."""
    batch, frames, height, width = x.shape[:4]
    mask = make_mask(frames, (height, width), ratio, batch_size=batch, seed=seed, device=x.device)
    return pack(x, mask)

# (B, T, H, W, D): ST-LLM training batch (64 frames of 16 x 16 tokens) and a long video
SHAPES = {
    "tiny": [(1, 4, 4, 4, 64)],
    "small": [(1, 4, 4, 4, 64), (2, 16, 16, 16, 1024)],
    "full": [(1, 4, 4, 4, 64), (8, 64, 16, 16, 1024), (1, 4096, 8, 8, 1024)],
}
DIMS = {"B": 2, "T": 16, "H": 16, "W": 16, "D": 1024}  # `vidcore bench --shape B=8,T=64`
OPS = ("mask_and_pack", "pack")  # the public ops these cases time (`vidcore bench --ops pack`)
RATIO = 0.5


def seed_way(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """ST-LLM: one random permutation per video masks int(ratio * L) tokens; x[keep] gathers
    (a boolean index: the device syncs on its count)."""
    batch, length, dim = x.shape[0], x[0, ..., 0].numel(), x.shape[-1]
    keep = torch.ones(batch, length, dtype=torch.bool, device=x.device)
    for b in range(batch):
        keep[b, torch.randperm(length, device=x.device)[: int(ratio * length)]] = False
    return x.reshape(batch, length, dim)[keep]


def seed_way_padded(x: torch.Tensor, ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video ratios without varlen attention: gather each video, pad to the longest, and
    build the attention mask an HF LLM takes."""
    batch, length, dim = x.shape[0], x[0, ..., 0].numel(), x.shape[-1]
    rows = x.reshape(batch, length, dim)
    kept = [rows[b, torch.randperm(length, device=x.device)[int(r * length):].sort().values]
            for b, r in enumerate(ratios)]
    padded = pad_sequence(kept, batch_first=True)
    lengths = torch.tensor([k.shape[0] for k in kept], device=x.device)
    return padded, torch.arange(padded.shape[1], device=x.device)[None] < lengths[:, None]


def cases(size: str | dict[str, object], device: str, dtype: torch.dtype = torch.bfloat16
          ) -> list[BenchCase]:
    itemsize = dtype.itemsize

    def make(batch: int, frames: int, height: int, width: int, dim: int) -> list[BenchCase]:
        shape = {"B": batch, "T": frames, "H": height, "W": width, "D": dim, "ratio": RATIO}
        kept = batch * (frames * height * width - int(RATIO * frames * height * width + 0.5))
        nbytes = 2 * kept * dim * itemsize + 8 * kept  # read + write kept rows, write keep_idx
        name = f"B{batch}-T{frames}-{height}x{width}-D{dim}"

        def build_fused():
            x = torch.randn(batch, frames, height, width, dim, device=device, dtype=dtype)
            ratios = draw_ratios(batch, seed=0)
            seed_compiled = compiled(seed_way)
            return {
                "seed_eager": lambda: seed_way(x, RATIO),
                "seed_padded": lambda: seed_way_padded(x, ratios),
                "compiled": lambda: seed_compiled(x, RATIO),
                "reference": lambda: mask_and_pack(x, RATIO, seed=1, backend="torch"),
                "unfused": lambda: make_mask_then_pack(x, RATIO, 1),
                "vidcore": lambda: mask_and_pack(x, RATIO, seed=1),
            }

        def build_pack():
            x = torch.randn(batch, frames, height, width, dim, device=device, dtype=dtype)
            mask = make_mask(frames, (height, width), RATIO, batch_size=batch, seed=1,
                             device=device)
            rows = x.view(-1, dim)
            return {"index_select": lambda: rows.index_select(0, mask.keep_idx),
                    "vidcore": lambda: pack(x, mask)}

        return [
            BenchCase("mask_and_pack", name, shape, build_fused,
                      ("seed_eager", "seed_padded", "compiled", "reference", "unfused",
                       "vidcore"),
                      bytes=nbytes, baseline="seed_eager", dtype=str(dtype).removeprefix("torch.")),
            BenchCase("pack", name, shape, build_pack, ("index_select", "vidcore"),
                      bytes=nbytes - 8 * kept, baseline="index_select",
                      dtype=str(dtype).removeprefix("torch.")),
        ]

    return [case for shape in shapes(SHAPES, size, DIMS) for case in make(*shape)]


def test_token_mask(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
