"""attention: dense, causal, cross-modal and temporal-range attention, forward and fwd+bwd.

TFLOP/s count only visible (unmasked) query-key pairs: 4 * H * d * pairs forward, 2.5x that
for the backward; the dense-equivalent figure is in each case's shape. Peers on CUDA: SDPA's
flash / efficient / cuDNN backends (dense cases; masked cases give SDPA the materialised mask),
FlexAttention with the equivalent BlockMask (its build time is the separate "flex_mask_build"
provider), and flash-attn's varlen kernel when it is installed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from vidcore.bench.harness import BenchCase, run_pytest_benchmark, shapes

from vidcore.ops import attention, window_ranges

# (name, batch, len_q, len_k, heads, head_dim, causal, density of the frame window or None)
SHAPES = {
    "tiny": [("dense", 1, 32, 32, 2, 32, False, None)],
    "small": [("dense", 2, 256, 256, 4, 64, False, None), ("causal", 2, 256, 256, 4, 64, True, None),
              ("frames-25%", 1, 512, 512, 4, 64, False, 0.25)],
    "full": [*(("dense", 16384 // n, n, n, 16, 128, False, None) for n in (1024, 4096, 16384)),
             *(("causal", 16384 // n, n, n, 16, 128, True, None) for n in (1024, 4096, 16384)),
             ("cross-512x64f", 1, 512, 64 * 256, 16, 128, False, None),
             *((f"frames-{d:.1%}", 1, 64 * 256, 64 * 256, 16, 128, False, d)
               for d in (0.5, 0.25, 0.125)),
             ("long", 1, 65536, 65536, 16, 128, True, None)],  # peak memory: linear in L
}
# `vidcore bench --ops attention --shape Lq=4096,Lk=4096,causal=true` (density=0.25: frame window)
DIMS = {"name": "custom", "B": 2, "Lq": 256, "Lk": 256, "H": 4, "d": 64, "causal": False,
        "density": None}
FRAMES = 64


def _frame_window(len_q: int, len_k: int, density: float) -> tuple[torch.Tensor, int]:
    """Each query of frame t sees a window of density * FRAMES frames around t."""
    tokens_per_frame = len_k // FRAMES
    window = max(0, round(density * FRAMES) - 1) // 2
    query_frames = [i * FRAMES // len_q for i in range(len_q)]
    return window_ranges(query_frames, window, FRAMES), tokens_per_frame


def _visible_mask(len_q, len_k, causal, ranges, tokens_per_frame, device) -> torch.Tensor:
    rows, cols = torch.arange(len_q)[:, None], torch.arange(len_k)[None, :]
    mask = cols <= rows + (len_k - len_q) if causal else torch.ones(len_q, len_k, dtype=torch.bool)
    if ranges is not None:
        frame = cols // tokens_per_frame
        mask = mask & (ranges[:, :1] <= frame) & (frame < ranges[:, 1:])
    return mask.to(device)


def _visible_pairs(len_q, len_k, causal, ranges, tokens_per_frame) -> int:
    """Visible (query, key) pairs of one sequence; counted without an L x L mask when dense."""
    if ranges is not None:
        return int(_visible_mask(len_q, len_k, causal, ranges, tokens_per_frame, "cpu").sum())
    if not causal:
        return len_q * len_k
    return sum(max(0, min(len_k, i + 1 + len_k - len_q)) for i in range(len_q))


def _peers(q, k, v, causal, mask, dense, device) -> dict[str, Callable[[], object]]:
    """SDPA / FlexAttention / flash-attn on [B, H, L, d] views of the same data; `mask` is the
    materialised visibility (None for dense cases, which pass is_causal instead)."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    peers = {}
    if device != "cuda":
        peers["sdpa_math"] = lambda: F.scaled_dot_product_attention(
            qt, kt, vt, attn_mask=mask, is_causal=causal and dense)
        return peers
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                if dense:
                    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
                return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
        return run

    if dense:
        peers |= {"sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
                  "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    peers["sdpa_efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    flex = torch.compile(flex_attention)
    offset = k.shape[1] - q.shape[1]  # bottom-right causal, as vidcore's
    mask_mod = ((lambda b, h, i, j: mask[i, j]) if mask is not None
                else (lambda b, h, i, j: j <= i + offset) if causal else None)
    build = lambda: create_block_mask(mask_mod, None, None, q.shape[1], k.shape[1],  # noqa: E731
                                      device=device) if mask_mod else None
    block_mask = build()
    peers |= {"flex": lambda: flex(qt, kt, vt, block_mask=block_mask), "flex_mask_build": build}
    try:
        from flash_attn import flash_attn_func

        if dense:
            peers["flash_attn"] = lambda: flash_attn_func(q, k, v, causal=causal)
    except ImportError:
        pass
    return peers


def cases(size: str | dict[str, object], device: str, dtype: torch.dtype | None = None
          ) -> list[BenchCase]:
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    result = []
    for name, batch, len_q, len_k, heads, dim, causal, density in shapes(SHAPES, size, DIMS):
        ranges, tpf = _frame_window(len_q, len_k, density) if density else (None, None)
        pairs = batch * _visible_pairs(len_q, len_k, causal, ranges, tpf)
        shape = {"B": batch, "Lq": len_q, "Lk": len_k, "H": heads, "d": dim, "causal": causal,
                 "density": density, "dense_equivalent_flops": 4 * batch * heads * len_q * len_k * dim}
        for backward in (False, True):
            result.append(_case(name, batch, len_q, len_k, heads, dim, causal, ranges, tpf, dtype,
                                device, backward, shape, pairs))
    return result


def _case(name, batch, len_q, len_k, heads, dim, causal, ranges, tpf, dtype, device, backward,
          shape, pairs) -> BenchCase:
    flops = int(4 * heads * dim * pairs * (3.5 if backward else 1.0))
    peer_names = (("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "flex", "flex_mask_build")
                  if device == "cuda" else ("sdpa_math",))

    def build():
        q = torch.randn(batch, len_q, heads, dim, device=device, dtype=dtype)
        k, v = (torch.randn(batch, len_k, heads, dim, device=device, dtype=dtype) for _ in "kv")
        mask = None if dense else _visible_mask(len_q, len_k, causal, ranges, tpf, device)
        fns = _peers(q, k, v, causal, mask, dense, device)
        cu_q = torch.arange(0, (batch + 1) * len_q, len_q, dtype=torch.int32, device=device)
        cu_k = torch.arange(0, (batch + 1) * len_k, len_k, dtype=torch.int32, device=device)
        packed = [t.flatten(0, 1) for t in (q, k, v)]
        extra = {} if dense else {"tokens_per_frame": tpf,
                                  "q_frame_range": ranges.repeat(batch, 1).to(device)}
        fns["vidcore"] = lambda: attention(*packed, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                           max_seqlen_q=len_q, max_seqlen_k=len_k, causal=causal,
                                           **extra)
        if backward:
            for t in (q, k, v, *packed):
                t.requires_grad_()
            fns = {p: _with_backward(fn) for p, fn in fns.items() if p != "flex_mask_build"}
        return fns

    dense = ranges is None
    if device != "cuda":
        baseline = "sdpa_math"
    else:  # FA2 (SDPA flash) on dense cases; masked cases: SDPA's only masked kernel
        baseline = "sdpa_flash" if dense else "sdpa_efficient"
    skipped = {"flex_mask_build"} if backward else set()
    skipped |= set() if dense else {"sdpa_flash", "sdpa_cudnn"}  # no arbitrary masks there
    providers = tuple(p for p in (*peer_names, "vidcore") if p not in skipped)
    return BenchCase("attention", f"{name}-L{len_q}x{len_k}" + "-fwd+bwd" * backward,
                     shape, build, providers, flops=flops, baseline=baseline,
                     dtype=str(dtype).removeprefix("torch."),
                     kernel_ops=("attention", "attention_backward") if backward else ("attention",))


def _with_backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        out = fn()
        out.backward(torch.ones_like(out))
    return run


def test_attention(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
