"""vidcore.ops.axis_attention: attention along one grid axis through strides; the CPU kernel
(aten flash), the Triton kernels (interpreter on CPU) and the reference against an einsum
oracle in float64; autograd, opcheck, compile, hypothesis, bad inputs. Direct calls of the
registered ops with hostile arguments are in tests/test_fuzz_ops.py."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vidcore.kernels.axis_attention import axis_attention_bwd, axis_attention_fwd

from vidcore import reference
from vidcore.ops import axis_attention
from vidcore.testing import (
    TOLERANCES,
    assert_close,
    opcheck,
)


def oracle(q, k, v, dim, scale=None):
    """Softmax attention along `dim`, written out in float64 on moved copies."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = (t.double().movedim(dim, -3) for t in (q, k, v))  # [..., S, H, d]
    scores = torch.einsum("...ihd,...jhd->...hij", q, k) * scale
    out = torch.einsum("...hij,...jhd->...ihd", scores.softmax(-1), v)
    return out.movedim(-3, dim)


def fused_qkv(*grid, heads=3, head_dim=20, dtype=torch.float32, device="cpu"):
    """q, k, v as strided slices of one [*grid, 3, H, d] projection (no copies)."""
    qkv = torch.randn(*grid, 3, heads, head_dim, device=device).to(dtype)
    return qkv.unbind(-3)


def canonical(t, dim):
    """[*grid, H, d] -> [P, S, R, H, d] view, as the op layer reads it."""
    return t.reshape(math.prod(t.shape[:dim]), t.shape[dim], -1, *t.shape[-2:])


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("dim", [0, 1, 2, -3])
def test_matches_oracle_along_each_axis(device, backend, dim):
    q, k, v = fused_qkv(2, 5, 7, device=device)  # videos, frames, tokens: Task-Adapter's grid
    out = axis_attention(q, k, v, dim=dim, backend=backend)
    assert out.shape == q.shape and out.is_contiguous()
    assert_close(out, oracle(q, k, v, dim).float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, dtype):
    q, k, v = fused_qkv(3, 4, 2, heads=2, head_dim=16, dtype=dtype, device=device)
    out = axis_attention(q, k, v, dim=1, scale=0.2)
    assert out.dtype == dtype
    expected = oracle(q, k, v, 1, 0.2)
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), expected, atol=4 * tol["atol"], rtol=4 * tol["rtol"])


def test_single_token_axis_is_identity_on_values():
    """A one-long axis attends to itself only: out = v exactly."""
    q, k, v = fused_qkv(4, 1, 3)
    assert torch.equal(axis_attention(q, k, v, dim=1), v.contiguous())


@pytest.mark.parametrize("shape", [(0, 3, 2), (2, 0, 3), (2, 3, 0)])
def test_empty_grids(device, shape):
    q, k, v = (t.requires_grad_() for t in fused_qkv(*shape, device=device))
    out = axis_attention(q, k, v, dim=1)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_gradients_match_oracle(device):
    q, k, v = (t.double().requires_grad_() for t in fused_qkv(2, 6, 3, device=device))
    out = axis_attention(q, k, v, dim=1, scale=0.3)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    expected = torch.autograd.grad(oracle(q, k, v, 1, 0.3), (q, k, v), grad)
    assert_close(got, expected)


def test_reference_backward_matches_autograd():
    q, k, v = (canonical(t.double(), 2).requires_grad_() for t in fused_qkv(2, 3, 5))
    out, lse = reference.axis_attention(q, k, v, 0.4)
    grad = torch.randn_like(out)
    expected = torch.autograd.grad(out, (q, k, v), grad)
    got = reference.axis_attention_backward(grad, q, k, v, out.detach(), lse.detach(), 0.4)
    assert_close(got, expected)


def test_gradcheck():
    q, k, v = (t.double().requires_grad_() for t in fused_qkv(2, 3, 2, heads=1, head_dim=3))
    assert torch.autograd.gradcheck(lambda *x: axis_attention(*x, dim=1), (q, k, v))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    q, k, v = (canonical(t, 1).requires_grad_(requires_grad)
               for t in fused_qkv(2, 3, 4, heads=2, head_dim=8, device=device))
    opcheck(torch.ops.vidcore.axis_attention.default, (q, k, v, 0.35))


def test_compile_three_axes_of_one_block():
    """Temporal, spatial and cross-video attention of one projection, as Task-Adapter++ runs
    them, under torch.compile(fullgraph=True)."""
    q, k, v = fused_qkv(2, 3, 5)

    def block(q, k, v):
        return sum(axis_attention(q, k, v, dim=d) for d in (1, 2, 0))

    compiled = torch.compile(block, fullgraph=True)
    assert_close(compiled(q, k, v), block(q, k, v))


