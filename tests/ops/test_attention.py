"""vidcore.ops.attention: varlen + GQA + causal + frame ranges, forward and backward, against
SDPA with an explicit mask, the reference, and the Triton kernels (interpreter on CPU)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from vidcore.kernels.attention import attention_fwd
from vidcore.kernels.attention_backward import attention_bwd

from vidcore import reference
from vidcore.ops import attention, merge_attention_states
from vidcore.testing import assert_close, opcheck


def make_case(lens_q, lens_k, heads_q=2, heads_kv=1, dim=32, dtype=torch.float32,
              causal=False, tokens_per_frame=None, device="cpu", seed=0):
    """Packed q, k, v and the op's keyword arguments; ranges drawn to include empty ones."""
    gen = torch.Generator().manual_seed(seed)
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(sum(lens_q), heads_q, dim, generator=gen).to(dtype)
    k, v = (torch.randn(sum(lens_k), heads_kv, dim, generator=gen).to(dtype) for _ in range(2))
    kwargs = dict(cu_seqlens_q=cu_q.to(device), cu_seqlens_k=cu_k.to(device),
                  max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), causal=causal)
    if tokens_per_frame:
        start = torch.randint(0, 4, (sum(lens_q),), generator=gen)
        end = start + torch.randint(-1, 4, (sum(lens_q),), generator=gen)  # some empty
        kwargs |= dict(tokens_per_frame=tokens_per_frame,
                       q_frame_range=torch.stack([start, end], 1).int().to(device))
    return [t.to(device) for t in (q, k, v)], kwargs


def launcher_args(kwargs, dim):
    return (kwargs["cu_seqlens_q"], kwargs["cu_seqlens_k"], kwargs["max_seqlen_q"],
            kwargs["max_seqlen_k"], kwargs["causal"], 1 / math.sqrt(dim),
            kwargs.get("tokens_per_frame") or 0, kwargs.get("q_frame_range"))


def test_reference_semantics_against_sdpa_with_explicit_mask():
    (q, k, v), kw = make_case([6, 1, 9], [10, 4, 5], heads_q=4, heads_kv=2, causal=True,
                              tokens_per_frame=2, dtype=torch.float64)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    cu_q, cu_k = kw["cu_seqlens_q"].tolist(), kw["cu_seqlens_k"].tolist()
    for b in range(3):
        rows = torch.arange(cu_q[b + 1] - cu_q[b])
        visible = reference.visible_keys(len(rows), cu_k[b + 1] - cu_k[b], cu_q[b], rows, True,
                                         2, kw["q_frame_range"])
        qs = q[cu_q[b]:cu_q[b + 1]].transpose(0, 1)
        ks, vs = (t[cu_k[b]:cu_k[b + 1]].transpose(0, 1).repeat_interleave(2, 0) for t in (k, v))
        expected = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible).transpose(0, 1)
        seen = visible.any(-1)
        assert_close(out[cu_q[b]:cu_q[b + 1]][seen], expected[seen])
        assert (out[cu_q[b]:cu_q[b + 1]][~seen] == 0).all()
        assert torch.isneginf(lse[:, cu_q[b]:cu_q[b + 1]][:, ~seen]).all()


