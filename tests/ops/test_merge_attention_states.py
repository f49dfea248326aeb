"""vidcore.ops.merge_attention_states: the split-KV identity, -inf rows, Triton fwd/bwd."""
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from vidcore.kernels.merge_attention_states import (
    merge_attention_states_bwd,
    merge_attention_states_fwd,
)
from vidcore.kernels.merge_attention_states_cpu import (
    merge_attention_states_cpu_bwd,
    merge_attention_states_cpu_fwd,
)

from vidcore import reference
from vidcore.ops import merge_attention_states
from vidcore.testing import assert_close, assert_raises_cleanly, opcheck

NEG_INF = -math.inf


def attention_with_lse(q, k, v):
    """Softmax attention of q [N, H, d] over k, v [M, H, d]; lse [H, N], -inf when M = 0."""
    scores = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1) if k.shape[0] else scores.new_full(scores.shape[:2], NEG_INF)
    probs = torch.exp(scores - lse[..., None]).nan_to_num()
    return torch.einsum("hnm,mhd->nhd", probs, v), lse


def random_states(shape, dtype=torch.float32, device="cpu", empty_rows=0.0):
    """Two partial states for out `shape` ([.., N, H, d]); a share of lse entries is -inf."""
    *batch, n, h, _d = shape
    out_a, out_b = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    lse_a, lse_b = (3 * torch.randn(*batch, h, n, device=device) for _ in range(2))
    for lse in (lse_a, lse_b):
        lse[torch.rand(lse.shape, device=device) < empty_rows] = NEG_INF
    return out_a, lse_a, out_b, lse_b


def test_reference_semantics_split_keys_equals_union():
    q, k, v = (torch.randn(n, 3, 16, dtype=torch.float64) for n in (5, 11, 11))
    full_out, full_lse = attention_with_lse(q, k, v)
    part_a = attention_with_lse(q, k[:4], v[:4])
    part_b = attention_with_lse(q, k[4:], v[4:])
    out, lse = merge_attention_states(*part_a, *part_b)
    assert_close((out, lse), (full_out, full_lse))


def test_empty_side_and_both_empty_rows():
    q, k, v = (torch.randn(n, 2, 8, dtype=torch.float64) for n in (3, 6, 6))
    with_keys = attention_with_lse(q, k, v)
    without = attention_with_lse(q, k[:0], v[:0])
    assert_close(merge_attention_states(*without, *with_keys), with_keys)
    out, lse = merge_attention_states(*without, *without)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


