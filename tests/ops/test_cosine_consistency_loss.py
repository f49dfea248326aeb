"""vidcore.ops.cosine_consistency_loss: ST-LLM's MVM loss, mean(2 - 2 cos) over paired rows."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from vidcore.kernels.cosine_consistency_loss import (
    cosine_consistency_loss_bwd,
    cosine_consistency_loss_fwd,
)

from vidcore import reference
from vidcore.ops import cosine_consistency_loss
from vidcore.testing import assert_close, opcheck

HALF = (torch.float16, torch.bfloat16)
CASES = [
    pytest.param((7, 33), 0, id="7x33"),
    pytest.param((1, 1), 0, id="1x1"),
    pytest.param((64, 512), 3, id="64x512-zero-rows"),
    pytest.param((2, 5, 40), 1, id="batched-2x5x40-zero-row"),
    pytest.param((0, 16), 0, id="no-rows"),
    pytest.param((3, 0), 0, id="no-columns"),
]


def loss_by_definition(a, b):
    """The loss written out in float64: rows one by one, norms clamped at 1e-12."""
    a, b = a.double().flatten(0, -2), b.double().flatten(0, -2)
    total = 0.0
    for row_a, row_b in zip(a, b, strict=True):
        norm_a = max(math.sqrt(float((row_a * row_a).sum())), 1e-12)
        norm_b = max(math.sqrt(float((row_b * row_b).sum())), 1e-12)
        total += 2 - 2 * float((row_a * row_b).sum()) / (norm_a * norm_b)
    return torch.tensor(total / max(a.shape[0], 1), dtype=torch.float64)


def pair(shape, zero_rows=0, dtype=torch.float32, device="cpu"):
    a, b = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    a.flatten(0, -2)[:zero_rows] = 0  # zero rows of a; b keeps its own
    b.flatten(0, -2)[1:1 + zero_rows // 2] = 0
    return a, b


def test_reference_semantics_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [5.0, 0.0], [-3.0, -4.0], [1.0, 1.0]])
    # per row: same direction 0, orthogonal 2, opposite 4, zero row 2 (cos 0, never NaN)
    for backend in ("auto", "torch"):
        assert cosine_consistency_loss(a, b, backend=backend).item() == pytest.approx(2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF], ids=str)
@pytest.mark.parametrize("shape, zero_rows", CASES)
def test_op_matches_definition(shape, zero_rows, dtype, device):
    a, b = pair(shape, zero_rows, dtype, device)
    loss = cosine_consistency_loss(a, b)
    assert loss.dtype == (torch.float32 if dtype in HALF else dtype) and loss.shape == ()
    assert_close(loss.cpu(), loss_by_definition(a.cpu(), b.cpu()).to(loss.dtype), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("shape, zero_rows", CASES)
def test_backward_matches_autograd_of_normalize(shape, zero_rows, dtype, device):
    a, b = pair(shape, zero_rows, dtype, device)
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    a_hat, b_hat = F.normalize(a64, dim=-1), F.normalize(b64, dim=-1)
    rows = max(math.prod(shape[:-1]), 1)
    ((2 - 2 * (a_hat * b_hat).sum(-1)).sum() / rows * 0.5).backward()
    a.requires_grad_(), b.requires_grad_()
    (cosine_consistency_loss(a, b) * 0.5).backward()
    # zero rows of a have gradient b_hat / eps (F.normalize's): compare relative to each row's
    # size; in float16 such rows overflow to inf, as torch's own float16 autograd does
    for grad, expected in ((a.grad, a64.grad), (b.grad, b64.grad)):
        if expected.numel() == 0:
            assert grad.shape == expected.shape
            continue
        scale = expected.abs().amax(-1, keepdim=True).clamp_min(1.0)
        finite = scale <= torch.finfo(dtype).max
        assert torch.equal(grad.isinf(), expected.to(dtype).isinf())
        assert_close(torch.where(finite, grad.double() / scale, 0).to(dtype),
                     torch.where(finite, expected / scale, 0).to(dtype), dtype=dtype)


@given(rows=st.integers(0, 20), dim=st.integers(0, 70), zero_rows=st.integers(0, 3),
       dtype=st.sampled_from([torch.float32, *HALF]), seed=st.integers(0, 2**31))
def test_property_matches_definition(rows, dim, zero_rows, dtype, seed):
    torch.manual_seed(seed)
    a, b = pair((rows, dim), zero_rows, dtype)
    loss = cosine_consistency_loss(a, b)
    assert_close(loss, loss_by_definition(a, b).to(loss.dtype), dtype=dtype)


KERNEL_CASES = [
    pytest.param((7, 33), 0, id="7x33"),
    pytest.param((1, 1), 0, id="1x1"),
    pytest.param((9, 40), 2, id="9x40-zero-rows"),
    pytest.param((3, 0), 0, id="no-columns"),
    pytest.param((0, 5), 0, id="no-rows"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # float16 zero rows: inf
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("shape, zero_rows", KERNEL_CASES)
def test_kernel_matches_reference(shape, zero_rows, dtype, triton_device):
    a, b = pair(shape, zero_rows, dtype, triton_device)
    loss = cosine_consistency_loss_fwd(a, b)
    assert_close(loss, reference.cosine_consistency_loss(a, b), dtype=dtype)
    grad = torch.tensor(1.7, device=triton_device, dtype=loss.dtype)
    assert_close(cosine_consistency_loss_bwd(grad, a, b),
                 reference.cosine_consistency_loss_backward(grad, a, b), dtype=dtype)


def test_kernel_reads_row_strided_inputs(triton_device):
    wide = torch.randn(6, 50, device=triton_device)
    a, b = wide[:, :37], wide[:, 10:47]  # rows 50 elements apart
    assert_close(cosine_consistency_loss_fwd(a, b), reference.cosine_consistency_loss(a, b))
    grad = torch.tensor(1.0, device=triton_device)
    assert_close(cosine_consistency_loss_bwd(grad, a, b),
                 reference.cosine_consistency_loss_backward(grad, a, b))


@settings(max_examples=15)  # each example runs two kernels in the interpreter on CPU
@given(rows=st.integers(0, 12), dim=st.integers(0, 40), zero_rows=st.integers(0, 2),
       seed=st.integers(0, 2**31))
def test_kernel_property(triton_device, rows, dim, zero_rows, seed):
    torch.manual_seed(seed)
    a, b = pair((rows, dim), zero_rows, device=triton_device)
    assert_close(cosine_consistency_loss_fwd(a, b), reference.cosine_consistency_loss(a, b))
    grad = torch.tensor(-0.3, device=triton_device)
    assert_close(cosine_consistency_loss_bwd(grad, a, b),
                 reference.cosine_consistency_loss_backward(grad, a, b))


def test_gradcheck():
    # (rows below eps are not differentiable at gradcheck's step; the backward test covers them)
    a, b = (t.requires_grad_() for t in pair((5, 7), 0, torch.float64))
    assert torch.autograd.gradcheck(cosine_consistency_loss, (a, b))


def test_no_rows_gives_zero_loss_and_no_nan():
    a, b = (torch.zeros(0, 8, requires_grad=True) for _ in range(2))
    loss = cosine_consistency_loss(a, b)
    loss.backward()
    assert loss.item() == 0.0 and a.grad.shape == (0, 8)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    a, b = (t.requires_grad_(requires_grad) for t in pair((6, 10), 1, device=device))
    opcheck(torch.ops.vidcore.cosine_consistency_loss.default, (a, b))
    grad = torch.tensor(1.5, device=device)
    opcheck(torch.ops.vidcore.cosine_consistency_loss_backward.default,
            (grad, a.detach(), b.detach()))


def test_compile_decoder_then_loss():
    a, b = pair((9, 16))
    weight = torch.randn(16, 16, requires_grad=True)

    def mvm_loss(a, b, weight):
        return cosine_consistency_loss(a @ weight, b) * 2

    compiled = torch.compile(mvm_loss, fullgraph=True)
    loss, expected = compiled(a, b, weight), mvm_loss(a, b, weight)
    assert_close(loss, expected)
    assert_close(torch.autograd.grad(loss, weight), torch.autograd.grad(expected, weight))


@pytest.mark.parametrize("index, value, error, message", [
    (0, torch.randn(8), ValueError, r"a must be \[N, D\] \(at least 2-D\)"),
    (1, torch.randn(4, 9), ValueError, r"b must have the shape of a \(4, 8\)"),
    (1, torch.randn(4, 8).double(), TypeError, r"b must have dtype in \(float32\)"),
    (0, torch.randn(4, 8).int(), TypeError, "a must have dtype in"),
    (1, torch.randn(4, 8, device="meta"), ValueError, "b must be on cpu like the other"),
    (0, [[1.0]], TypeError, "a must be a torch.Tensor"),
])
def test_bad_input(index, value, error, message):
    args = [torch.randn(4, 8), torch.randn(4, 8)]
    args[index] = value
    with pytest.raises(error, match="cosine_consistency_loss: " + message):
        cosine_consistency_loss(*args)


@pytest.mark.parametrize("args, message", [
    ((torch.randn(3, 4), torch.randn(1, 4)), r"b must have the shape of a \(3, 4\)"),
    ((torch.randn(3, 4), torch.randn(3, 4).half()), r"b must have dtype in \(float32\)"),
    ((torch.randn(2, 3, 4), torch.randn(2, 3, 4)), "a must be 2-D"),
    ((torch.randn(4), torch.randn(4)), r"a must be \[N, D\]"),
])
def test_direct_calls_with_hostile_arguments_raise(args, message):
    with pytest.raises((ValueError, TypeError), match="cosine_consistency_loss: " + message):
        torch.ops.vidcore.cosine_consistency_loss(*args)
    with pytest.raises((ValueError, TypeError), match="cosine_consistency_loss: " + message):
        torch.ops.vidcore.cosine_consistency_loss_backward(torch.tensor(1.0), *args)


@pytest.mark.parametrize("grad, message", [
    (torch.ones(3), "grad must be 0-d"),
    (torch.tensor(1.0, dtype=torch.float64), r"grad must have dtype in \(float32\)"),
])
def test_direct_backward_calls_with_a_hostile_grad_raise(grad, message):
    with pytest.raises((ValueError, TypeError), match="cosine_consistency_loss: " + message):
        torch.ops.vidcore.cosine_consistency_loss_backward(grad, torch.randn(3, 4),
                                                           torch.randn(3, 4))
