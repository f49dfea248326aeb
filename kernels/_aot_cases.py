"""What the ahead-of-time compile checks compile: every launcher over head dims, dtypes and
mask kinds (vidcore.kernels._aot records each launch and compiles it per surviving config).

To cover a new Triton kernel: if an existing launcher below launches it, nothing to do;
otherwise add one line to LAUNCHERS naming the launcher and a function that calls it on small
CPU tensors for (head_dim, dtype, mask). tests/kernels/test_aot_compile.py fails while any
`*_kernel` in kernels/ is left uncompiled.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from vidcore.kernels.attention import attention_fwd
from vidcore.kernels.attention_backward import attention_bwd
from vidcore.kernels.axis_attention import axis_attention_bwd, axis_attention_fwd
from vidcore.kernels.cosine_consistency_loss import (
    cosine_consistency_loss_bwd,
    cosine_consistency_loss_fwd,
)
from vidcore.kernels.merge_attention_states import (
    merge_attention_states_bwd,
    merge_attention_states_fwd,
)
from vidcore.kernels.multi_source_attention import multi_source_attention_fwd
from vidcore.kernels.multi_source_attention_backward import multi_source_attention_bwd

__all__ = ["DTYPES", "HEAD_DIMS", "LAUNCHERS", "MASKS", "AotCase", "select_cases"]

HEAD_DIMS = (32, 64, 72, 96, 128, 256)
DTYPES = ("fp16", "bf16", "fp32", "tf32")  # tf32: float32 inputs with allow_tf32 set
MASKS = ("dense", "causal", "ranges", "window", "softcap", "all")  # all: every feature at once
_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                 "tf32": torch.float32}


@dataclass(frozen=True)
class AotCase:
    name: str  # launcher/d<head dim>/<dtype>/<mask>
    run: Callable[[], None]


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _attention_args(head_dim: int, dtype: str, mask: str, lens_q=(100, 60), lens_k=(100, 200),
                    heads=(8, 2)) -> tuple:
    """The launchers' positional arguments (CONTRACTS.md section 1) on small CPU tensors."""
    t = _TORCH_DTYPES[dtype]
    q = torch.randn(sum(lens_q), heads[0], head_dim, dtype=t)
    k, v = (torch.randn(sum(lens_k), heads[1], head_dim, dtype=t) for _ in range(2))
    cu_q = torch.tensor([0, *itertools.accumulate(lens_q)], dtype=torch.int32)
    cu_k = torch.tensor([0, *itertools.accumulate(lens_k)], dtype=torch.int32)
    ranged = mask in ("ranges", "all")
    frames = torch.tensor([[0, 3]] * sum(lens_q), dtype=torch.int32) if ranged else None
    window = {"window": (128, 32), "all": (256, -1)}.get(mask, (-1, -1))
    softcap = 30.0 if mask in ("softcap", "all") else 0.0
    return (q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), mask in ("causal", "all"),
            1 / math.sqrt(head_dim), 16 if ranged else 0, frames, *window, softcap)


def _attention_fwd(head_dim: int, dtype: str, mask: str) -> None:
    attention_fwd(*_attention_args(head_dim, dtype, mask))


def _attention_fwd_split_keys(head_dim: int, dtype: str, mask: str) -> None:
    """One query per sequence over thousands of keys: the launcher splits the keys."""
    attention_fwd(*_attention_args(head_dim, dtype, mask, lens_q=(1, 1), lens_k=(4096, 2048)))


def _attention_bwd(head_dim: int, dtype: str, mask: str) -> None:
    args = _attention_args(head_dim, dtype, mask)
    q = args[0]
    out, lse = torch.randn_like(q), torch.randn(q.shape[1], q.shape[0])
    grad_lse = torch.randn_like(lse) if mask == "all" else None
    attention_bwd(torch.randn_like(q), *args[:3], out, lse, *args[3:], grad_lse)


