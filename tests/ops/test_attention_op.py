"""The attention custom ops as an op: opcheck, torch.compile(fullgraph=True), argument checks
with their messages, and direct `torch.ops.vidcore.attention*` calls with hostile arguments,
which must raise (in a subprocess, so that a crash fails the test instead of killing it)."""
import math
import re

import pytest
import torch

from vidcore.ops import attention
from vidcore.testing import (
    assert_close,
    assert_raises_cleanly,
    attention_op_args,
    opcheck,
    random_attention_case,
)

FEATURES = [
    pytest.param(dict(tokens_per_frame=2), id="ranges"),
    pytest.param(dict(causal=True, window=(2, 1)), id="causal-window"),
    pytest.param(dict(softcap=0.8, tokens_per_frame=1), id="softcap-ranges"),
]


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(features, requires_grad):
    q, k, v, kw = random_attention_case([3, 5], [4, 6], **features)
    args = (*(t.requires_grad_(requires_grad) for t in (q, k, v)), *attention_op_args(kw, 16))
    opcheck(torch.ops.vidcore.attention.default, args)


@pytest.mark.parametrize("with_grad_lse", [False, True])
def test_opcheck_backward(with_grad_lse):
    q, k, v, kw = random_attention_case([3, 5], [4, 6], causal=True, window=(1, 2))
    args = attention_op_args(kw, 16)
    out, lse = torch.ops.vidcore.attention(q, k, v, *args)
    grad_lse = torch.randn_like(lse) if with_grad_lse else None
    opcheck(torch.ops.vidcore.attention_backward.default,
            (torch.randn_like(out), q, k, v, out, lse, *args, grad_lse))


@pytest.mark.parametrize("features", FEATURES)
def test_compile(features):
    q, k, v, kw = random_attention_case([3, 5], [4, 6], **features)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, **kw) * 2, fullgraph=True)
    assert_close(compiled(q, k, v), attention(q, k, v, **kw) * 2)


def test_compile_backward_through_out_and_lse():
    q, k, v, kw = random_attention_case([3, 5], [4, 6], causal=True, window=(3, 0), softcap=2.0)

    def loss(q, k, v):
        out, lse = attention(q, k, v, return_lse=True, **kw)
        return out.square().sum() + lse.exp().sum()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        fn(*inputs).backward()
        grads.append([t.grad for t in inputs])
    assert_close(grads[1], grads[0])


@pytest.mark.parametrize("offsets, message", [
    ([0, 3, 2], "cu_seqlens_q must start at 0, be non-decreasing and end at 4"),
    ([0, 1, 5], "cu_seqlens_q must start at 0, be non-decreasing and end at 4"),
    ([1, 2, 4], "cu_seqlens_q must start at 0, be non-decreasing and end at 4"),
])
def test_compiled_graph_still_rejects_bad_offsets(offsets, message):
    # Under torch.compile the public function cannot read offsets; the CPU kernel does.
    q, k, v = torch.randn(4, 2, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8)
    cu_k = torch.tensor([0, 3, 5], dtype=torch.int32)
    compiled = torch.compile(lambda q, cu_q: attention(q, k, v, cu_seqlens_q=cu_q,
                                                       cu_seqlens_k=cu_k, max_seqlen_q=4,
                                                       max_seqlen_k=3), fullgraph=True)
    with pytest.raises(ValueError, match="attention: " + message):
        compiled(q, torch.tensor(offsets, dtype=torch.int32))


GOOD = dict(q=torch.randn(4, 2, 32), k=torch.randn(5, 1, 32), v=torch.randn(5, 1, 32),
            cu_seqlens_q=torch.tensor([0, 1, 4], dtype=torch.int32),
            cu_seqlens_k=torch.tensor([0, 3, 5], dtype=torch.int32))


