"""Which vidcore kernel a benchmark provider really runs.

A row's `kernel` column comes from a trace of one call, not from names: a TorchDispatchMode records
every `vidcore::` op the call reaches and the dispatch key of its tensors, and the kernel is the
one registered for that key (`torch._C._dispatch_has_kernel_for_dispatch_key`), else the op's
default implementation, the reference. `check_dispatch` rejects a "vidcore" provider that does
not reach its case's ops on the benchmark's device, e.g. one that silently runs
`backend="torch"` (which calls the reference directly) or whose tensors sit on another device.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vidcore.ops import FAST_KERNELS

__all__ = ["Dispatch", "DispatchError", "trace_dispatch", "check_dispatch", "kernel_label"]

_KEY = {"cpu": "CPU", "cuda": "CUDA"}


class DispatchError(RuntimeError):
    """A vidcore provider that would time something other than the kernel its row names."""


@dataclass(frozen=True)
class Dispatch:
    op: str  # "pack" for vidcore::pack
    key: str  # dispatch key of its tensors: "CPU", "CUDA", ...
    kernel: str  # "C++", "CUDA C++", "Triton" or "reference"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _kernel(op: str, key: str) -> str:
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"vidcore::{op}", key):
        return "reference"  # the custom op's default implementation
    device = {v: k for k, v in _KEY.items()}.get(key)
    listed = FAST_KERNELS.get(op, {}).get(device)
    return listed[0] if listed else f"unlisted {key} kernel"


class _VidcoreOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Dispatch] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "vidcore":
            op = func._schema.name.split("::", 1)[1]
            flat = [x for a in (*args, *kwargs.values())
                    for x in (a if isinstance(a, (list, tuple)) else (a,))]  # Tensor[] arguments
            tensors = [a for a in flat if isinstance(a, torch.Tensor)]
            key = _KEY.get(tensors[0].device.type, tensors[0].device.type) if tensors else "none"
            entry = Dispatch(op, key, _kernel(op, key))
            if entry not in self.seen:
                self.seen.append(entry)
        return func(*args, **kwargs)


def trace_dispatch(fn: Callable[[], object]) -> list[Dispatch]:
    """The distinct (vidcore op, dispatch key, kernel) triples one call of fn reaches, in order
    (backward ops included when fn runs a backward)."""
    with _VidcoreOps() as mode:
        fn()
    return mode.seen


def check_dispatch(case, fn: Callable[[], object], device: str) -> list[Dispatch]:
    """Trace one call of a case's "vidcore" provider and require that it reaches every op of
    `case.kernel_ops` (default: the case's op) and only on `device`; returns the trace."""
    where = f"bench {case.op}/{case.name}: the vidcore provider"
    trace = trace_dispatch(fn)
    ran = [d.op for d in trace]
    missing = [op for op in case.kernel_ops or (case.op,) if op not in ran]
    if missing:
        raise DispatchError(f"{where} never reached vidcore::{', vidcore::'.join(missing)} (it ran "
                            f"{ran or 'no vidcore op'}): timing it would not time the kernel")
    elsewhere = [d for d in trace if d.key != _KEY[device]]
    if elsewhere:
        raise DispatchError(f"{where} ran {[f'{d.op} on {d.key}' for d in elsewhere]}, not on "
                            f"the benchmark device {device}")
    return trace


def kernel_label(trace: list[Dispatch]) -> str:
    """The `kernel` column: the distinct kernels that ran, e.g. "C++" or "Triton + reference"."""
    return " + ".join(dict.fromkeys(d.kernel for d in trace))
