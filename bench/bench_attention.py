"""attention: dense, causal, cross-modal, temporal-range and sliding-window attention, forward and
fwd+bwd.

TFLOP/s count only visible (unmasked) query-key pairs: 4 * H * d * pairs forward, 3.5x that
forward + backward; the dense-equivalent figure is in each case's shape. Peers: SDPA (on CUDA its
flash / efficient / cuDNN backends; masked cases give SDPA the materialised boolean mask, on the
CPU the only way it can express them), FlexAttention (`torch.compile`d `flex_attention` with the
equivalent BlockMask, built outside the timing; on CUDA its build time is the separate
"flex_mask_build" provider; it has no CPU backward), and flash-attn when installed.
Sliding-window cases also time the same attention without the window ("vidcore_dense",
"sdpa_dense"): what the window saves.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from vidcore.bench.harness import BenchCase, run_pytest_benchmark, shapes

from vidcore.ops import attention, window_ranges

# (name, batch, len_q, len_k, heads, head_dim, causal, density of the frame window or None,
#  sliding window (left keys) or None)
SHAPES = {
    "tiny": [("dense", 1, 32, 32, 2, 32, False, None, None),
             ("frames-25%", 1, 64, 64, 2, 32, False, 0.25, None)],
    "small": [("dense", 2, 1024, 1024, 8, 64, False, None, None),
              ("causal", 2, 1024, 1024, 8, 64, True, None, None),
              ("frames-25%", 2, 1024, 1024, 8, 64, False, 0.25, None),
              ("window-1024", 1, 4096, 4096, 4, 64, True, None, 1023)],
    "full": [*(("dense", 16384 // n, n, n, 16, 128, False, None, None) for n in (1024, 4096, 16384)),
             *(("causal", 16384 // n, n, n, 16, 128, True, None, None) for n in (1024, 4096, 16384)),
             ("cross-512x64f", 1, 512, 64 * 256, 16, 128, False, None, None),
             *((f"frames-{d:.1%}", 1, 64 * 256, 64 * 256, 16, 128, False, d, None)
               for d in (0.5, 0.25, 0.125)),
             ("window-4096", 1, 65536, 65536, 16, 128, True, None, 4095),
             ("long", 1, 65536, 65536, 16, 128, True, None, None)],  # peak memory: linear in L
}
# `vidcore bench --ops attention --shape Lq=4096,Lk=4096,causal=true` (density=0.25: frame window;
# window=1023: sliding window of 1024 keys)
DIMS = {"name": "custom", "B": 2, "Lq": 256, "Lk": 256, "H": 4, "d": 64, "causal": False,
        "density": None, "window": None}
FRAMES = 64


def _frame_window(len_q: int, len_k: int, density: float) -> tuple[torch.Tensor, int]:
    """Each query of frame t sees a window of density * FRAMES frames around t."""
    tokens_per_frame = len_k // FRAMES
    window = max(0, round(density * FRAMES) - 1) // 2
    query_frames = [i * FRAMES // len_q for i in range(len_q)]
    return window_ranges(query_frames, window, FRAMES), tokens_per_frame


class _Mask:
    """The case's visibility as (row, col) -> bool, evaluated on any broadcastable index tensors:
    for the boolean mask SDPA gets, FlexAttention's mask_mod and the visible-pair count."""

    def __init__(self, len_q, len_k, causal, ranges, tokens_per_frame, window):
        self.offset, self.causal, self.window = len_k - len_q, causal, window
        self.ranges, self.tokens_per_frame = ranges, tokens_per_frame
        self.len_q, self.len_k = len_q, len_k

    @property
    def dense(self) -> bool:
        return self.ranges is None and self.window is None

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        pos = rows + self.offset
        visible = (cols <= pos) if self.causal else torch.ones_like(cols, dtype=torch.bool)
        if self.window is not None:
            visible = visible & (cols >= pos - self.window)
        if self.ranges is not None:
            frame = cols // self.tokens_per_frame
            start, end = self.ranges.to(rows.device)[rows].unbind(-1)
            visible = visible & (start <= frame) & (frame < end)
        return visible

    def matrix(self, device) -> torch.Tensor:
        return self(torch.arange(self.len_q)[:, None], torch.arange(self.len_k)[None, :]).to(device)

    def pairs(self) -> int:
        """Visible (query, key) pairs of one sequence, 256 query rows at a time."""
        cols = torch.arange(self.len_k)[None, :]
        return sum(int(self(torch.arange(r, min(r + 256, self.len_q))[:, None], cols).sum())
                   for r in range(0, self.len_q, 256))