@pytest.mark.parametrize("change, error, message", [
    (dict(k=torch.randn(5, 3, 32), v=torch.randn(5, 3, 32)), ValueError,
     r"the number of query heads \(2\) must be a multiple of"),
    (dict(v=torch.randn(5, 1, 16)), ValueError, r"v must have the shape of k \(5, 1, 32\)"),
    (dict(q=torch.randn(4, 2, 300), k=torch.randn(5, 1, 300), v=torch.randn(5, 1, 300)),
     ValueError, "head dim must be the same for q, k, v and at most 256"),
    (dict(k=torch.randn(5, 1, 32).half()), TypeError, r"k must have dtype in \(float32\)"),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 2], dtype=torch.int32)), ValueError,
     "cu_seqlens_q must start at 0, be non-decreasing and end at 4"),
    (dict(cu_seqlens_k=torch.tensor([0, 2, 4], dtype=torch.int32)), ValueError,
     "cu_seqlens_k must start at 0, be non-decreasing and end at 5"),
    (dict(cu_seqlens_q=torch.tensor([0, 1, 4])), TypeError, r"cu_seqlens_q must have dtype in"),
    (dict(max_seqlen_q=2), ValueError, "max_seqlen for cu_seqlens_q is 2 < 3"),
    (dict(tokens_per_frame=2), ValueError, "tokens_per_frame and q_frame_range go together"),
    (dict(tokens_per_frame=0, q_frame_range=torch.zeros(4, 2, dtype=torch.int32)), ValueError,
     "tokens_per_frame must be >= 1"),
    (dict(tokens_per_frame=1, q_frame_range=torch.zeros(3, 2, dtype=torch.int32)), ValueError,
     r"q_frame_range must be contiguous \[total_q=4, 2\]"),
    (dict(q=torch.randn(4, 2, 64)[..., ::2]), ValueError, "q must have a contiguous last"),
    (dict(scale=math.nan), ValueError, "scale must be finite, got nan"),
    (dict(scale=math.inf), ValueError, "scale must be finite, got inf"),
    (dict(scale="0.1"), TypeError, "scale must be a real number"),
    (dict(scale=torch.tensor(0.1)), TypeError, "scale must be a real number"),
    (dict(scale=True), TypeError, "scale must be a real number"),
    (dict(window=3), TypeError, r"window must be a \(left, right\) pair of ints, got 3"),
    (dict(window=(1, 2, 3)), TypeError, "window must be a"),
    (dict(window=(-2, 0)), ValueError, r"window\[0\] \(left\) must be >= -1, got -2"),
    (dict(window=(0, 1.5)), TypeError, r"window\[1\] \(right\) must be an int, got float"),
    (dict(softcap=0.0), ValueError, r"softcap must be finite and > 0 \(None = off\), got 0.0"),
    (dict(softcap=-1.0), ValueError, "softcap must be finite and > 0"),
    (dict(softcap=math.inf), ValueError, "softcap must be finite and > 0"),
    (dict(softcap="1"), TypeError, "softcap must be a real number or None, got str"),
])
def test_bad_input(change, error, message):
    args = GOOD | change
    with pytest.raises(error, match="attention: " + message):
        attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_understated_max_seqlen_on_offsets_not_read():
    # Offsets on the meta device are not read; what the sizes alone prove is still checked.
    meta = {name: t.to("meta") for name, t in GOOD.items()}
    with pytest.raises(ValueError, match="attention: max_seqlen for cu_seqlens_q is 1, but 2 "
                                         "sequences of at most that length cannot hold 4 rows"):
        attention(meta.pop("q"), meta.pop("k"), meta.pop("v"), max_seqlen_q=1, max_seqlen_k=3,
                  **meta)