KERNEL_CASES = [
    pytest.param(([5, 17], [9, 33], 4, 2, 32, False, None), id="gqa2-ragged"),
    pytest.param(([5, 17], [9, 33], 2, 2, 64, True, None), id="causal-lq!=lk"),
    pytest.param(([0, 1, 12], [3, 0, 20], 3, 1, 96, True, 4), id="mqa-empty-seqs-ranges-d96"),
    pytest.param(([20], [16], 2, 1, 40, False, 1), id="ranges-per-token-d40"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_kernel_forward_and_backward_match_reference(case, dtype, triton_device):
    lens_q, lens_k, hq, hk, dim, causal, tpf = case
    (q, k, v), kw = make_case(lens_q, lens_k, hq, hk, dim, dtype, causal, tpf, triton_device)
    args = launcher_args(kw, dim)
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
    args = launcher_args(kw, 32)
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
    args = launcher_args(kw, dim)
    out, lse = attention_fwd(q, k, v, *args)
    ref_out, ref_lse = reference.attention(q, k, v, *args)
    assert_close((out, lse.nan_to_num(neginf=-1e30)), (ref_out, ref_lse.nan_to_num(neginf=-1e30)))


def test_batched_equals_packed():
    q, k, v = torch.randn(2, 7, 4, 32), torch.randn(2, 5, 2, 32), torch.randn(2, 5, 2, 32)
    out, lse = attention(q, k, v, causal=True, return_lse=True)
    cu_q, cu_k = torch.tensor([0, 7, 14], dtype=torch.int32), torch.tensor([0, 5, 10]).int()
    packed, packed_lse = attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                   cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True,
                                   return_lse=True)
    assert_close((out.flatten(0, 1), lse), (packed, packed_lse.unflatten(1, (2, 7)).transpose(0, 1)))


def test_split_keys_and_merge_equals_full_attention():
    (q, k, v), kw = make_case([6, 4], [10, 7], heads_q=2, heads_kv=2)
    full, full_lse = attention(q, k, v, return_lse=True, **kw)
    cu_k = kw["cu_seqlens_k"].tolist()
    halves = []
    for part in (0, 1):  # first 3 keys of each sequence, then the rest (one shard is empty-free)
        idx = torch.cat([torch.arange(a, a + 3) if part == 0 else torch.arange(a + 3, b)
                         for a, b in itertools.pairwise(cu_k)])
        lens = [3, 3] if part == 0 else [7, 4]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        halves.append(attention(q, k[idx], v[idx], cu_seqlens_q=kw["cu_seqlens_q"],
                                cu_seqlens_k=cu, return_lse=True))
    assert_close(merge_attention_states(*halves[0], *halves[1]), (full, full_lse))
    empty = attention(q, k[:0], v[:0], cu_seqlens_q=kw["cu_seqlens_q"],
                      cu_seqlens_k=torch.zeros(3, dtype=torch.int32), return_lse=True)
    assert_close(merge_attention_states(full, full_lse, *empty), (full, full_lse))


def test_gradcheck():
    (q, k, v), kw = make_case([3, 2], [4, 5], heads_q=2, heads_kv=1, dim=4, causal=True,
                              tokens_per_frame=2, dtype=torch.float64)
    kw["q_frame_range"][:, 0] = 0  # every query sees at least frame 0: finite differences
    kw["q_frame_range"][:, 1] = kw["q_frame_range"][:, 1].clamp(min=1)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, **kw), inputs)


def test_gradcheck_through_lse():
    # lse feeds merge_attention_states and losses: its gradient must reach q and k, also for
    # rows that see no key (lse = -inf there, no gradient) and when out is unused.
    (q, k, v), kw = make_case([3, 2], [4, 5], heads_q=2, heads_kv=1, dim=4, causal=True,
                              tokens_per_frame=2, dtype=torch.float64)
    kw["q_frame_range"][:] = torch.tensor([[1, 1], [0, 2], [1, 3], [0, 1], [0, 3]])  # 1 empty

    def finite_lse(q, k, v, with_out):
        out, lse = attention(q, k, v, return_lse=True, **kw)
        lse = lse.masked_fill(torch.isneginf(lse), 0)
        return (out, lse) if with_out else lse

    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert finite_lse(*inputs, False).count_nonzero() == 8  # all but the empty row's 2 heads
    for with_out in (True, False):
        assert torch.autograd.gradcheck(lambda *x, with_out=with_out: finite_lse(*x, with_out), inputs)


def test_split_keys_merge_gradients_equal_full_attention(device):
    # Gradients flow through both shards' lse into merge_attention_states: the merged result's
    # gradients equal those of unsplit attention (context parallelism relies on this).
    (q, k, v), kw = make_case([6, 4], [10, 7], heads_q=2, heads_kv=1, dim=16, device=device)
    cu_k = kw["cu_seqlens_k"].tolist()
    shards = [(torch.cat([torch.arange(a, a + 3) for a in cu_k[:-1]]), [0, 3, 6]),
              (torch.cat([torch.arange(a + 3, b) for a, b in itertools.pairwise(cu_k)]), [0, 7, 11])]
    grad = torch.randn(q.shape, device=device)
    grads = []
    for split in (False, True):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        if split:
            halves = [attention(inputs[0], inputs[1][idx.to(device)], inputs[2][idx.to(device)],
                                cu_seqlens_k=torch.tensor(cu, dtype=torch.int32, device=device),
                                return_lse=True, **{n: kw[n] for n in (
                                    "cu_seqlens_q", "max_seqlen_q", "max_seqlen_k")})
                      for idx, cu in shards]
            out, _ = merge_attention_states(*halves[0], *halves[1])
        else:
            out = attention(*inputs, **kw)
        out.backward(grad)
        grads.append([t.grad for t in inputs])
    assert_close(grads[1], grads[0])


