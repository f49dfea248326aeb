"""Argument checks shared by the public wrappers and the fake implementations.

Messages name the op and the argument, so a user sees `unit_keys: num_units must be >= 0, got -1`
instead of an index error deep in a kernel.
"""
from __future__ import annotations

import torch
from torch import Tensor

BACKENDS = ("auto", "torch")


def check_backend(op: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")


def check_int(op: str, name: str, value: object, *, minimum: int | None = None,
              below: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{op}: {name} must be < {below}, got {value}")


def check_tensor(op: str, name: str, t: object, *, dims: tuple[int, ...] | None = None,
                 dtypes: tuple[torch.dtype, ...] | None = None,
                 device: torch.device | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{op}: {name} must be {want}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} must be on {device} like the other inputs, got {t.device}")
    return t


def check_same_shape(op: str, name: str, t: Tensor, like_name: str, like: Tensor) -> None:
    if t.shape != like.shape:
        raise ValueError(f"{op}: {name} must have the shape of {like_name} {tuple(like.shape)}, "
                         f"got {tuple(t.shape)}")
