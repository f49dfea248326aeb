"""Triton attention launchers (kernels/attention.py, kernels/attention_backward.py) against the
reference: in the Triton interpreter on CPU (tiny shapes; the interpreter upcasts 16-bit inputs
to float32 at load, so CPU runs never exercise fp16 arithmetic: those cases say
`upcast-in-interpreter`), natively on a GPU (`gpu` marker)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vidcore.kernels.attention import INTERPRET, attention_fwd
from vidcore.kernels.attention_backward import attention_bwd

from vidcore import reference
from vidcore.ops import attention
from vidcore.testing import (
    assert_close,
    assert_no_worse_than_torch,
    attention_op_args,
    random_attention_case,
)


def make_case(lens_q, lens_k, heads_q=2, heads_kv=1, dim=32, dtype=torch.float32, causal=False,
              tokens_per_frame=None, device="cpu", seed=0):
    q, k, v, kw = random_attention_case(lens_q, lens_k, heads_q=heads_q, heads_kv=heads_kv,
                                        dim=dim, dtype=dtype, device=device, seed=seed,
                                        causal=causal, tokens_per_frame=tokens_per_frame)
    return [q, k, v], kw


KERNEL_CASES = [
    pytest.param(([5, 17], [9, 33], 4, 2, 32, False, None), id="gqa2-ragged"),
    pytest.param(([5, 17], [9, 33], 2, 2, 64, True, None), id="causal-lq!=lk"),
    pytest.param(([0, 1, 12], [3, 0, 20], 3, 1, 96, True, 4), id="mqa-empty-seqs-ranges-d96"),
    pytest.param(([20], [16], 2, 1, 40, False, 1), id="ranges-per-token-d40"),
]


@pytest.mark.parametrize("dtype", [
    torch.float32,
    pytest.param(torch.float16, id="float16-upcast-in-interpreter" if INTERPRET else "float16")])
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_kernel_forward_and_backward_match_reference(case, dtype, triton_device):
    lens_q, lens_k, hq, hk, dim, causal, tpf = case
    (q, k, v), kw = make_case(lens_q, lens_k, hq, hk, dim, dtype, causal, tpf, triton_device)
    args = attention_op_args(kw, dim)
    out, lse = attention_fwd(q, k, v, *args)
    ref_out, ref_lse = reference.attention(q, k, v, *args)
    assert_close((out, lse.nan_to_num(neginf=-1e30)), (ref_out, ref_lse.nan_to_num(neginf=-1e30)),
                 dtype=dtype)
    grad = torch.randn_like(out)
    grads = attention_bwd(grad, q, k, v, out, lse, *args)
    assert_close(grads, reference.attention_backward(grad, q, k, v, out, lse, *args), dtype=dtype)


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_unmasked_middle_blocks(causal, triton_device):
    # Query blocks whose rows share wide frame ranges: key blocks inside every row's range (and
    # below the causal diagonal) run without a mask, the edges with one; both must agree with
    # the reference, forward and backward.
    (q, k, v), kw = make_case([48], [160], 2, 1, 32, causal=causal, device=triton_device)
    ranges = torch.tensor([[1, 7]] * 16 + [[3, 12]] * 15 + [[4, 4]] + [[0, 20]] * 16)
    kw |= dict(tokens_per_frame=8, q_frame_range=ranges.int().to(triton_device))
    args = attention_op_args(kw, 32)
    out, lse = attention_fwd(q, k, v, *args)
    ref_out, ref_lse = reference.attention(q, k, v, *args)
    assert_close((out, lse.nan_to_num(neginf=-1e30)), (ref_out, ref_lse.nan_to_num(neginf=-1e30)))
    grad = torch.randn_like(out)
    assert_close(attention_bwd(grad, q, k, v, out, lse, *args),
                 reference.attention_backward(grad, q, k, v, out, lse, *args))


@settings(max_examples=200)
@given(lens=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=3),
       group=st.sampled_from([1, 2]), dim=st.sampled_from([16, 24]), causal=st.booleans(),
       tpf=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**16))
def test_kernel_forward_property(triton_device, lens, group, dim, causal, tpf, seed):
    (q, k, v), kw = make_case([a for a, _ in lens], [b for _, b in lens], 2, 2 // group, dim,
                              causal=causal, tokens_per_frame=tpf, device=triton_device,
                              seed=seed)
    args = attention_op_args(kw, dim)
    out, lse = attention_fwd(q, k, v, *args)
    ref_out, ref_lse = reference.attention(q, k, v, *args)
    assert_close((out, lse.nan_to_num(neginf=-1e30)), (ref_out, ref_lse.nan_to_num(neginf=-1e30)))


def test_kernel_backward_with_lse_gradient(triton_device):
    (q, k, v), kw = make_case([5, 9], [7, 12], 2, 1, 32, causal=True, tokens_per_frame=3,
                              device=triton_device)
    args = attention_op_args(kw, 32)
    out, lse = attention_fwd(q, k, v, *args)
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    grad_lse = grad_lse.masked_fill(torch.isneginf(lse), 0)
    assert_close(attention_bwd(grad_out, q, k, v, out, lse, *args, grad_lse),
                 reference.attention_backward(grad_out, q, k, v, out, lse, *args, grad_lse))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [32, 64, 96, 128, 256])
def test_cuda_forward_backward_match_reference(dtype, dim):
    (q, k, v), kw = make_case([0, 1, 300, 1000], [5, 0, 700, 1000], 8, 2, dim, dtype, True, 16,
                              "cuda")
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = attention(*inputs, **kw)
    out.backward(grad := torch.randn_like(out))
    ref_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = attention(*ref_inputs, backend="torch", **kw)
    ref.backward(grad.float())
    same_dtype = attention(*(t.detach() for t in inputs), backend="torch", **kw)
    assert_no_worse_than_torch(out, same_dtype, ref)
    for t, r in zip(inputs, ref_inputs, strict=False):
        assert (t.grad.float() - r.grad).abs().max() < 5e-2




@pytest.mark.gpu
def test_batched_attention_replays_from_a_cuda_graph():
    q, k, v = (torch.randn(2, 64, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (autotuning) outside the capture
        attention(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention(q, k, v, causal=True)
    for t in (q, k, v):
        t.copy_(torch.randn_like(t))
    graph.replay()
    assert_close(out, attention(q, k, v, causal=True))