Q, K, V = torch.randn(4, 2, 8), torch.randn(5, 1, 8), torch.randn(5, 1, 8)
CU_Q, CU_K = torch.tensor([0, 1, 4], dtype=torch.int32), torch.tensor([0, 3, 5], dtype=torch.int32)
RANGES = torch.zeros(4, 2, dtype=torch.int32)
HOSTILE = [  # arguments after q, k, v; the error's message
    ((CU_Q, CU_K, 2, 3, False, 0.3, 0, None, -1, -1, 0.0), "max_seqlen for cu_seqlens_q is 2"),
    ((CU_Q, torch.tensor([0, 3, 9], dtype=torch.int32), 3, 9, False, 0.3, 0, None, -1, -1, 0.0),
     "cu_seqlens_k must start at 0, be non-decreasing and end at 5"),
    ((CU_Q, torch.tensor([0, -3, 5], dtype=torch.int32), 3, 8, False, 0.3, 0, None, -1, -1, 0.0),
     "cu_seqlens_k must start at 0"),
    ((CU_Q, CU_K.long(), 3, 3, False, 0.3, 0, None, -1, -1, 0.0), "cu_seqlens_k must be a 1-D"),
    ((CU_Q, CU_K[:2], 3, 3, False, 0.3, 0, None, -1, -1, 0.0),
     "cu_seqlens_q and cu_seqlens_k must both have B + 1 entries"),
    ((CU_Q, CU_K, 3, 3, False, 0.3, 0, RANGES, -1, -1, 0.0), "tokens_per_frame must be >= 1"),
    ((CU_Q, CU_K, 3, 3, False, 0.3, 2, RANGES[:3], -1, -1, 0.0), "q_frame_range must be int32"),
    ((CU_Q, CU_K, 3, 3, False, 0.3, 0, None, -7, -1, 0.0), "window_left must be >= -1"),
    ((CU_Q, CU_K, 3, 3, False, 0.3, 0, None, -1, -1, -2.0), "softcap must be finite"),
    ((CU_Q, CU_K, 3, 3, False, math.nan, 0, None, -1, -1, 0.0), "scale must be finite"),
    ((CU_Q, CU_K, -1, 3, False, 0.3, 0, None, -1, -1, 0.0), "max_seqlen_q must be >= 0"),
]


@pytest.mark.parametrize("args, message", HOSTILE)
def test_direct_call_with_hostile_arguments_raises(args, message):
    with pytest.raises(ValueError, match="attention: " + re.escape(message)):
        torch.ops.vidcore.attention(Q, K, V, *args)


@pytest.mark.parametrize("grad_out, k, v, out, lse, grad_lse, message", [
    (Q, K, V, Q[..., :7], torch.zeros(2, 4), None, "out must be like q"),
    (Q[:3], K, V, Q, torch.zeros(2, 4), None, "grad_out must be like q"),
    (Q, K[..., :4], V[..., :4], Q, torch.zeros(2, 4), None, "head dim must be the same"),
    (Q, K, V, Q, torch.zeros(4, 2), None, "lse must be float32 [Hq, total_q]"),
    (Q, K, V, Q, torch.zeros(2, 4), torch.zeros(2, 4).double(), "grad_lse must be float32"),
])
def test_direct_backward_call_with_hostile_arguments_raises(grad_out, k, v, out, lse, grad_lse,
                                                            message):
    with pytest.raises(ValueError, match="attention: " + re.escape(message)):
        torch.ops.vidcore.attention_backward(grad_out, Q, k, v, out, lse, CU_Q, CU_K, 3, 3, True,
                                             0.3, 0, None, -1, -1, 0.0, grad_lse)


@pytest.mark.parametrize("cu_k, message", [
    ("[0, 3, 2**31 - 1]", "cu_seqlens_k must start at 0"),
    ("[0, 0, 0]", "cu_seqlens_k must start at 0"),  # aten would divide by zero on empty keys
])
def test_direct_calls_aten_would_not_survive_raise_in_a_subprocess(cu_k, message):
    call = ("torch.ops.vidcore.attention(torch.randn(4, 2, 8), torch.randn(5, 1, 8), "
            "torch.randn(5, 1, 8), torch.tensor([0, 1, 4], dtype=torch.int32), "
            f"torch.tensor({cu_k}, dtype=torch.int32), 3, 2**31, True, 0.3, 0, None, -1, -1, 0.0)")
    assert_raises_cleanly(call, match=message)
