"""Exact merge of two partial attention results over disjoint key sets (split-KV, long videos)."""
from __future__ import annotations

import torch
from torch import Tensor

from vidcore import reference
from vidcore._backends import TRITON
from vidcore.kernels.merge_attention_states_cpu import (
    merge_attention_states_cpu_bwd,
    merge_attention_states_cpu_fwd,
)
from vidcore.ops._attention_args import (
    check_merge_args,
    check_merge_backward_args,
    check_merge_lse_values,
)
from vidcore.ops._validation import check_backend

__all__ = ["merge_attention_states"]

_OP = "merge_attention_states"


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
    Backends: CUDA -> kernels/merge_attention_states.py (Triton); CPU ->
    kernels/merge_attention_states_cpu.py (the same math in fewer passes); others -> reference.
    """
    check_merge_args(out_a, lse_a, out_b, lse_b)
    check_backend(_OP, backend)
    if backend == "torch":
        check_merge_lse_values(lse_a, lse_b)
        return reference.merge_attention_states(out_a, lse_a, out_b, lse_b)
    return _merge_attention_states(out_a, lse_a, out_b, lse_b)


@torch.library.custom_op("vidcore::merge_attention_states", mutates_args=())
def _merge_attention_states(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor]:
    # Devices without a kernel: checked here too, so that direct op calls and compiled graphs,
    # which skip the public function's checks, cannot misuse it.
    check_merge_args(out_a, lse_a, out_b, lse_b)
    check_merge_lse_values(lse_a, lse_b)
    return reference.merge_attention_states(out_a, lse_a, out_b, lse_b)


@_merge_attention_states.register_fake
def _(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    check_merge_args(out_a, lse_a, out_b, lse_b)
    lse_dtype = torch.promote_types(lse_a.dtype, torch.float32)
    return torch.empty_like(out_a), lse_a.new_empty(lse_a.shape, dtype=lse_dtype)


@torch.library.custom_op("vidcore::merge_attention_states_backward", mutates_args=())
def _merge_attention_states_backward(
    grad_out: Tensor, grad_lse: Tensor, out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_merge_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)
    return reference.merge_attention_states_backward(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)


@_merge_attention_states_backward.register_fake
def _(grad_out, grad_lse, out_a, lse_a, out_b, lse_b):
    check_merge_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b)
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
_merge_attention_states.register_kernel("cpu")(merge_attention_states_cpu_fwd)
_merge_attention_states_backward.register_kernel("cpu")(merge_attention_states_cpu_bwd)

if TRITON is not None:
    from vidcore.kernels import merge_attention_states as _triton

    _merge_attention_states.register_kernel("cuda")(_triton.merge_attention_states_fwd)
    _merge_attention_states_backward.register_kernel("cuda")(_triton.merge_attention_states_bwd)
