"""The Triton attention kernels against an independent float64 definition of CONTRACTS.md
section 1: window, softcap, GQA, varlen, frame ranges, split keys; forward and backward. Without
a GPU they run in the interpreter (TRITON_INTERPRET=1 on CPU), where 16-bit inputs are upcast to
float32 after loading: there these tests check the kernels' logic, not their 16-bit arithmetic."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vidcore.kernels.attention import attention_forward, attention_fwd, plan_key_splits
from vidcore.kernels.attention_backward import attention_bwd

from vidcore import reference
from vidcore.testing import assert_close, attention_op_args, random_attention_case


def oracle(q, k, v, cu_q, cu_k, causal, scale, tokens_per_frame, ranges, left, right, softcap):
    """out, lse in float64 written from the contract, sequence by sequence, dense."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full((q.shape[1], q.shape[0]), -math.inf, dtype=torch.float64)
    group = q.shape[1] // k.shape[1]
    cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        i = torch.arange(q1 - q0)[:, None] + (k1 - k0) - (q1 - q0)  # i'
        j = torch.arange(k1 - k0)[None, :]
        visible = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool)
        if causal:
            visible &= j <= i
        if left >= 0:
            visible &= j >= i - left
        if right >= 0:
            visible &= j <= i + right
        if ranges is not None:
            start, end = ranges[q0:q1, :1].long(), ranges[q0:q1, 1:].long()
            visible &= (start <= j // tokens_per_frame) & (j // tokens_per_frame < end)
        qs = q[q0:q1].double()
        ks, vs = (t[k0:k1].double().repeat_interleave(group, 1) for t in (k, v))
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        seen = visible.any(-1)
        # Rows that see no key: finite placeholder scores, zeroed after the softmax.
        scores = torch.where(visible, scores, -math.inf).where(seen[:, None], 0.0)
        probs = scores.softmax(-1) * seen[:, None]
        out[q0:q1] = torch.einsum("hqk,khd->qhd", probs, vs)
        lse[:, q0:q1] = scores.logsumexp(-1).where(seen, -math.inf)
    return out, lse


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the launchers can run


def make_inputs(lens_q, lens_k, heads_q, heads_kv, dim, dtype=torch.float32, seed=0,
                tokens_per_frame=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), heads_q, dim, generator=gen).to(dtype)
    k, v = (torch.randn(sum(lens_k), heads_kv, dim, generator=gen).to(dtype) for _ in range(2))
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    ranges = None
    if tokens_per_frame:
        start = torch.randint(0, 4, (sum(lens_q),), generator=gen)
        end = start + torch.randint(-1, 4, (sum(lens_q),), generator=gen)  # some empty
        ranges = torch.stack([start, end], 1).int().to(DEVICE)
    return *(t.to(DEVICE) for t in (q, k, v, cu_q, cu_k)), ranges


def check_forward_backward(lens_q, lens_k, heads_q, heads_kv, dim, causal, window, softcap,
                           tokens_per_frame=0, dtype=torch.float32, seed=0, num_splits=None,
                           backward=True):
    q, k, v, cu_q, cu_k, ranges = make_inputs(lens_q, lens_k, heads_q, heads_kv, dim, dtype,
                                              seed, tokens_per_frame)
    scale = 1 / math.sqrt(dim)
    mask = (causal, scale, tokens_per_frame, ranges, *window, softcap)
    launcher_args = (cu_q, cu_k, max(lens_q), max(lens_k), *mask)
    out, lse = attention_forward(q, k, v, *launcher_args, num_splits=num_splits)
    inputs = [t.cpu().double().requires_grad_() for t in (q, k, v)]
    cpu_mask = (causal, scale, tokens_per_frame, None if ranges is None else ranges.cpu(),
                *window, softcap)
    expected_out, expected_lse = oracle(*inputs, cu_q.cpu(), cu_k.cpu(), *cpu_mask)
    assert_close((out.cpu(), lse.cpu().nan_to_num(neginf=-1e30)),
                 (expected_out.to(dtype), expected_lse.float().nan_to_num(neginf=-1e30)),
                 dtype=dtype)
    if not backward:
        return
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    grad_lse = grad_lse.masked_fill(torch.isneginf(lse), 0)
    grads = attention_bwd(grad_out, q, k, v, out, lse, *launcher_args, grad_lse)
    loss = (expected_out * grad_out.cpu().double()).sum() + (
        expected_lse.nan_to_num(neginf=0) * grad_lse.cpu().double()).sum()
    expected = torch.autograd.grad(loss, inputs)
    assert_close([g.cpu() for g in grads], [g.to(dtype) for g in expected], dtype=dtype)


CASES = [  # lens_q, lens_k, Hq, Hk, d, causal, window, softcap, tokens_per_frame
    pytest.param(([17, 5], [33, 9], 4, 2, 32, False, (4, 3), 0.0, 0), id="window-gqa-varlen"),
    pytest.param(([20], [20], 2, 1, 40, True, (6, -1), 0.0, 0), id="causal-sliding-window-d40"),
    pytest.param(([9, 31], [40, 12], 2, 2, 24, True, (-1, -1), 5.0, 0), id="causal-softcap"),
    pytest.param(([12, 0, 7], [30, 4, 0], 3, 1, 16, False, (8, 8), 2.0, 3),
                 id="window-softcap-ranges-mqa-empty-seqs"),
    pytest.param(([40], [40], 2, 2, 16, False, (-1, 0), 0.0, 0), id="window-right0-as-causal"),
    pytest.param(([3], [50], 2, 1, 72, True, (17, 2), 1.0, 0), id="lq<lk-window-softcap-d72"),
    pytest.param(([50], [6], 2, 1, 16, True, (2, 40), 0.0, 0), id="lq>lk-window"),
]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_definition(case):
    check_forward_backward(*case)