CASES = [
    pytest.param((7, 2, 16), 0.0, id="packed-7x2x16"),
    pytest.param((2, 5, 3, 40), 0.3, id="batched-odd-d40-empty-rows"),
    pytest.param((1, 1, 8), 0.0, id="one-row"),
    pytest.param((0, 2, 32), 0.0, id="zero-rows"),
    pytest.param((33, 4, 64), 1.0, id="all-rows-empty"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape, empty_rows", CASES)
def test_kernel_matches_reference(shape, empty_rows, dtype, triton_device):
    states = random_states(shape, dtype, triton_device, empty_rows)
    out, lse = merge_attention_states_fwd(*states)
    assert not out.isnan().any() and not lse.isnan().any()
    assert_close((out, lse), reference.merge_attention_states(*states), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape, empty_rows", CASES)
def test_backward_kernel_matches_reference(shape, empty_rows, dtype, triton_device):
    states = random_states(shape, dtype, triton_device, empty_rows)
    grad_out = torch.randn(shape, device=triton_device).to(dtype)
    grad_lse = torch.randn(states[1].shape, device=triton_device)
    grads = merge_attention_states_bwd(grad_out, grad_lse, *states)
    expected = reference.merge_attention_states_backward(grad_out, grad_lse, *states)
    assert_close(grads, expected, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, empty_rows", CASES)
def test_cpu_kernel_matches_reference(shape, empty_rows, dtype):
    states = random_states(shape, dtype, "cpu", empty_rows)
    if dtype == torch.float64:
        states = tuple(t.double() for t in states)
    out, lse = merge_attention_states_cpu_fwd(*states)
    assert_close((out, lse), reference.merge_attention_states(*states), dtype=dtype)
    grad_out, grad_lse = torch.randn(shape).to(out.dtype), torch.randn(lse.shape).to(lse.dtype)
    assert_close(merge_attention_states_cpu_bwd(grad_out, grad_lse, *states),
                 reference.merge_attention_states_backward(grad_out, grad_lse, *states),
                 dtype=dtype)


def test_backward_reference_matches_autograd():
    states = [t.double().requires_grad_() for t in random_states((2, 4, 3, 8), empty_rows=0.2)]
    out, lse = reference.merge_attention_states(*states)
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    expected = torch.autograd.grad((out, lse), states, (grad_out, grad_lse))
    assert_close(reference.merge_attention_states_backward(grad_out, grad_lse, *states), expected)


@given(n=st.integers(0, 40), h=st.integers(1, 4), d=st.integers(1, 72),
       batched=st.booleans(), empty=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 2**31))
def test_kernel_property(triton_device, n, h, d, batched, empty, seed):
    torch.manual_seed(seed)
    shape = (2, n, h, d) if batched else (n, h, d)
    states = random_states(shape, device=triton_device, empty_rows=empty)
    assert_close(merge_attention_states_fwd(*states), reference.merge_attention_states(*states))


def test_op_on_device_matches_reference(device):
    states = random_states((9, 2, 32), device=device, empty_rows=0.2)
    assert_close(merge_attention_states(*states), merge_attention_states(*states, backend="torch"))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    states = [t.requires_grad_(requires_grad) for t in random_states((6, 2, 8), device=device)]
    opcheck(torch.ops.vidcore.merge_attention_states.default, tuple(states))


def test_gradcheck():
    out_a, lse_a, out_b, lse_b = (t.double() for t in random_states((4, 2, 5)))
    lse_a[0, :2] = NEG_INF  # rows with no keys in A; the merged lse stays finite, so finite
    states = [t.requires_grad_() for t in (out_a, lse_a, out_b, lse_b)]  # differences are defined
    assert torch.autograd.gradcheck(merge_attention_states, states)


def test_gradient_of_rows_without_keys_is_zero_not_nan():
    states = [t.requires_grad_() for t in random_states((3, 2, 4), empty_rows=1.0)]
    out, lse = merge_attention_states(*states)
    (out.sum() + lse.nan_to_num(neginf=0.0).sum()).backward()
    for t in states:
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_compile_merge_of_three_shards():
    a, b, c = (random_states((5, 2, 8))[:2] for _ in range(3))

    def merge3(a, b, c):
        return merge_attention_states(*merge_attention_states(*a, *b), *c)

    compiled = torch.compile(merge3, fullgraph=True)
    assert_close(compiled(a, b, c), merge3(a, b, c))


@pytest.mark.parametrize("index, value, error, message", [
    (0, torch.randn(2, 8), ValueError, r"out_a must be 3-D or 4-D, got shape \(2, 8\)"),
    (2, torch.randn(5, 2, 9), ValueError, r"out_b must have the shape of out_a \(5, 2, 8\)"),
    (2, torch.randn(5, 2, 8).half(), TypeError, r"out_b must have dtype in \(float32\)"),
    (1, torch.randn(5, 2), ValueError, r"lse_a must have shape \(2, 5\)"),
    (3, torch.randn(2, 5).half(), TypeError, r"lse_b must have dtype in \(float32, float64\)"),
    (0, torch.randn(5, 2, 8).int(), TypeError, "out_a must have dtype in"),
    (2, torch.randn(5, 2, 8, device="meta"), ValueError, "out_b must be on cpu like the other"),
    (3, torch.randn(2, 5, device="meta"), ValueError, "lse_b must be on cpu like the other"),
])
def test_bad_input(index, value, error, message):
    args = list(random_states((5, 2, 8)))
    args[index] = value
    with pytest.raises(error, match="merge_attention_states: " + message):
        merge_attention_states(*args)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_plus_inf_lse_is_rejected_on_cpu(backend):
    out_a, lse_a, out_b, lse_b = random_states((4, 2, 8))
    lse_b[1, 2] = math.inf
    with pytest.raises(ValueError, match=r"merge_attention_states: lse_b has \+inf entries"):
        merge_attention_states(out_a, lse_a, out_b, lse_b, backend=backend)
    compiled = torch.compile(merge_attention_states, fullgraph=True)
    with pytest.raises(ValueError, match=r"lse_b has \+inf entries"):
        compiled(out_a, lse_a, out_b, lse_b)


def test_direct_call_with_hostile_arguments_raises_in_a_subprocess():
    # lse [1, N] would broadcast silently in the reference: the op checks shapes itself
    assert_raises_cleanly("torch.ops.vidcore.merge_attention_states(torch.randn(4, 2, 8), "
                          "torch.randn(1, 4), torch.randn(4, 2, 8), torch.randn(2, 4))",
                          match="lse_a must have shape (2, 4)")


@pytest.mark.parametrize("args, message", [
    ((torch.randn(4, 2, 8), torch.randn(2, 4), torch.randn(3, 2, 8), torch.randn(2, 4)),
     "out_b must have the shape of out_a"),
    ((torch.randn(4, 2, 8), torch.full((2, 4), math.inf), torch.randn(4, 2, 8),
      torch.randn(2, 4)), "lse_a has +inf entries"),
])
def test_direct_call_with_hostile_arguments_raises(args, message):
    with pytest.raises(ValueError, match="merge_attention_states: " + re.escape(message)):
        torch.ops.vidcore.merge_attention_states(*args)


def test_direct_backward_call_with_hostile_arguments_raises():
    out, lse = torch.randn(4, 2, 8), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"merge_attention_states: grad_lse must have the shape"):
        torch.ops.vidcore.merge_attention_states_backward(out, lse[:1], out, lse, out, lse)
