"""axis_attention (Task-Adapter++'s temporal, spatial and task attentions): softmax self-attention
along one axis of a ViT token grid [B, T, L, H, d], on strided slices of one fused QKV
projection.

Baselines, measured in the same run: the seed's code (module_adapter.py:120-168: rearrange to
sequences, which copies the tokens, an explicit score matrix, softmax, matmul, rearrange back),
SDPA on the same permuted copies, the reference and torch.compile of the seed's code. Forward
alone and forward + backward (as in training: the adapters behind the attention are trained).
TFLOP/s: 4 * d * (query-key pairs) forward, 2.5x that backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from vidcore.bench.harness import BenchCase, compiled, run_pytest_benchmark, shapes

from vidcore.ops import axis_attention

# (name, B, T, L, H, d, axis): B videos of T frames of L tokens (CLS + patches), H heads of d;
# axis 1 = along frames (temporal), 2 = within a frame (spatial), 0 = across the episode's videos
DIMS = {"name": "custom", "B": 5, "T": 8, "L": 50, "H": 4, "d": 64, "axis": 1}
SHAPES = {
    "tiny": [("temporal", 2, 4, 5, 2, 16, 1), ("task", 3, 2, 5, 2, 16, 0)],
    "small": [("vitb16-temporal-5way", 5, 8, 197, 12, 64, 1),
              ("vitb16-spatial-5way", 5, 8, 197, 12, 64, 2),
              ("vitb16-task-5way", 5, 8, 197, 12, 64, 0)],
    "full": [("vitb16-temporal-5way5shot", 25, 8, 197, 12, 64, 1),
             ("vitb16-spatial-5way5shot", 25, 8, 197, 12, 64, 2),
             ("vitb16-task-5way5shot", 25, 8, 197, 12, 64, 0)],
}


def _sequences(t: torch.Tensor, axis: int) -> torch.Tensor:
    """The seed's rearrange: [B, T, L, H, d] -> [(other axes) H, S, d], a copy."""
    return t.movedim(axis, 3).flatten(0, 1).contiguous()


def _grid(t: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of _sequences: [(other axes), H, S, d] -> [B, T, L, H, d] contiguous."""
    others = [n for i, n in enumerate(like.shape[:3]) if i != axis]
    return t.unflatten(0, others).movedim(3, axis).contiguous()  # [o0, o1, H, S, d] -> grid


def seed_way(q, k, v, axis: int):
    qs, ks, vs = (_sequences(t, axis) for t in (q, k, v))
    probs = torch.softmax(qs @ ks.transpose(-1, -2) * qs.shape[-1] ** -0.5, dim=-1)
    return _grid(probs @ vs, q, axis)


def sdpa_way(q, k, v, axis: int):
    qs, ks, vs = (_sequences(t, axis) for t in (q, k, v))
    return _grid(F.scaled_dot_product_attention(qs, ks, vs), q, axis)


def cases(size, device: str, dtype: torch.dtype | None = None) -> list[BenchCase]:
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    dtype_name = str(dtype).removeprefix("torch.")

    def make(name, batch, frames, tokens, heads, dim, axis) -> list[BenchCase]:
        grid = (batch, frames, tokens)
        length = grid[axis]
        pairs = batch * frames * tokens * length * heads  # each query sees its whole axis
        flops = 4 * dim * pairs
        shape = {"B": batch, "T": frames, "L": tokens, "H": heads, "d": dim, "axis": axis}
        # q, k, v and out once each forward; + dO in and dq, dk, dv out backward
        elements = batch * frames * tokens * heads * dim

        def build(backward: bool):
            # strided slices of one fused projection, as Task-Adapter++'s blocks call it
            qkv = torch.randn(*grid, 3, heads, dim, device=device, dtype=dtype,
                              requires_grad=backward)
            q, k, v = qkv.unbind(3)
            seed_compiled = compiled(seed_way)

            def run(fn):
                if not backward:
                    return lambda: fn(q, k, v, axis)

                def step():
                    fn(q, k, v, axis).float().sum().backward()
                return step

            return {"seed_eager": run(seed_way), "sdpa": run(sdpa_way),
                    "compiled": run(seed_compiled),
                    "reference": run(lambda *a: axis_attention(*a[:3], dim=a[3],
                                                               backend="torch")),
                    "vidcore": run(lambda *a: axis_attention(*a[:3], dim=a[3]))}

        providers = ("seed_eager", "sdpa", "compiled", "reference", "vidcore")
        itemsize = dtype.itemsize
        return [
            BenchCase("axis_attention", f"fwd-{name}", shape, lambda: build(False), providers,
                      bytes=4 * elements * itemsize, flops=flops, baseline="seed_eager",
                      dtype=dtype_name),
            BenchCase("axis_attention", f"fwd+bwd-{name}", shape, lambda: build(True),
                      providers, bytes=12 * elements * itemsize, flops=int(3.5 * flops),
                      baseline="seed_eager", dtype=dtype_name,
                      kernel_ops=("axis_attention", "axis_attention_backward")),
        ]

    return [case for shape in shapes(SHAPES, size, DIMS) for case in make(*shape)]


def test_axis_attention(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
