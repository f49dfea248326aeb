"""The one tolerance table and the comparison helpers shared by tests and benchmarks.

Data-movement ops (keys, masks, packing, copies) compare exactly; numeric ops compare against a
float32 (or float64) reference with the per-dtype tolerance below.
"""
from __future__ import annotations

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
