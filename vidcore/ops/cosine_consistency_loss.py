"""ST-LLM's masked video modelling loss as one fused op: mean(2 - 2 cos) over paired rows."""
from __future__ import annotations

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.kernels.cosine_consistency_loss_cpu import (
    cosine_consistency_loss_cpu_bwd,
    cosine_consistency_loss_cpu_fwd,
)
from vidcore.ops._validation import check_backend, check_same_shape, check_tensor
from vidcore.reference.cosine_consistency_loss import loss_dtype

__all__ = ["cosine_consistency_loss"]

_OP = "cosine_consistency_loss"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def cosine_consistency_loss(a: Tensor, b: Tensor, *, backend: str = "auto") -> Tensor:
    """`mean_i (2 - 2 cos(a_i, b_i))` over rows: the MSE between L2-normalised rows.

    cos uses F.normalize's rule, `a_i / max(|a_i|, 1e-12)`, so zero rows give cos 0 (loss 2),
    never NaN. Accumulates in float32 (float64 for float64 inputs); keeps no normalised copies:
    the backward recomputes the three row norms it needs from a and b.

    Args:
        a, b: [N, D] (or [..., D]: every leading index is a row), float16, bfloat16, float32 or
            float64; same shape, dtype and device. Differentiable in both.
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        0-d loss, float32 for 16-bit inputs, else a's dtype. N = 0 gives 0 (a batch with no
        rows adds nothing to a training loss, rather than NaN).
    Backends: CUDA -> kernels/cosine_consistency_loss.py (Triton); CPU ->
        kernels/cosine_consistency_loss_cpu.py (three row reductions); other devices ->
        reference.
    """
    check_backend(_OP, backend)
    _check_args(a, b)
    a, b = a.flatten(0, -2), b.flatten(0, -2)
    fn = reference.cosine_consistency_loss if backend == "torch" else _cosine_consistency_loss
    return fn(a, b)


def _check_args(a: Tensor, b: Tensor) -> None:
    check_tensor(_OP, "a", a, dtypes=_DTYPES)
    if a.dim() < 2:
        raise ValueError(f"{_OP}: a must be [N, D] (at least 2-D), got shape {tuple(a.shape)}")
    check_tensor(_OP, "b", b, dtypes=(a.dtype,), device=a.device)
    check_same_shape(_OP, "b", b, "a", a)


def _check_rows(a: Tensor, b: Tensor) -> None:
    """What the kernels read (direct torch.ops calls skip the public function): [N, D] pairs."""
    _check_args(a, b)
    if a.dim() != 2:
        raise ValueError(f"{_OP}: a must be 2-D [N, D] (the op flattens leading dims), got "
                         f"shape {tuple(a.shape)}")


def _checked_forward(kernel):
    def forward(a: Tensor, b: Tensor) -> Tensor:
        _check_rows(a, b)
        return kernel(a, b)
    return forward


def _checked_backward(kernel):
    def backward(grad: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        _check_rows(a, b)
        check_tensor(_OP, "grad", grad, dtypes=(loss_dtype(a.dtype),), device=a.device)
        if grad.dim() != 0:
            raise ValueError(f"{_OP}: grad must be 0-d (the loss's), got {tuple(grad.shape)}")
        return kernel(grad, a, b)
    return backward


@torch.library.custom_op("vidcore::cosine_consistency_loss", mutates_args=())
def _cosine_consistency_loss(a: Tensor, b: Tensor) -> Tensor:
    return _checked_forward(reference.cosine_consistency_loss)(a, b)


@_cosine_consistency_loss.register_fake
def _(a, b):
    _check_rows(a, b)
    return a.new_empty((), dtype=loss_dtype(a.dtype))


@torch.library.custom_op("vidcore::cosine_consistency_loss_backward", mutates_args=())
def _cosine_consistency_loss_backward(grad: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return _checked_backward(reference.cosine_consistency_loss_backward)(grad, a, b)


@_cosine_consistency_loss_backward.register_fake
def _(grad, a, b):
    return torch.empty_like(a), torch.empty_like(b)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor):
    a, b = ctx.saved_tensors
    return _cosine_consistency_loss_backward(grad, a, b)


_cosine_consistency_loss.register_autograd(_backward, setup_context=_setup_context)

_cosine_consistency_loss.register_kernel("cpu")(_checked_forward(cosine_consistency_loss_cpu_fwd))
_cosine_consistency_loss_backward.register_kernel("cpu")(
    _checked_backward(cosine_consistency_loss_cpu_bwd))

if TRITON is not None:
    from vidcore.kernels import cosine_consistency_loss as _triton

    _cosine_consistency_loss.register_kernel("cuda")(
        _checked_forward(_triton.cosine_consistency_loss_fwd))
    _cosine_consistency_loss_backward.register_kernel("cuda")(
        _checked_backward(_triton.cosine_consistency_loss_bwd))