# ---- Triton kernels (the GPU, or the interpreter on CPU) -------------------------------------
TRITON_CASES = [  # grids of few sequences: the interpreter's cost is per program
    pytest.param((1, 5, 2), 1, 20, id="temporal-d20"),
    pytest.param((2, 1, 7), 2, 64, id="spatial-d64"),
    pytest.param((5, 1, 2), 0, 32, id="across-videos"),
    pytest.param((1, 37, 1), 1, 16, id="three-blocks"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid, dim, head_dim", TRITON_CASES)
def test_triton_forward_and_backward(triton_device, grid, dim, head_dim, dtype):
    q, k, v = (canonical(t, dim) for t in fused_qkv(*grid, heads=1, head_dim=head_dim,
                                                    dtype=dtype, device=triton_device))
    out, lse = axis_attention_fwd(q, k, v, 0.25)
    ref_out, ref_lse = reference.axis_attention(q, k, v, 0.25)
    assert_close((out, lse), (ref_out, ref_lse), dtype=dtype)
    grad = torch.randn_like(out)
    grads = axis_attention_bwd(grad, q, k, v, out, lse, 0.25)
    expected = reference.axis_attention_backward(grad, q, k, v, ref_out, ref_lse, 0.25)
    for got, want in zip(grads, expected, strict=True):
        tol = TOLERANCES[dtype]  # a few softmax-weighted sums deep: twice the dtype's tolerance
        torch.testing.assert_close(got.float(), want.float(), atol=2 * tol["atol"],
                                   rtol=2 * tol["rtol"])


@settings(max_examples=30)  # the interpreter runs every program in Python: few, tiny grids
@given(grid=st.lists(st.integers(1, 4), min_size=1, max_size=3), heads=st.integers(1, 2),
       head_dim=st.integers(1, 40), data=st.data(), seed=st.integers(0, 2**31))
def test_triton_property(triton_device, grid, heads, head_dim, data, seed):
    torch.manual_seed(seed)
    dim = data.draw(st.integers(0, len(grid) - 1))
    q, k, v = (canonical(t, dim) for t in fused_qkv(*grid, heads=heads, head_dim=head_dim,
                                                    device=triton_device))
    assert_close(axis_attention_fwd(q, k, v, 0.5)[0], oracle(q, k, v, 1, 0.5).float())


@given(grid=st.lists(st.integers(1, 6), min_size=1, max_size=4), heads=st.integers(1, 3),
       head_dim=st.integers(1, 24), data=st.data(), transpose=st.booleans(),
       seed=st.integers(0, 2**31))
def test_op_property(grid, heads, head_dim, data, transpose, seed):
    """Any grid rank, any axis, fused or transposed (non-mergeable) layouts."""
    torch.manual_seed(seed)
    dim = data.draw(st.integers(-len(grid) - 2, len(grid) - 1).filter(lambda d: d < -2 or d >= 0))
    q, k, v = fused_qkv(*grid, heads=heads, head_dim=head_dim)
    if transpose and len(grid) > 1:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    assert_close(axis_attention(q, k, v, dim=dim), oracle(q, k, v, dim).float())


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("change, error, message", [
    (dict(q=torch.randn(4, 8)), ValueError, r"q must be \[\*grid, H, d\]"),
    (dict(k=torch.randn(2, 3, 2, 9)), ValueError, r"k must have the shape of q \(2, 3, 2, 8\)"),
    (dict(v=torch.randn(2, 3, 2, 8).half()), TypeError, r"v must have dtype in \(float32\)"),
    (dict(q=torch.randn(2, 3, 2, 8).int()), TypeError, "q must have dtype in"),
    (dict(v=torch.randn(2, 3, 2, 8, device="meta")), ValueError, "v must be on cpu"),
    (dict(dim=2), ValueError, "dim must name a grid axis"),
    (dict(dim=-2), ValueError, "dim must name a grid axis"),
    (dict(dim=-5), ValueError, "dim must name a grid axis"),
    (dict(dim=1.0), TypeError, "dim must be an int"),
    (dict(scale=float("nan")), ValueError, "scale must be a finite float"),
    (dict(backend="cuda"), ValueError, "backend must be one of"),
])
def test_bad_input(change, error, message):
    args = dict(q=torch.randn(2, 3, 2, 8), k=torch.randn(2, 3, 2, 8), v=torch.randn(2, 3, 2, 8),
                dim=1)
    args.update(change)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(error, match="axis_attention: " + message):
        axis_attention(q, k, v, **args)