def test_kernel_backward_with_lse_gradient(triton_device):
    (q, k, v), kw = make_case([5, 9], [7, 12], 2, 1, 32, causal=True, tokens_per_frame=3,
                              device=triton_device)
    args = launcher_args(kw, 32)
    out, lse = attention_fwd(q, k, v, *args)
    grad_out, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    grad_lse = grad_lse.masked_fill(torch.isneginf(lse), 0)
    assert_close(attention_bwd(grad_out, q, k, v, out, lse, *args, grad_lse),
                 reference.attention_backward(grad_out, q, k, v, out, lse, *args, grad_lse))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    (q, k, v), kw = make_case([3, 5], [4, 6], tokens_per_frame=2)
    args = (*(t.requires_grad_(requires_grad) for t in (q, k, v)), *launcher_args(kw, 32))
    opcheck(torch.ops.vidcore.attention.default, args)


def test_compile():
    (q, k, v), kw = make_case([3, 5], [4, 6], causal=True, tokens_per_frame=2)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, **kw) * 2, fullgraph=True)
    assert_close(compiled(q, k, v), attention(q, k, v, **kw) * 2)


def test_compile_backward_through_out_and_lse():
    (q, k, v), kw = make_case([3, 5], [4, 6], causal=True)

    def loss(q, k, v):
        out, lse = attention(q, k, v, return_lse=True, **kw)
        return out.square().sum() + lse.exp().sum()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        fn(*inputs).backward()
        grads.append([t.grad for t in inputs])
    assert_close(grads[1], grads[0])


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
    (dict(tokens_per_frame=2), ValueError, "tokens_per_frame and q_frame_range go together"),
    (dict(tokens_per_frame=0, q_frame_range=torch.zeros(4, 2, dtype=torch.int32)), ValueError,
     "tokens_per_frame must be >= 1"),
    (dict(tokens_per_frame=1, q_frame_range=torch.zeros(3, 2, dtype=torch.int32)), ValueError,
     r"q_frame_range must be contiguous \[total_q=4, 2\]"),
    (dict(q=torch.randn(4, 2, 64)[..., ::2]), ValueError, "q must have a contiguous last"),
])
def test_bad_input(change, error, message):
    args = dict(q=torch.randn(4, 2, 32), k=torch.randn(5, 1, 32), v=torch.randn(5, 1, 32),
                cu_seqlens_q=torch.tensor([0, 1, 4], dtype=torch.int32),
                cu_seqlens_k=torch.tensor([0, 3, 5], dtype=torch.int32)) | change
    with pytest.raises(error, match="attention: " + message):
        attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


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
    from vidcore.testing import assert_no_worse_than_torch
    assert_no_worse_than_torch(out, same_dtype, ref)
    for t, r in zip(inputs, ref_inputs, strict=False):
        assert (t.grad.float() - r.grad).abs().max() < 5e-2


def test_frame_range_builders():
    from vidcore.ops import interleave_ranges, stage_ranges, window_ranges

    assert stage_ranges([2, 1, 1], 7).tolist() == [[0, 2], [0, 2], [2, 4], [4, 7]]
    assert window_ranges([0, 3, 6], 1, 7).tolist() == [[0, 2], [2, 5], [5, 7]]
    assert interleave_ranges([2, 0, 1]).tolist() == [[0, 1], [0, 1], [2, 3]]
    assert stage_ranges([], 4).shape == (0, 2) and stage_ranges([1], 4).dtype == torch.int32
    with pytest.raises(ValueError, match="window_ranges: window must be >= 0, got -1"):
        window_ranges([0], -1, 3)


def test_stage_ranges_drive_attention():
    # Task-Adapter++: segment i of 2 text segments sees temporal stage i of 4 frames x 3 tokens.
    from vidcore.ops import stage_ranges

    q, k, v = torch.randn(5, 2, 16), torch.randn(12, 2, 16), torch.randn(12, 2, 16)
    ranges = stage_ranges([2, 3], 4)
    out = attention(q, k, v, cu_seqlens_q=torch.tensor([0, 5], dtype=torch.int32),
                    cu_seqlens_k=torch.tensor([0, 12], dtype=torch.int32), tokens_per_frame=3,
                    q_frame_range=ranges)
    first = attention(q[None, :2], k[None, :6], v[None, :6])[0]
    second = attention(q[None, 2:], k[None, 6:], v[None, 6:])[0]
    assert_close(out, torch.cat([first, second]))
