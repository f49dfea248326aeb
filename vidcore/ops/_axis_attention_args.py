"""Argument checks of the axis_attention custom ops (their fakes and kernels), made without
reading tensor data; the public function's checks live with it in axis_attention.py."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from vidcore.ops._validation import check_same_shape, check_tensor

__all__ = ["OP", "DTYPES", "lse_dtype", "check_op_args", "check_backward_args"]

OP = "axis_attention"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def check_op_args(q: Tensor, k: Tensor, v: Tensor, scale: float) -> None:
    """What the custom ops need, checked without reading tensor data (fakes and kernels)."""
    check_tensor(OP, "q", q, dims=(5,), dtypes=DTYPES)
    for name, t in (("k", k), ("v", v)):
        check_tensor(OP, name, t, dims=(5,), dtypes=(q.dtype,), device=q.device)
        check_same_shape(OP, name, t, "q", q)
    if not math.isfinite(scale):
        raise ValueError(f"{OP}: scale must be finite, got {scale}")


def check_backward_args(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                        lse: Tensor, scale: float) -> None:
    """check_op_args plus the backward's own inputs."""
    check_op_args(q, k, v, scale)
    for name, t in (("grad_out", grad_out), ("out", out)):
        check_tensor(OP, name, t, dtypes=(q.dtype,), device=q.device)
        check_same_shape(OP, name, t, "q", q)
    check_tensor(OP, "lse", lse, dtypes=(lse_dtype(q.dtype),), device=q.device)
    if lse.shape != q.shape[:-1]:
        raise ValueError(f"{OP}: lse must have shape {tuple(q.shape[:-1])} (q without d), got "
                         f"{tuple(lse.shape)}")