def test_float16_inputs_upcast_in_interpreter():
    check_forward_backward([17, 5], [33, 9], 4, 2, 32, True, (7, 3), 3.0, 2, dtype=torch.float16)


def test_unmasked_middle_with_a_window():
    # Query blocks far from the sequence edges see whole key blocks inside a wide window: those
    # run unmasked, the window's edges masked; both must match.
    check_forward_backward([96], [160], 2, 1, 16, False, (70, 40), 0.0)


@settings(max_examples=30)
@given(lens=st.lists(st.tuples(st.integers(0, 24), st.integers(0, 24)), min_size=1, max_size=2),
       causal=st.booleans(), left=st.integers(-1, 20), right=st.integers(-1, 20),
       softcap=st.sampled_from([0.0, 0.5, 4.0]), tpf=st.sampled_from([0, 2]),
       seed=st.integers(0, 2**16))
def test_forward_property(lens, causal, left, right, softcap, tpf, seed):
    check_forward_backward([a for a, _ in lens], [b for _, b in lens], 2, 1, 16, causal,
                           (left, right), softcap, tpf, seed=seed, backward=False)


@pytest.mark.parametrize("num_splits", [2, 4])
@pytest.mark.parametrize("causal, window", [(False, (-1, -1)), (True, (200, -1))])
def test_split_keys_equal_one_pass(num_splits, causal, window):
    # Each query block's key span cut into equal whole key blocks (16 keys in the interpreter;
    # some splits empty), merged by the merge_attention_states kernel.
    check_forward_backward([1, 3], [300, 260], 4, 2, 16, causal, window, 0.0,
                           num_splits=num_splits, backward=False)


def test_key_splits_planned_only_for_short_queries_over_long_keys():
    cpu = torch.device("cpu")  # plans for an H100 (132 SMs) off the GPU
    assert plan_key_splits(1, 8, 1, 32768, cpu) == 32  # decoding: 8 programs -> 256
    assert plan_key_splits(2, 32, 16, 65536, cpu) == 4
    assert plan_key_splits(1, 8, 1, 1024, cpu) == 2  # at least 512 keys per split
    assert plan_key_splits(1, 8, 1, 600, cpu) == 1
    assert plan_key_splits(4, 32, 4096, 4096, cpu) == 1  # enough query blocks already
    assert plan_key_splits(1, 8, 1, 256 + 64, cpu) == 1  # a 256-key window: nothing to split


def test_launchers_with_planned_splits():
    assert plan_key_splits(2, 2, 2, 1100, torch.device("cpu")) == 2
    check_forward_backward([1, 2], [1100, 700], 2, 1, 16, False, (-1, -1), 0.0)


@pytest.mark.gpu
def test_backward_is_bit_identical_run_to_run():
    # dQ shares from different key blocks are added in a fixed order (one lock per query block
    # and head), so the float32 sums, and hence the gradients, repeat exactly.
    q, k, v, cu_q, cu_k, _ = make_inputs([3000, 1000], [3000, 5000], 8, 2, 128, torch.bfloat16)
    args = (cu_q, cu_k, 3000, 5000, True, 0.088, 0, None, 1024, -1, 0.0)
    out, lse = attention_forward(q, k, v, *args)
    grad = torch.randn_like(out)
    first = attention_bwd(grad, q, k, v, out, lse, *args, None)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in
                   zip(first, attention_bwd(grad, q, k, v, out, lse, *args, None), strict=True))


@pytest.mark.parametrize("window, softcap, tpf", [((5, 2), 3.0, None), ((-1, 7), 0.0, 2),
                                                  ((9, -1), 1.5, 3)])
def test_window_and_softcap_match_the_reference(window, softcap, tpf):
    # vidcore.reference (attn-cpu's spec) and the kernels, forward and backward with lse's
    # gradient: GQA, varlen with an empty sequence, causal, frame ranges.
    q, k, v, kw = random_attention_case([13, 0, 21], [17, 5, 30], heads_q=4, heads_kv=2, dim=24,
                                        device=DEVICE, causal=True, tokens_per_frame=tpf,
                                        window=window, softcap=softcap)
    args = attention_op_args(kw, 24)
    out, lse = attention_fwd(q, k, v, *args)
    expected = reference.attention(q, k, v, *args)
    assert_close((out, lse.nan_to_num(neginf=-1e30)),
                 (expected[0], expected[1].nan_to_num(neginf=-1e30)))
    grad_out = torch.randn_like(out)
    grad_lse = torch.randn_like(lse).masked_fill(torch.isneginf(lse), 0)
    assert_close(attention_bwd(grad_out, q, k, v, out, lse, *args, grad_lse),
                 reference.attention_backward(grad_out, q, k, v, out, lse, *args, grad_lse))
