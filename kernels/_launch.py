"""The one place where vidcore launches a Triton kernel.

`launch` runs a kernel with the inputs' CUDA device current: Triton launches on the *current*
device, so tensors on cuda:1 while cuda:0 is current would otherwise run on the wrong GPU.
`record_launches` replaces launching by recording, for the ahead-of-time compile checks
(vidcore.kernels._aot) and for tests of what a launcher asks for (grid, kernel arguments)
without running anything.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Launch", "check_grid", "device_guard", "launch", "record_launches"]

_MAX_GRID = (2**31 - 1, 65535, 65535)  # CUDA's limits on grid axes 0, 1 and 2


@dataclass
class Launch:
    """One recorded kernel launch: what `kernel[grid](*args, **kwargs)` would have run."""

    kernel: Any
    grid: Callable[[dict], tuple[int, ...]] | tuple[int, ...]
    args: tuple
    kwargs: dict
    device: torch.device

    def grid_for(self, meta: dict) -> tuple[int, ...]:
        """The grid for the meta-parameters `meta` (an autotune config's block sizes)."""
        return self.grid(meta) if callable(self.grid) else self.grid


_recorders: list[list[Launch]] = []


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Makes `device` current for a launch (no-op for CPU tensors: the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def launch(kernel: Any, grid: Callable[[dict], tuple[int, ...]] | tuple[int, ...], *args: Any,
           device: torch.device, **kwargs: Any) -> None:
    """kernel[grid](*args, **kwargs) on `device` (the device of the kernel's tensors)."""
    if _recorders:
        _recorders[-1].append(Launch(kernel, grid, args, kwargs, device))
        return
    with device_guard(device):
        kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Within the block, launches are recorded in the yielded list instead of run."""
    _recorders.append([])
    try:
        yield _recorders[-1]
    finally:
        _recorders.pop()


def check_grid(name: str, programs: int, axis: int = 0) -> int:
    """`programs` for grid axis `axis`, or a ValueError naming the launcher when CUDA cannot run
    it."""
    if programs > _MAX_GRID[axis]:
        raise ValueError(f"{name}: {programs} programs exceed CUDA's grid limit of "
                         f"{_MAX_GRID[axis]} on axis {axis}; split the batch")
    return programs
