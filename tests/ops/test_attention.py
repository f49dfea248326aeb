"""vidcore.ops.attention semantics: every mask feature (varlen, GQA, bottom-right causal with
Lq != Lk, frame ranges, sliding windows, softcap, their combinations) against an independent
float64 oracle written from the definition (vidcore.testing.attention_oracle), forward and
backward, on the default CPU path and on the reference (backend="torch")."""
import itertools

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from vidcore.ops import attention, merge_attention_states
from vidcore.testing import assert_close, attention_oracle, random_attention_case

BACKENDS = ["auto", "torch"]

# (lens_q, lens_k, heads_q, heads_kv, causal, tokens_per_frame, window, softcap)
CASES = [
    pytest.param(([5, 1, 9], [9, 4, 5], 4, 2, True, None, None, None), id="causal-lq<lk-lq>lk"),
    pytest.param(([6, 1, 9], [10, 4, 5], 4, 2, True, 2, None, None), id="causal-ranges-gqa"),
    pytest.param(([7, 8], [7, 12], 2, 1, False, None, (2, 1), None), id="window-2-1"),
    pytest.param(([7, 8], [7, 12], 2, 1, True, None, (3, -1), None), id="causal-window-left-3"),
    pytest.param(([9, 4], [5, 12], 2, 2, False, None, (-1, 0), None), id="window-right-0"),
    pytest.param(([9, 4], [5, 12], 2, 2, True, None, (0, 0), None), id="window-0-0-diagonal"),
    pytest.param(([8, 3], [8, 10], 3, 1, False, None, None, 0.7), id="softcap-mqa"),
    pytest.param(([8, 3, 0], [8, 10, 4], 4, 2, True, 3, (4, 2), 1.5), id="everything"),
    pytest.param(([0, 3], [0, 0], 2, 1, True, 1, (1, 1), 2.0), id="no-keys-no-queries"),
]


def _case(case, dtype=torch.float64, seed=0):
    lens_q, lens_k, heads_q, heads_kv, causal, tpf, window, softcap = case
    return random_attention_case(lens_q, lens_k, heads_q=heads_q, heads_kv=heads_kv, dim=8,
                                 dtype=dtype, seed=seed, causal=causal, tokens_per_frame=tpf,
                                 window=window, softcap=softcap)


