"""What the kernels' config rules need to know about the GPU they will run on.

On a CUDA device the figures come from the device. CPU tensors (the Triton interpreter, and
the ahead-of-time compile checks, which set the target they compile for with `compile_target`)
get the figures of the target in effect, an H100 by default.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["TARGETS", "Target", "compile_target", "target_of"]


@dataclass(frozen=True)
class Target:
    """A GPU as the config rules see it: compute capability (80 for sm_80, 90 for sm_90a), the
    shared memory one block may use (bytes, with opt-in) and the number of SMs."""

    name: str
    arch: int
    max_shared: int
    num_sms: int


TARGETS = {
    "sm_80": Target("A100", 80, 166912, 108),
    "sm_90a": Target("H100 SXM", 90, 232448, 132),
}
_override: list[Target] = []


@functools.cache
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(props.name, props.major * 10 + props.minor, props.shared_memory_per_block_optin,
                  props.multi_processor_count)


def target_of(device: torch.device) -> Target:
    """The target a kernel launched for tensors on `device` runs on."""
    if _override:
        return _override[-1]
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else
                            torch.cuda.current_device())
    return TARGETS["sm_90a"]


@contextlib.contextmanager
def compile_target(target: Target) -> Iterator[Target]:
    """Within the block, config rules and launchers plan for `target` whatever the device."""
    _override.append(target)
    try:
        yield target
    finally:
        _override.pop()