def _peers(q, k, v, mask: _Mask, device, backward) -> dict[str, Callable[[], object]]:
    """SDPA / FlexAttention / flash-attn on [B, H, L, d] views of the same data."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    matrix = None if mask.dense else mask.matrix(device)
    is_causal = mask.causal and mask.dense
    peers = {}
    if device != "cuda":
        peers["sdpa"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=matrix,
                                                               is_causal=is_causal)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa(backend):
            def run():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=matrix,
                                                          is_causal=is_causal)
            return run

        if mask.dense:
            peers |= {"sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),
                      "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
        peers["sdpa_efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION)
    if mask.window is not None:  # the same causal attention without the window
        peers["sdpa_dense"] = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    if device == "cuda" or not backward:  # FlexAttention has no CPU backward (torch 2.14)
        peers |= _flex(qt, kt, vt, mask, device, backward)
    try:
        from flash_attn import flash_attn_func

        if device == "cuda" and mask.ranges is None:
            window = (-1, -1) if mask.window is None else (mask.window, 0)
            peers["flash_attn"] = lambda: flash_attn_func(q, k, v, causal=mask.causal,
                                                          window_size=window)
    except ImportError:
        pass
    return peers


def _flex(qt, kt, vt, mask: _Mask, device, backward) -> dict[str, Callable[[], object]]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    mask_mod = None if mask.dense and not mask.causal else (lambda b, h, i, j: mask(i, j))

    def build():
        return create_block_mask(mask_mod, None, None, mask.len_q, mask.len_k, device=device) \
            if mask_mod else None

    block_mask = build()
    peers = {"flex": lambda: flex(qt, kt, vt, block_mask=block_mask)}
    if device == "cuda" and not backward:
        peers["flex_mask_build"] = build
    return peers


def cases(size: str | dict[str, object], device: str, dtype: torch.dtype | None = None
          ) -> list[BenchCase]:
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    result = []
    for name, batch, len_q, len_k, heads, dim, causal, density, window in shapes(SHAPES, size,
                                                                                  DIMS):
        ranges, tpf = _frame_window(len_q, len_k, density) if density else (None, None)
        mask = _Mask(len_q, len_k, causal, ranges, tpf, window)
        pairs = batch * mask.pairs()
        shape = {"B": batch, "Lq": len_q, "Lk": len_k, "H": heads, "d": dim, "causal": causal,
                 "density": density, "window": window, "visible_pairs": pairs,
                 "dense_equivalent_flops": 4 * batch * heads * len_q * len_k * dim}
        for backward in (False, True):
            result.append(_case(name, batch, heads, dim, mask, dtype, device, backward, shape,
                                pairs))
    return result


def _case(name, batch, heads, dim, mask: _Mask, dtype, device, backward, shape, pairs
          ) -> BenchCase:
    flops = int(4 * heads * dim * pairs * (3.5 if backward else 1.0))
    len_q, len_k = mask.len_q, mask.len_k

    def build():
        # requires_grad before any view is taken: a view taken earlier is cut off from q, and
        # autograd then skips the peer's backward altogether
        q = torch.randn(batch, len_q, heads, dim, device=device, dtype=dtype,
                        requires_grad=backward)
        k, v = (torch.randn(batch, len_k, heads, dim, device=device, dtype=dtype,
                            requires_grad=backward) for _ in "kv")
        fns = _peers(q, k, v, mask, device, backward)
        cu_q = torch.arange(batch + 1, dtype=torch.int32, device=device) * len_q
        cu_k = torch.arange(batch + 1, dtype=torch.int32, device=device) * len_k
        packed = [t.flatten(0, 1) for t in (q, k, v)]
        common = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=len_q,
                      max_seqlen_k=len_k, causal=mask.causal)
        extra = {} if mask.ranges is None else {
            "tokens_per_frame": mask.tokens_per_frame,
            "q_frame_range": mask.ranges.repeat(batch, 1).to(device)}
        if mask.window is not None:
            extra["window"] = (mask.window, 0)
            fns["vidcore_dense"] = lambda: attention(*packed, **common)
        fns["vidcore"] = lambda: attention(*packed, **common, **extra)
        if backward:
            fns = {p: _with_backward(fn) for p, fn in fns.items() if p != "flex_mask_build"}
        return fns

    if device != "cuda":
        baseline = "sdpa"
    else:  # FA2 (SDPA flash) on dense cases; masked cases: SDPA's only masked kernel
        baseline = "sdpa_flash" if mask.dense else "sdpa_efficient"
    return BenchCase("attention", f"{name}-L{len_q}x{len_k}" + "-fwd+bwd" * backward,
                     shape, build, _providers(mask, device, backward), flops=flops,
                     baseline=baseline, dtype=str(dtype).removeprefix("torch."),
                     kernel_ops=("attention", "attention_backward") if backward else ("attention",))


def _providers(mask: _Mask, device: str, backward: bool) -> tuple[str, ...]:
    if device == "cuda":
        names = ["sdpa_flash", "sdpa_cudnn"] if mask.dense else []
        names += ["sdpa_efficient", "flex"] + ([] if backward else ["flex_mask_build"])
    else:
        names = ["sdpa"] if backward else ["sdpa", "flex"]
    if mask.window is not None:
        names += ["sdpa_dense", "vidcore_dense"]
    try:
        import flash_attn  # noqa: F401

        names += ["flash_attn"] if device == "cuda" and mask.ranges is None else []
    except ImportError:
        pass
    return (*names, "vidcore")


def _with_backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        out = fn()
        if out.grad_fn is None:
            raise RuntimeError("attention bench: a fwd+bwd provider's output has no grad_fn")
        out.backward(torch.ones_like(out))
    return run


def test_attention(benchmark, bench_case, provider, bench_device):
    run_pytest_benchmark(benchmark, bench_case, provider, bench_device)
