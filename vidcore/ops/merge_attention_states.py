"""Exact merge of two partial attention results over disjoint key sets (split-KV, long videos)."""
from __future__ import annotations

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.ops._validation import check_backend, check_same_shape, check_tensor

__all__ = ["merge_attention_states"]

_OP = "merge_attention_states"
_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LSE_DTYPES = (torch.float32, torch.float64)


def merge_attention_states(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Combine attention over key set A and over a disjoint key set B into attention over A + B.

    `out = w_a * out_a + w_b * out_b` with `w_x = exp(lse_x - lse)` and
    `lse = logaddexp(lse_a, lse_b)`, computed in fp32. Rows that saw no keys have lse = -inf;
    if both sides saw none the result is out = 0, lse = -inf (never NaN). An lse of +inf (an
    overflowed partial state) has no meaningful merge: it is rejected where lse is on the CPU
    (the check reads it); on a GPU, where reading it would cost a host sync, such rows come out
    NaN. Differentiable in all four inputs.

    Args:
        out_a, out_b: [N, H, d] (packed rows, e.g. `total_q`) or [B, N, H, d]; fp16, bf16, fp32
            or fp64; same shape, dtype and device.
        lse_a, lse_b: [H, N] or [B, H, N] log-sum-exp, float32 (float64 allowed for gradcheck).
        backend: "auto" (the fast kernel of the device) or "torch" (the reference).
    Returns:
        (out, lse): out like out_a; lse like lse_a in float32 or wider.
    Backends: CUDA -> kernels/merge_attention_states.py (Triton); other devices -> reference.
    """
    _check_args(out_a, lse_a, out_b, lse_b)
    check_backend(_OP, backend)
    if backend == "torch":
        _check_lse_values(lse_a, lse_b)
        return reference.merge_attention_states(out_a, lse_a, out_b, lse_b)
    return _merge_attention_states(out_a, lse_a, out_b, lse_b)


def _check_args(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> None:
    check_tensor(_OP, "out_a", out_a, dims=(3, 4), dtypes=_OUT_DTYPES)
    check_tensor(_OP, "out_b", out_b, dtypes=(out_a.dtype,), device=out_a.device)
    check_same_shape(_OP, "out_b", out_b, "out_a", out_a)
    *batch, num_rows, heads, _ = out_a.shape
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        check_tensor(_OP, name, lse, dtypes=_LSE_DTYPES, device=out_a.device)
        if tuple(lse.shape) != (*batch, heads, num_rows):
            raise ValueError(f"{_OP}: {name} must have shape {(*batch, heads, num_rows)} "
                             f"([..., H, N] for out [..., N, H, d]), got {tuple(lse.shape)}")


def _check_lse_values(lse_a: Tensor, lse_b: Tensor) -> None:
    """No +inf in lse (read only on the CPU: elsewhere it would be a host sync)."""
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.device.type == "cpu" and bool(torch.isposinf(lse).any()):
            raise ValueError(f"{_OP}: {name} has +inf entries (an overflowed partial state); "
                             f"lse must be finite, or -inf for rows that saw no keys")


@torch.library.custom_op("vidcore::merge_attention_states", mutates_args=())
def _merge_attention_states(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    # The CPU path (and any device without a kernel): checked here too, so that direct op
    # calls and compiled graphs, which skip the public function's checks, cannot misuse it.
    _check_args(out_a, lse_a, out_b, lse_b)
    _check_lse_values(lse_a, lse_b)
    return reference.merge_attention_states(out_a, lse_a, out_b, lse_b)


@_merge_attention_states.register_fake
def _(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    _check_args(out_a, lse_a, out_b, lse_b)
    lse_dtype = torch.promote_types(lse_a.dtype, torch.float32)
    return torch.empty_like(out_a), lse_a.new_empty(lse_a.shape, dtype=lse_dtype)


@torch.library.custom_op("vidcore::merge_attention_states_backward", mutates_args=())
def _merge_attention_states_backward(
    grad_out: Tensor, grad_lse: Tensor, out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)
    return reference.merge_attention_states_backward(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)


def _check_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b) -> None:
    _check_args(out_a, lse_a, out_b, lse_b)
    check_tensor(_OP, "grad_out", grad_out, dtypes=(out_a.dtype,), device=out_a.device)
    check_same_shape(_OP, "grad_out", grad_out, "out_a", out_a)
    check_tensor(_OP, "grad_lse", grad_lse, dtypes=_LSE_DTYPES, device=out_a.device)
    check_same_shape(_OP, "grad_lse", grad_lse, "lse_a", lse_a)


@_merge_attention_states_backward.register_fake
def _(grad_out, grad_lse, out_a, lse_a, out_b, lse_b):
    _check_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)
    return (torch.empty_like(out_a), torch.empty_like(lse_a),
            torch.empty_like(out_b), torch.empty_like(lse_b))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: Tensor | None, grad_lse: Tensor | None):
    out_a, lse_a, out_b, lse_b = ctx.saved_tensors
    grad_out = torch.zeros_like(out_a) if grad_out is None else grad_out
    grad_lse = torch.zeros_like(lse_a) if grad_lse is None else grad_lse.to(lse_a.dtype)
    return _merge_attention_states_backward(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)


_merge_attention_states.register_autograd(_backward, setup_context=_setup_context)

if TRITON is not None:
    from vidcore.kernels import merge_attention_states as _triton

    _merge_attention_states.register_kernel("cuda")(_triton.merge_attention_states_fwd)
    _merge_attention_states_backward.register_kernel("cuda")(_triton.merge_attention_states_bwd)
