"""The CPU attention kernel (kernels/attention_cpu.py on aten's flash attention, planned by
kernels/attention_cpu_plan.py): against the reference and the independent float64 oracle, at
shapes that exercise each kind of piece (same interval, diagonal, band and irregular blocks,
batched groups), forward and backward (through out and lse), low precision, any thread count,
and a plan whose cost follows the mask."""
import pytest
import torch
from vidcore.kernels.attention_cpu import attention_cpu_bwd, attention_cpu_fwd
from vidcore.kernels.attention_cpu_plan import plan

from vidcore import reference
from vidcore.ops import window_ranges
from vidcore.testing import (
    assert_close,
    attention_op_args,
    attention_oracle,
    random_attention_case,
)


def _intervals_case(lo, hi, heads_q=2, heads_kv=1, dim=8, dtype=torch.float64):
    """One sequence whose query i sees keys [lo[i], hi[i]) (one-token frames)."""
    q, k, v, kw = random_attention_case([len(lo)], [max(hi)], heads_q=heads_q, heads_kv=heads_kv,
                                        dim=dim, dtype=dtype, tokens_per_frame=1)
    kw["q_frame_range"] = torch.tensor([lo, hi], dtype=torch.int32).t().contiguous()
    return q, k, v, kw


def _sliding_frames(len_q=96, frames=12, window=2):
    query_frames = [i * frames // len_q for i in range(len_q)]
    return window_ranges(query_frames, window, frames)


CASES = {  # name: (q, k, v, kwargs)
    "equal-length-batch": random_attention_case([9, 9, 9], [9, 9, 9], heads_q=4, heads_kv=2),
    "causal-lq<lk-and-lq>lk": random_attention_case([5, 12, 7], [9, 4, 7], causal=True),
    "band-blocks": random_attention_case([101], [105], causal=True, window=(20, -1)),
    "two-sided-window": random_attention_case([150], [140], window=(9, 4)),
    "sliding-frames": (*random_attention_case([96], [96], dim=8)[:3], dict(
        cu_seqlens_q=torch.tensor([0, 96], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 96], dtype=torch.int32), max_seqlen_q=96, max_seqlen_k=96,
        tokens_per_frame=8, q_frame_range=_sliding_frames())),
    "sliding-frames-causal": (*random_attention_case([96], [96], dim=8)[:3], dict(
        cu_seqlens_q=torch.tensor([0, 96], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 96], dtype=torch.int32), max_seqlen_q=96, max_seqlen_k=96,
        causal=True, tokens_per_frame=8, q_frame_range=_sliding_frames())),
    "prefix-lm": _intervals_case([0] * 6 + [0] * 10, [6] * 6 + list(range(7, 17))),
    "irregular-with-empty-rows": _intervals_case([0, 3, 3, 1, 5, 0, 9, 2, 2, 8],
                                                 [4, 3, 7, 9, 6, 1, 12, 12, 3, 8]),
    "random-ranges-gqa": random_attention_case([20, 0, 33], [17, 5, 40], heads_q=4, heads_kv=2,
                                               causal=True, tokens_per_frame=3),
}


def _oracle(q, k, v, kw):
    return attention_oracle(q, k, v, kw["cu_seqlens_q"], kw["cu_seqlens_k"],
                            causal=kw.get("causal", False),
                            tokens_per_frame=kw.get("tokens_per_frame"),
                            q_frame_range=kw.get("q_frame_range"), window=kw.get("window"),
                            softcap=kw.get("softcap"))


@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_definition_in_float64(name):
    q, k, v, kw = (t.double() if torch.is_tensor(t) and t.is_floating_point() else t
                   for t in CASES[name])
    args = attention_op_args(kw, q.shape[-1])
    out, lse = attention_cpu_fwd(q, k, v, *args)
    expected = _oracle(q, k, v, kw)
    assert_close((out, lse), expected)
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    expected_out, expected_lse = _oracle(*inputs, kw)
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    grad_lse = grad_lse.masked_fill(lse.isinf(), 0)
    loss = (expected_out * grad_out).sum() + expected_lse.masked_fill(lse.isinf(), 0).mul(
        grad_lse).sum()
    expected_grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    assert_close(attention_cpu_bwd(grad_out, q, k, v, out, lse, *args, grad_lse), expected_grads)


