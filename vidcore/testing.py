"""The one tolerance table and the comparison helpers shared by tests and benchmarks.

Data-movement ops (keys, masks, packing, copies) compare exactly; numeric ops compare against a
float32 (or float64) reference with the per-dtype tolerance below.
"""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "TOLERANCES",
    "MODEL_TOLERANCES",
    "assert_exact",
    "assert_close",
    "assert_no_worse_than_torch",
    "assert_matches_reference",
    "opcheck",
    "run_isolated",
    "assert_raises_cleanly",
    "attention_oracle",
    "random_attention_case",
    "attention_op_args",
]

# Against a reference computed in float32 (float64 for float64 inputs).
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1.3e-6),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
}


# Whole models (ST-LLM, MiniGPT4-Video) with vidcore's kernels against their reference path
# (padded batch, SDPA) in float32: a few layers of differently ordered reductions.
MODEL_TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
}


def _flatten(x: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def assert_exact(actual: Tensor | Sequence[Tensor], expected: Tensor | Sequence[Tensor]) -> None:
    """Bit-exact equality of every tensor (shape, dtype and values; NaNs must match too)."""
    for i, (a, e) in enumerate(zip(_flatten(actual), _flatten(expected), strict=True)):
        assert a.shape == e.shape and a.dtype == e.dtype, (
            f"output {i}: {a.dtype}{tuple(a.shape)} != expected {e.dtype}{tuple(e.shape)}")
        same = torch.equal(a, e) or (a.is_floating_point() and torch.equal(a.isnan(), e.isnan())
                                     and torch.equal(a.nan_to_num(), e.nan_to_num()))
        if not same:
            where = (a != e).nonzero()[:5].tolist()
            raise AssertionError(f"output {i}: not bit-identical; first differing indices {where}")


def assert_close(actual: Tensor | Sequence[Tensor], expected: Tensor | Sequence[Tensor],
                 dtype: torch.dtype | None = None) -> None:
    """Closeness with the tolerance of `dtype` (default: each actual tensor's dtype); integer
    tensors compare exactly. -inf matches -inf."""
    for a, e in zip(_flatten(actual), _flatten(expected), strict=True):
        if not a.is_floating_point():
            assert_exact(a, e)
            continue
        tol = TOLERANCES[dtype or a.dtype]
        torch.testing.assert_close(a.to(e.dtype), e, **tol, equal_nan=False)


def assert_no_worse_than_torch(out: Tensor, out_torch: Tensor, ref: Tensor,
                               factor: float = 2.0) -> None:
    """Flash-attention's self-calibrating rule for long reductions: the kernel's max error against
    the high-precision reference is at most `factor` x PyTorch's own error in the same dtype,
    plus the dtype's atol."""
    err = (out.double() - ref.double()).abs().nan_to_num().max().item()
    err_torch = (out_torch.double() - ref.double()).abs().nan_to_num().max().item()
    bound = factor * err_torch + TOLERANCES[out.dtype]["atol"]
    assert err <= bound, f"max error {err:.3g} > {factor} x torch's {err_torch:.3g} + atol"


def assert_matches_reference(fast: Callable[..., object], reference: Callable[..., object],
                             *args: object, exact: bool = False, **kwargs: object) -> None:
    """Run a fast path and the reference on the same inputs and compare their outputs
    (exactly for data-movement ops, else with the output dtype's tolerance)."""
    actual, expected = fast(*args, **kwargs), reference(*args, **kwargs)
    (assert_exact if exact else assert_close)(actual, expected)  # type: ignore[arg-type]


def opcheck(op: Callable[..., object], args: tuple, kwargs: dict | None = None) -> None:
    """torch.library.opcheck with every check; raises with the failing check's report."""
    report = torch.library.opcheck(op, args, kwargs or {})
    failed = {k: v for k, v in report.items() if v != "SUCCESS"}
    assert not failed, f"opcheck failed: {failed}"


def run_isolated(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (so a crash in a kernel cannot take the caller down)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


_RAISE_PROBE = """
import torch, vidcore
try:
    {call}
except BaseException as e:  # noqa: BLE001  every Python exception is an acceptable outcome
    print("RAISED", type(e).__name__, str(e).splitlines()[0] if str(e) else "", sep="|")
else:
    print("RETURNED")
"""


def assert_raises_cleanly(call: str, match: str | None = None,
                          timeout: float = 300) -> tuple[str, str]:
    """Run one statement (e.g. a direct `torch.ops.vidcore.pack(...)` call) in a subprocess and
    require that it raise a Python exception: never return, never die by a signal or abort.
    `match`, if given, must occur in the exception's first line. Returns (type name, message).
    """
    result = run_isolated(_RAISE_PROBE.format(call=call), timeout=timeout)
    assert result.returncode == 0, (
        f"`{call}` killed the interpreter (exit {result.returncode}):\n{result.stderr[-2000:]}")
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert last.startswith("RAISED|"), f"`{call}` returned without raising: {result.stdout!r}"
    _, name, message = last.split("|", 2)
    assert match is None or match in message, f"`{call}` raised {name}: {message!r}, " \
        f"expected a message containing {match!r}"
    return name, message


def attention_oracle(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                     *, causal: bool = False, scale: float | None = None,
                     tokens_per_frame: int | None = None, q_frame_range: Tensor | None = None,
                     window: tuple[int, int] | None = None, softcap: float | None = None
                     ) -> tuple[Tensor, Tensor]:
    """vidcore.ops.attention written out from its definition (DESIGN.md section 3), for tests:
    float64, dense per sequence, the mask built by an explicit loop over (i, j), written
    independently of vidcore.reference. Differentiable by torch's autograd; tiny shapes only.
    Returns out [total_q, Hq, d] and lse [Hq, total_q] (float64; out 0 and lse -inf for queries
    that see no key)."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    left, right = window or (-1, -1)
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cu_q) - 1):
        len_q, len_k = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        visible = torch.zeros(len_q, len_k, dtype=torch.bool)
        for i in range(len_q):
            pos = i + len_k - len_q
            for j in range(len_k):
                seen = (not causal or j <= pos) and (left < 0 or j >= pos - left)
                seen = seen and (right < 0 or j <= pos + right)
                if q_frame_range is not None:
                    start, end = q_frame_range[cu_q[b] + i].tolist()
                    seen = seen and start <= j // tokens_per_frame < end
                visible[i, j] = seen
        qs = q[cu_q[b]:cu_q[b + 1]]
        ks, vs = (t[cu_k[b]:cu_k[b + 1]].repeat_interleave(group, 1) for t in (k, v))
        scores = torch.einsum("ihd,jhd->hij", qs, ks) * scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        visible = visible.to(q.device)
        scores = torch.where(visible, scores, -math.inf)
        lse = torch.logsumexp(scores, -1)  # -inf for rows that see no key
        probs = torch.where(visible, torch.exp(scores - torch.where(lse.isinf(), 0, lse)[..., None]),
                            0)
        outs.append(torch.einsum("hij,jhd->ihd", probs, vs))
        lses.append(lse)
    out = torch.cat(outs) if outs else q.new_zeros(q.shape)
    lse = torch.cat(lses, 1) if lses else q.new_zeros(q.shape[1], 0)
    return out, lse


def random_attention_case(lens_q: Sequence[int], lens_k: Sequence[int], *, heads_q: int = 2,
                          heads_kv: int = 1, dim: int = 16, dtype: torch.dtype = torch.float32,
                          device: str = "cpu", seed: int = 0, causal: bool = False,
                          tokens_per_frame: int | None = None,
                          window: tuple[int, int] | None = None, softcap: float | None = None
                          ) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Packed q, k, v of sequences with the given lengths and vidcore.ops.attention's keyword
    arguments for them. Frame ranges (with tokens_per_frame) are drawn per query, some empty,
    some past the last frame, some starting below 0."""
    gen = torch.Generator().manual_seed(seed)

    def offsets(lens: Sequence[int]) -> Tensor:
        return torch.tensor([0, *torch.tensor(list(lens), dtype=torch.long).cumsum(0).tolist()],
                            dtype=torch.int32, device=device)

    q = torch.randn(sum(lens_q), heads_q, dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(sum(lens_k), heads_kv, dim, generator=gen).to(device, dtype)
            for _ in "kv")
    kwargs = dict(cu_seqlens_q=offsets(lens_q), cu_seqlens_k=offsets(lens_k),
                  max_seqlen_q=max(lens_q, default=0), max_seqlen_k=max(lens_k, default=0),
                  causal=causal, window=window, softcap=softcap)
    if tokens_per_frame:
        start = torch.randint(-1, 5, (sum(lens_q),), generator=gen)
        end = start + torch.randint(-1, 5, (sum(lens_q),), generator=gen)  # some empty
        kwargs |= dict(tokens_per_frame=tokens_per_frame,
                       q_frame_range=torch.stack([start, end], 1).int().to(device))
    return q, k, v, kwargs


def attention_op_args(kwargs: dict, dim: int) -> tuple:
    """The positional arguments of torch.ops.vidcore.attention (and of its kernels) after q, k,
    v, for `random_attention_case`'s keyword arguments."""
    left, right = kwargs.get("window") or (-1, -1)
    return (kwargs["cu_seqlens_q"], kwargs["cu_seqlens_k"], kwargs["max_seqlen_q"],
            kwargs["max_seqlen_k"], kwargs.get("causal", False), 1 / math.sqrt(dim),
            kwargs.get("tokens_per_frame") or 0, kwargs.get("q_frame_range"), left, right,
            kwargs.get("softcap") or 0.0)
