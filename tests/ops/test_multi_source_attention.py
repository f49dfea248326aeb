"""vidcore.ops.multi_source_attention: ActionLLM's interaction block, one softmax per (query
source, key source) pair, contexts averaged per query source."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vidcore.kernels.multi_source_attention import multi_source_attention_fwd
from vidcore.kernels.multi_source_attention_backward import multi_source_attention_bwd

from vidcore import reference
from vidcore.ops import multi_source_attention
from vidcore.testing import (
    assert_close,
    assert_no_worse_than_torch,
    assert_raises_cleanly,
    opcheck,
)

HALF = (torch.float16, torch.bfloat16)
# (B, H, d, query lengths, key lengths): ActionLLM's three modalities at head dim 4
CASES = [
    pytest.param((1, 4, 4, (6, 5, 3), (6, 5, 3)), id="actionllm-3x3-d4"),
    pytest.param((2, 3, 16, (7,), (9, 4)), id="1q-2k-d16"),
    pytest.param((1, 2, 40, (17, 1), (33,)), id="2q-1k-d40"),
    pytest.param((2, 1, 3, (5, 0), (4, 0, 2)), id="empty-query-and-key-sources"),
]


def seed_way(queries, keys, values, scale=None):
    """ActionLLM's Multi_Attention (actionllm/model.py): per pair softmax(q k^T * scale) v, then
    the mean over key sources."""
    scale = 1 / math.sqrt(queries[0].shape[-1]) if scale is None else scale
    outs = []
    for q in queries:
        contexts = [torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
                    for k, v in zip(keys, values, strict=True)]
        outs.append(sum(contexts) / len(contexts))
    return outs


def sources(case, dtype=torch.float32, device="cpu", requires_grad=False):
    batch, heads, dim, q_lens, k_lens = case

    def make(length):
        x = torch.randn(batch, heads, length, dim, device=device).to(dtype)
        return x.requires_grad_(requires_grad)

    return [make(n) for n in q_lens], [make(n) for n in k_lens], [make(n) for n in k_lens]


def assert_accurate(out, out_torch, ref):
    """The attention rule of vidcore.testing (error <= 2x torch's own in the same dtype)."""
    assert out.shape == ref.shape and out.dtype == out_torch.dtype
    if out.numel():
        assert_no_worse_than_torch(out, out_torch, ref)


def test_reference_semantics_by_hand():
    # one key per source: each softmax is 1, so out = mean of the values whatever the queries
    q = [torch.randn(1, 1, 3, 2)]
    keys = [torch.randn(1, 1, 1, 2), torch.randn(1, 1, 1, 2)]
    values = [torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), 4.0)]
    for backend in ("auto", "torch"):
        out, = multi_source_attention(q, keys, values, backend=backend)
        assert torch.allclose(out, torch.full((1, 1, 3, 2), 3.0))
    # an empty key source contributes zero context but still counts in the mean
    out, = multi_source_attention(q, [*keys[:1], keys[0][:, :, :0]], [*values[:1], values[0][:, :, :0]])
    assert torch.allclose(out, torch.full((1, 1, 3, 2), 1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_op_matches_seed_way(case, dtype, device):
    queries, keys, values = sources(case, dtype, device)
    outs = multi_source_attention(queries, keys, values)
    as64 = lambda ts: [t.double() for t in ts]  # noqa: E731
    expected = seed_way(as64(queries), as64(keys), as64(values))
    eager = seed_way(queries, keys, values)
    for out, ref, same_dtype in zip(outs, expected, eager, strict=True):
        assert out.is_contiguous()
        assert_accurate(out, same_dtype.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_autograd_of_seed_way(case, dtype, device):
    queries, keys, values = sources(case, dtype, device, requires_grad=True)
    inputs = [*queries, *keys, *values]
    outs = multi_source_attention(queries, keys, values)
    grads_out = [torch.randn_like(o) for o in outs]
    grads = torch.autograd.grad(outs, inputs, grads_out, allow_unused=True)
    as64 = [t.detach().double().requires_grad_() for t in inputs]
    a, m = len(queries), len(keys)
    expected = torch.autograd.grad(seed_way(as64[:a], as64[a:a + m], as64[a + m:]), as64,
                                   [g.double() for g in grads_out], allow_unused=True)
    eager = torch.autograd.grad(seed_way(queries, keys, values), inputs, grads_out,
                                allow_unused=True)
    for grad, ref, same_dtype, x in zip(grads, expected, eager, inputs, strict=True):
        ref = torch.zeros_like(x, dtype=torch.float64) if ref is None else ref
        same_dtype = torch.zeros_like(x) if same_dtype is None else same_dtype
        assert_accurate(grad, same_dtype, ref)


@settings(max_examples=60)  # each example runs up to 9 attention pairs
@given(batch=st.integers(1, 2), heads=st.integers(1, 2), dim=st.integers(1, 9),
       q_lens=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       k_lens=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       scale=st.sampled_from([None, 0.3, -1.0]), seed=st.integers(0, 2**31))
def test_property_matches_seed_way(batch, heads, dim, q_lens, k_lens, scale, seed):
    torch.manual_seed(seed)
    queries, keys, values = sources((batch, heads, dim, q_lens, k_lens), torch.float64)
    outs = multi_source_attention(queries, keys, values, scale=scale)
    assert_close(outs, [o.nan_to_num() for o in seed_way(queries, keys, values, scale)])


# Tiny on CPU: the interpreter runs every program in Python.
KERNEL_CASES = [
    pytest.param((1, 2, 4, (5, 3, 1), (6, 2, 3)), id="actionllm-3x3-d4"),
    pytest.param((2, 1, 20, (17,), (0, 9)), id="d20-empty-key-source-two-blocks"),
    pytest.param((1, 1, 1, (1, 0), (1,)), id="d1-ones-empty-query-source"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_kernel_matches_reference(case, dtype, triton_device):
    queries, keys, values = sources(case, dtype, triton_device)
    outs, lse, partials = multi_source_attention_fwd(queries, keys, values, 0.6)
    ref_outs, ref_lse, ref_partials = reference.multi_source_attention(queries, keys, values, 0.6)
    assert_close([*outs, *partials], [*ref_outs, *ref_partials], dtype=dtype)
    assert_close(lse, ref_lse, dtype=dtype)  # -inf rows (empty key sources) match exactly
    grads = [torch.randn_like(o) for o in outs]
    expected = reference.multi_source_attention_backward(grads, queries, keys, values, ref_lse,
                                                         ref_partials, 0.6)
    actual = multi_source_attention_bwd(grads, queries, keys, values, ref_lse, ref_partials, 0.6)
    for got, want in zip(actual, expected, strict=True):
        assert_close(got, want, dtype=dtype)


def test_kernel_reads_strided_sources(triton_device):
    x = [torch.randn(1, n, 2, 8, device=triton_device).transpose(1, 2) for n in (5, 3)]
    dense = [t.contiguous() for t in x]
    strided = multi_source_attention_fwd(x, x, x, 0.4)
    contiguous = multi_source_attention_fwd(dense, dense, dense, 0.4)
    for got, want in zip(strided, contiguous, strict=True):  # outs, lse, partials
        assert_close(got, want)


def test_gradcheck():
    queries, keys, values = sources((1, 2, 3, (4, 2), (3, 5)), torch.float64, requires_grad=True)
    a = len(queries)

    def fn(*tensors):
        return multi_source_attention(tensors[:a], tensors[a:a + 2], tensors[a + 2:], scale=0.7)

    assert torch.autograd.gradcheck(fn, (*queries, *keys, *values), fast_mode=True)


def test_strided_inputs_from_a_linear_layout():
    # ActionLLM's heads come from x.view(B, S, H, d).transpose(1, 2): not contiguous
    x = [torch.randn(2, n, 3, 4).transpose(1, 2) for n in (5, 7)]
    outs = multi_source_attention(x, x, x)
    assert_close(outs, multi_source_attention(*[[t.contiguous() for t in x]] * 3))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    queries, keys, values = sources((1, 2, 4, (3, 2), (4, 1, 2)), device=device,
                                    requires_grad=requires_grad)
    opcheck(torch.ops.vidcore.multi_source_attention.default, (queries, keys, values, 0.5))
    detach = lambda ts: [t.detach() for t in ts]  # noqa: E731
    outs, lse, partials = torch.ops.vidcore.multi_source_attention(
        detach(queries), detach(keys), detach(values), 0.5)
    grads = [torch.randn_like(o) for o in outs]
    opcheck(torch.ops.vidcore.multi_source_attention_backward.default,
            (grads, detach(queries), detach(keys), detach(values), lse, partials, 0.5))


def test_compile_interaction_block():
    queries, keys, values = sources((1, 2, 4, (3, 5), (3, 5)), requires_grad=True)
    weight = torch.randn(4, 4, requires_grad=True)

    def block(queries, keys, values, weight):
        outs = multi_source_attention([q @ weight for q in queries], keys, values)
        return sum(o.sum() for o in outs)

    compiled = torch.compile(block, fullgraph=True)
    loss, expected = compiled(queries, keys, values, weight), block(queries, keys, values, weight)
    assert_close(loss, expected)
    assert_close(torch.autograd.grad(loss, weight), torch.autograd.grad(expected, weight))


@pytest.mark.parametrize("fn, error, message", [
    (lambda q, k, v: multi_source_attention(q[0], k, v), TypeError,
     "queries must be a list of tensors, got Tensor"),
    (lambda q, k, v: multi_source_attention([], k, v), ValueError,
     "queries must hold at least one tensor"),
    (lambda q, k, v: multi_source_attention(q, k, v[:1]), ValueError,
     "keys and values must have the same number of sources, got 2 and 1"),
    (lambda q, k, v: multi_source_attention(q, [k[0], k[1][0]], v), ValueError,
     r"keys\[1\] must be 4-D"),
    (lambda q, k, v: multi_source_attention(q, k, [v[0], v[1].double()]), TypeError,
     r"values\[1\] must have dtype in \(float32\)"),
    (lambda q, k, v: multi_source_attention([q[0].int()], k, v), TypeError,
     r"queries\[0\] must have dtype in"),
    (lambda q, k, v: multi_source_attention(q, [k[0], k[1][:, :1]], v), ValueError,
     r"keys\[1\] must be \[B=2, H=3, S, d=4\] like queries\[0\], got \(2, 1, 5, 4\)"),
    (lambda q, k, v: multi_source_attention(q, k, [v[0], v[1][:, :, :2]]), ValueError,
     r"values\[1\] must have the shape of keys\[1\] \(2, 3, 5, 4\)"),
    (lambda q, k, v: multi_source_attention(q, k, [v[0], v[1].to("meta")]), ValueError,
     r"values\[1\] must be on cpu like the other inputs"),
    (lambda q, k, v: multi_source_attention([q[0][..., :0]], k, v), ValueError,
     r"head dim d must be in \[1, 256\]"),
    (lambda q, k, v: multi_source_attention(q, k, v, scale=float("nan")), ValueError,
     "scale must be a finite float or None"),
    (lambda q, k, v: multi_source_attention(q, k, v, backend="cuda"), ValueError,
     "backend must be one of"),
])
def test_bad_input(fn, error, message):
    queries, keys, values = sources((2, 3, 4, (6,), (3, 5)))
    with pytest.raises(error, match="multi_source_attention: " + message):
        fn(queries, keys, values)


def test_direct_call_with_mismatched_head_dims_raises_in_a_subprocess():
    # without the op's checks this reaches aten's CPU flash kernel with keys of another width
    assert_raises_cleanly(
        "torch.ops.vidcore.multi_source_attention([torch.randn(1, 2, 3, 4)], "
        "[torch.randn(1, 2, 5, 8)], [torch.randn(1, 2, 5, 8)], 0.5)",
        match=r"keys[0] must be [B=1, H=2, S, d=4]")


@pytest.mark.parametrize("index, value, message", [
    (0, [torch.randn(1, 2, 4, 4)], r"grad_outs\[0\] must be contiguous \(1, 2, 3, 4\)"),
    (0, [], "grad_outs must hold at least one tensor"),
    (4, [torch.randn(2, 1, 2, 4)], r"lse\[0\] must be contiguous \(2, 1, 2, 3\), got"),
    (4, [torch.randn(2, 1, 2, 3).double()], r"lse\[0\] must have dtype in \(float32\)"),
    (5, [torch.randn(2, 1, 2, 3, 4).transpose(0, 1)], r"partials\[0\] must be contiguous"),
    (5, [torch.randn(2, 1, 2, 3, 4), torch.randn(2, 1, 2, 3, 4)],
     "partials must have one tensor per query source"),
])
def test_direct_backward_calls_with_hostile_state_raise(index, value, message):
    queries, keys, values = sources((1, 2, 4, (3,), (5, 2)))
    outs, lse, partials = torch.ops.vidcore.multi_source_attention(queries, keys, values, 0.5)
    args = [[torch.ones_like(o) for o in outs], queries, keys, values, lse, partials, 0.5]
    args[index] = value
    with pytest.raises((ValueError, TypeError), match="multi_source_attention: " + message):
        torch.ops.vidcore.multi_source_attention_backward(*args)