def _merge_args(head_dim: int, dtype: str) -> tuple:
    t = _TORCH_DTYPES[dtype]
    out_a, out_b = (torch.randn(2, 50, 8, head_dim, dtype=t) for _ in range(2))
    lse_a, lse_b = (torch.randn(2, 8, 50) for _ in range(2))
    return out_a, lse_a, out_b, lse_b


def _merge_fwd(head_dim: int, dtype: str, mask: str) -> None:
    merge_attention_states_fwd(*_merge_args(head_dim, dtype))


def _merge_bwd(head_dim: int, dtype: str, mask: str) -> None:
    out_a, lse_a, out_b, lse_b = _merge_args(head_dim, dtype)
    merge_attention_states_bwd(torch.randn_like(out_a), torch.randn_like(lse_a), out_a, lse_a,
                               out_b, lse_b)


def _sources_args(head_dim: int, dtype: str) -> tuple:
    """ActionLLM's three modalities of different lengths, [B, H, S_m, d] each."""
    t = _TORCH_DTYPES[dtype]
    groups = [[torch.randn(2, 4, n, head_dim, dtype=t) for n in (20, 48, 6)] for _ in range(3)]
    return (*groups, 1 / math.sqrt(head_dim))


def _sources_fwd(head_dim: int, dtype: str, mask: str) -> None:
    multi_source_attention_fwd(*_sources_args(head_dim, dtype))


def _sources_bwd(head_dim: int, dtype: str, mask: str) -> None:
    queries, keys, values, scale = _sources_args(head_dim, dtype)
    outs, lse, partials = multi_source_attention_fwd(queries, keys, values, scale)
    multi_source_attention_bwd([torch.randn_like(o) for o in outs], queries, keys, values, lse,
                               partials, scale)


def _cosine_args(dim: int, dtype: str) -> tuple:
    t = _TORCH_DTYPES[dtype]
    return torch.randn(300, dim, dtype=t), torch.randn(300, dim, dtype=t)


def _cosine_fwd(dim: int, dtype: str, mask: str) -> None:
    cosine_consistency_loss_fwd(*_cosine_args(dim, dtype))


def _cosine_bwd(dim: int, dtype: str, mask: str) -> None:
    cosine_consistency_loss_bwd(torch.ones(()), *_cosine_args(dim, dtype))


def _axis_args(head_dim: int, dtype: str) -> tuple:
    """Task-Adapter++'s spatial attention (197 tokens: the largest tiles) on slices of one fused
    QKV projection [P, S, R, 3, H, d]."""
    qkv = torch.randn(2, 197, 3, 3, 4, head_dim, dtype=_TORCH_DTYPES[dtype])
    return (*qkv.unbind(3), 1 / math.sqrt(head_dim))


def _axis_fwd(head_dim: int, dtype: str, mask: str) -> None:
    axis_attention_fwd(*_axis_args(head_dim, dtype))


def _axis_bwd(head_dim: int, dtype: str, mask: str) -> None:
    q, k, v, scale = _axis_args(head_dim, dtype)
    axis_attention_bwd(torch.randn_like(q), q, k, v, torch.randn_like(q),
                       torch.randn(q.shape[:-1]), scale)


@dataclass(frozen=True)
class Launcher:
    name: str
    call: Callable[[int, str, str], None]  # (head_dim, dtype, mask) -> runs the launcher
    masks: tuple[str, ...] = MASKS
    dtypes: tuple[str, ...] = DTYPES
    head_dims: tuple[int, ...] = HEAD_DIMS