@pytest.mark.parametrize("name", CASES)
def test_kernel_matches_reference_in_float32(name):
    q, k, v, kw = CASES[name]
    args = attention_op_args(kw, q.shape[-1])
    out, lse = attention_cpu_fwd(q, k, v, *args)
    assert_close((out, lse), reference.attention(q, k, v, *args))
    grad_out = torch.randn_like(out)
    assert_close(attention_cpu_bwd(grad_out, q, k, v, out, lse, *args, None),
                 reference.attention_backward(grad_out, q, k, v, out, lse, *args))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_tolerance_of_definition(dtype):
    q, k, v, kw = (t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t
                   for t in CASES["random-ranges-gqa"])
    out, lse = attention_cpu_fwd(q, k, v, *attention_op_args(kw, q.shape[-1]))
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close((out.double(), lse.double()), _oracle(q, k, v, kw), dtype=dtype)


@pytest.mark.parametrize("heads_q, heads_kv", [(1, 1), (2, 1), (4, 2)])
def test_same_result_run_to_run(heads_q, heads_kv):
    # (Not across thread counts: aten's CPU flash attention itself differs in the last bits.)
    q, k, v, kw = random_attention_case([40, 7], [45, 7], heads_q=heads_q, heads_kv=heads_kv,
                                        causal=True, tokens_per_frame=4)
    args = attention_op_args(kw, q.shape[-1])
    grad_out = torch.randn(q.shape)
    results = []
    for _ in range(3):
        out, lse = attention_cpu_fwd(q, k, v, *args)
        results.append((out, lse, *attention_cpu_bwd(grad_out, q, k, v, out, lse, *args,
                                                     torch.ones_like(lse))))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_strided_inputs():
    q, k, v, kw = CASES["causal-lq<lk-and-lq>lk"]
    args = attention_op_args(kw, q.shape[-1])
    permuted = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in (q, k, v)]
    assert_close(attention_cpu_fwd(*permuted, *args), attention_cpu_fwd(q, k, v, *args))


def _computed_pairs(groups):
    """Query-key pairs the plan's calls compute (per head)."""
    return sum(g.members * g.rows * p.n // (2 if p.causal else 1) for g in groups for p in g.parts)


def test_plan_cost_follows_the_mask():
    # Frame ranges at 1/4 density compute about a quarter of the pairs, in few calls; a causal
    # batch of equal sequences is one batched call; a band costs about its width.
    length, frames = 1024, 64
    ranges = window_ranges([i * frames // length for i in range(length)], 7, frames)
    groups = plan([0, length], [0, length], False, length // frames, ranges, -1, -1)
    visible = int((ranges[:, 1] - ranges[:, 0]).sum()) * (length // frames)
    assert visible <= _computed_pairs(groups) <= 1.25 * visible and len(groups) <= 10
    ranges = window_ranges([i * 16 // length for i in range(length)], 2, 16)  # 64-token frames
    groups = plan([0, length], [0, length], False, 64, ranges, -1, -1)
    visible = int((ranges[:, 1] - ranges[:, 0]).sum()) * 64
    assert _computed_pairs(groups) == visible and len(groups) <= 5
    groups = plan([0, 256, 512, 768], [0, 256, 512, 768], True, 0, None, -1, -1)
    assert [(g.members, g.rows) for g in groups] == [(3, 256)]
    groups = plan([0, 4096], [0, 4096], True, 0, None, 1023, -1)
    assert len(groups) <= 3 and _computed_pairs(groups) < 4096 * (1024 + 128)