def _oracle(q, k, v, kw):
    return attention_oracle(q, k, v, kw["cu_seqlens_q"], kw["cu_seqlens_k"],
                            causal=kw["causal"], tokens_per_frame=kw.get("tokens_per_frame"),
                            q_frame_range=kw.get("q_frame_range"), window=kw["window"],
                            softcap=kw["softcap"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_definition(case, backend):
    q, k, v, kw = _case(case)
    assert_close(attention(q, k, v, return_lse=True, backend=backend, **kw), _oracle(q, k, v, kw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_gradients_match_definition(case, backend):
    # Gradients through out and lse (rows that see no key excluded from the lse loss: -inf).
    q, k, v, kw = _case(case)
    grads = []
    for fn in (lambda *x: attention(*x, return_lse=True, backend=backend, **kw),
               lambda *x: _oracle(*x, kw)):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out, lse = fn(*inputs)
        gen = torch.Generator().manual_seed(1)
        loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
        loss = loss + lse.masked_fill(lse.isinf(), 0).mul(torch.randn(lse.shape, generator=gen,
                                                                      dtype=lse.dtype)).sum()
        if not loss.requires_grad:  # the reference builds no graph when no query sees a key
            loss = loss + sum(t.sum() * 0 for t in inputs)
        grads.append(torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True))
    assert_close(grads[0], grads[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_within_tolerance_of_definition(dtype):
    q, k, v, kw = _case(CASES[7].values[0], dtype)
    out, lse = attention(q, k, v, return_lse=True, **kw)
    expected = _oracle(q, k, v, kw)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close((out.double(), lse.double()), expected, dtype=dtype)


@given(lens=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=3),
       group=st.sampled_from([1, 2]), causal=st.booleans(), tpf=st.sampled_from([None, 1, 3]),
       window=st.one_of(st.none(), st.tuples(st.integers(-1, 6), st.integers(-1, 6))),
       softcap=st.sampled_from([None, 0.5, 4.0]), seed=st.integers(0, 2**16))
def test_property_matches_definition(lens, group, causal, tpf, window, softcap, seed):
    q, k, v, kw = random_attention_case(
        [a for a, _ in lens], [b for _, b in lens], heads_q=2, heads_kv=2 // group, dim=4,
        dtype=torch.float64, seed=seed, causal=causal, tokens_per_frame=tpf, window=window,
        softcap=softcap)
    assert_close(attention(q, k, v, return_lse=True, **kw), _oracle(q, k, v, kw))


def test_bottom_right_causal_and_end_exclusive_ranges_by_hand():
    # Written out, so that a top-left causal mask or end-inclusive ranges cannot pass: 2 queries
    # over 4 keys (1 token per frame); query 0 sits at key position 2, query 1 at 3.
    q, k = torch.zeros(2, 1, 1, dtype=torch.float64), torch.zeros(4, 1, 1, dtype=torch.float64)
    v = torch.arange(4.0, dtype=torch.float64).view(4, 1, 1)
    offsets = dict(cu_seqlens_q=torch.tensor([0, 2], dtype=torch.int32),
                   cu_seqlens_k=torch.tensor([0, 4], dtype=torch.int32))
    assert attention(q, k, v, causal=True, **offsets).flatten().tolist() == [1.0, 1.5]
    ranges = torch.tensor([[1, 3], [0, 1]], dtype=torch.int32)
    out = attention(q, k, v, tokens_per_frame=1, q_frame_range=ranges, **offsets)
    assert out.flatten().tolist() == [1.5, 0.0]
    assert attention(q, k, v, window=(1, 0), **offsets).flatten().tolist() == [1.5, 2.5]
    assert attention(q, k, v, window=(0, 1), **offsets).flatten().tolist() == [2.5, 3.0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("features", [
    pytest.param(dict(causal=True, tokens_per_frame=2), id="causal-ranges"),
    pytest.param(dict(causal=True, window=(1, 0), softcap=0.9), id="causal-window-softcap"),
    pytest.param(dict(window=(0, 2), tokens_per_frame=1), id="window-ranges"),
])
def test_gradcheck(features, backend):
    q, k, v, kw = random_attention_case([3, 2], [4, 5], heads_q=2, heads_kv=1, dim=4,
                                        dtype=torch.float64, **features)
    inputs = [t.requires_grad_() for t in (q, k, v)]

    def fn(*x):
        out, lse = attention(*x, return_lse=True, backend=backend, **kw)
        return out, lse.masked_fill(lse.isinf(), 0)

    assert torch.autograd.gradcheck(fn, inputs)


def test_batched_equals_packed():
    q, k, v = torch.randn(2, 7, 4, 16), torch.randn(2, 5, 2, 16), torch.randn(2, 5, 2, 16)
    out, lse = attention(q, k, v, causal=True, window=(2, 0), return_lse=True)
    cu_q, cu_k = torch.tensor([0, 7, 14], dtype=torch.int32), torch.tensor([0, 5, 10]).int()
    packed, packed_lse = attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                   cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True,
                                   window=(2, 0), return_lse=True)
    assert_close((out.flatten(0, 1), lse), (packed, packed_lse.unflatten(1, (2, 7)).transpose(0, 1)))


@pytest.mark.parametrize("len_q, len_k", [(0, 5), (4, 0), (0, 0)])
def test_batched_empty_sequences(len_q, len_k):
    q = torch.randn(3, len_q, 2, 8, requires_grad=True)
    k, v = (torch.randn(3, len_k, 1, 8, requires_grad=True) for _ in "kv")
    out, lse = attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == q.shape and lse.shape == (3, 2, len_q)
    assert (out == 0).all() and lse.isneginf().all()
    out.sum().backward()
    assert all((t.grad == 0).all() for t in (q, k, v))


def test_unbindable_window_and_huge_frames_change_nothing():
    # A window longer than every sequence and frames longer than every key set are clamped by
    # the op layer (no int64 overflow in kernels); the result is the unbounded one.
    q, k, v, kw = random_attention_case([5, 3], [6, 4], causal=True, tokens_per_frame=2)
    expected = attention(q, k, v, **(kw | dict(q_frame_range=kw["q_frame_range"].clamp(0, 1),
                                               tokens_per_frame=10)))
    huge = kw | dict(q_frame_range=kw["q_frame_range"].clamp(0, 1), tokens_per_frame=2**62,
                     window=(2**62, 2**40))
    assert_close(attention(q, k, v, **huge), expected)


def test_split_keys_and_merge_equals_full_attention():
    q, k, v, kw = random_attention_case([6, 4], [10, 7], heads_q=2, heads_kv=2)
    full, full_lse = attention(q, k, v, return_lse=True, **kw)
    cu_k = kw["cu_seqlens_k"].tolist()
    halves = []
    for part in (0, 1):  # first 3 keys of each sequence, then the rest
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


def test_split_keys_merge_gradients_equal_full_attention():
    # Gradients flow through both shards' lse into merge_attention_states: the merged result's
    # gradients equal those of unsplit attention (context parallelism relies on this).
    q, k, v, kw = random_attention_case([6, 4], [10, 7], heads_q=2, heads_kv=1)
    cu_k = kw["cu_seqlens_k"].tolist()
    shards = [(torch.cat([torch.arange(a, a + 3) for a in cu_k[:-1]]), [0, 3, 6]),
              (torch.cat([torch.arange(a + 3, b) for a, b in itertools.pairwise(cu_k)]), [0, 7, 11])]
    grad = torch.randn(q.shape)
    grads = []
    for split in (False, True):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        if split:
            halves = [attention(inputs[0], inputs[1][idx], inputs[2][idx],
                                cu_seqlens_k=torch.tensor(cu, dtype=torch.int32),
                                cu_seqlens_q=kw["cu_seqlens_q"], return_lse=True)
                      for idx, cu in shards]
            out, _ = merge_attention_states(*halves[0], *halves[1])
        else:
            out = attention(*inputs, **kw)
        out.backward(grad)
        grads.append([t.grad for t in inputs])
    assert_close(grads[1], grads[0])


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


def test_batched_attention_makes_no_host_tensors():
    # A CUDA graph cannot capture a host-to-device copy: batched offsets are built on the
    # device. On the meta device every tensor the call makes shows where it was made.
    seen = []

    class HostTensors(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            leaves = pytree.tree_leaves((args, kwargs, out))
            seen.extend(func for t in leaves if torch.is_tensor(t) and t.device.type != "meta")
            return out

    q, k, v = (torch.randn(2, 7, 4, 16, device="meta") for _ in range(3))
    with HostTensors():
        out = attention(q, k, v, causal=True, window=(3, 0))
    assert out.shape == q.shape and not seen