LAUNCHERS = [
    Launcher("attention_fwd", _attention_fwd),
    Launcher("attention_fwd_split_keys", _attention_fwd_split_keys, masks=("dense", "all")),
    Launcher("attention_bwd", _attention_bwd),
    Launcher("merge_attention_states_fwd", _merge_fwd, masks=("dense",)),
    Launcher("merge_attention_states_bwd", _merge_bwd, masks=("dense",)),
    # ActionLLM's head dim is 4 (padded to 16 in registers); the others as for attention. Exact
    # float32 (FMA products) is left out: it spills 8-16 bytes at head dims 64 and 128 with
    # every tile tried (README, GPU kernels), a known cost of that path, not a pruned config.
    Launcher("multi_source_attention_fwd", _sources_fwd, masks=("dense",),
             dtypes=("fp16", "bf16", "tf32"), head_dims=(4, *HEAD_DIMS)),
    Launcher("multi_source_attention_bwd", _sources_bwd, masks=("dense",),
             dtypes=("fp16", "bf16", "tf32"), head_dims=(4, *HEAD_DIMS)),
    # exact float32 backward at head dim 256 spills (8-200 bytes) even at its smallest tile (16
    # rows): left out of the matrix, like the new ops' exact float32
    Launcher("axis_attention_fwd", _axis_fwd, masks=("dense",)),
    Launcher("axis_attention_bwd", _axis_bwd, masks=("dense",), head_dims=HEAD_DIMS[:-1]),
    Launcher("axis_attention_bwd_d256", _axis_bwd, masks=("dense",),
             dtypes=("fp16", "bf16", "tf32"), head_dims=(256,)),
    # rows of ST-LLM's MVM features: the head dim axis is the feature size here
    Launcher("cosine_consistency_loss_fwd", _cosine_fwd, masks=("dense",),
             dtypes=("fp16", "bf16", "fp32"), head_dims=(64, 1024, 4096)),
    Launcher("cosine_consistency_loss_bwd", _cosine_bwd, masks=("dense",),
             dtypes=("fp16", "bf16", "fp32"), head_dims=(64, 1024, 4096)),
]

# What `make test` compiles: each kernel at least once, the head dims and tiles that decide
# shared memory (256, backward) and registers (128 with every mask feature), the d=72
# alignment path, bf16 and exact float32; the rest of the matrix is the slow test's.
_CI = {
    "attention_fwd": [(128, "fp16", "all"), (72, "bf16", "causal"), (64, "fp32", "window")],
    "attention_fwd_split_keys": [(64, "bf16", "dense")],
    "attention_bwd": [(128, "bf16", "all"), (256, "fp16", "causal")],
    "merge_attention_states_fwd": [(128, "fp16", "dense")],
    "merge_attention_states_bwd": [(128, "bf16", "dense")],
    "multi_source_attention_fwd": [(4, "bf16", "dense"), (128, "fp16", "dense")],
    "multi_source_attention_bwd": [(4, "fp16", "dense"), (128, "bf16", "dense")],
    "axis_attention_fwd": [(64, "fp32", "dense"), (128, "bf16", "dense")],
    "axis_attention_bwd": [(64, "fp32", "dense"), (72, "fp16", "dense")],
    "axis_attention_bwd_d256": [(256, "bf16", "dense")],
    "cosine_consistency_loss_fwd": [(4096, "bf16", "dense")],
    "cosine_consistency_loss_bwd": [(4096, "fp32", "dense")],
}


def _case(launcher: Launcher, head_dim: int, dtype: str, mask: str) -> AotCase:
    def run() -> None:
        with _tf32(dtype == "tf32"):
            launcher.call(head_dim, dtype, mask)
    return AotCase(f"{launcher.name}/d{head_dim}/{dtype}/{mask}", run)


def _full(launcher: Launcher) -> list[tuple[int, str, str]]:
    """Every head dim x dtype with the plainest and the fullest mask (which bound registers),
    and every head dim with each other mask kind in bf16 (masks cost the same in any dtype)."""
    extremes = [m for m in launcher.masks if m in ("dense", "all")]
    others = [m for m in launcher.masks if m not in extremes]
    dims = launcher.head_dims
    return ([(d, t, m) for d in dims for t in launcher.dtypes for m in extremes]
            + [(d, "bf16", m) for d in dims for m in others])


def select_cases(matrix: str = "ci", match: str = "") -> list[AotCase]:
    """The CI subset or the full matrix, optionally only names containing `match`."""
    cases = []
    for launcher in LAUNCHERS:
        combos = _CI.get(launcher.name, []) if matrix == "ci" else _full(launcher)
        cases += [_case(launcher, *combo) for combo in combos]
    return [c for c in cases if match in c.name]
