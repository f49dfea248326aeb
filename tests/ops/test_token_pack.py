"""vidcore.ops.pack / unpack / mask_and_pack: exact gathers and scatters with autograd."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import make_mask, mask_and_pack, pack, unpack
from vidcore.testing import assert_exact, opcheck

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.uint8]


def payload(shape, dtype, device="cpu"):
    if dtype == torch.uint8:
        return torch.randint(0, 255, shape, dtype=dtype, device=device)
    return torch.randn(shape, device=device).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [1, 3, 64, 1024])
def test_pack_unpack_match_reference(dtype, dim, device):
    mask = make_mask([3, 0, 5], (4, 3), 0.5, seed=2, device=device)
    x = payload((8, 4, 3, dim), dtype, device)
    packed = pack(x, mask)
    assert_exact(packed, pack(x, mask, backend="torch"))
    fill = payload((dim,), dtype, device)
    assert_exact(unpack(packed, mask, fill), unpack(packed, mask, fill, backend="torch"))


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("pattern", ["random", "tube", "frame"])
def test_round_trip(pattern, ratio, device):
    x = payload((2, 4, 3, 5, 16), torch.bfloat16, device)
    packed, mask = mask_and_pack(x, ratio, pattern=pattern, seed=9)
    fill = torch.full((16,), -7.0, dtype=torch.bfloat16, device=device)
    restored = unpack(packed, mask, fill).view_as(x).reshape(-1, 16)
    kept = torch.zeros(restored.shape[0], dtype=torch.bool, device=device)
    kept[mask.keep_idx] = True
    assert_exact(restored[kept], x.reshape(-1, 16)[kept])
    assert (restored[~kept] == -7.0).all()
    assert packed.shape == (mask.total_kept, 16)


@given(frames=st.lists(st.integers(0, 4), min_size=1, max_size=3), h=st.integers(1, 4),
       w=st.integers(1, 4), dim=st.integers(1, 40), ratio=st.floats(0, 1),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32))
def test_property_pack_unpack(frames, h, w, dim, ratio, dtype, seed):
    mask = make_mask(frames, (h, w), ratio, seed=seed)
    x = payload((sum(frames), h, w, dim), dtype)
    packed = pack(x, mask)
    assert_exact(packed, reference.pack(x.view(-1, dim), mask.keep_idx))
    fill = payload((dim,), dtype)
    assert_exact(unpack(packed, mask, fill).view(-1, dim),
                 reference.unpack(packed, mask.keep_idx, fill, mask.num_tokens))


def test_gradcheck_pack_and_unpack_with_fill():
    mask = make_mask([2, 3], (2, 2), 0.5, seed=3)
    x = torch.randn(5, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pack(x, mask), (x,))
    packed = torch.randn(mask.total_kept, 3, dtype=torch.float64, requires_grad=True)
    fill = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, f: unpack(p, mask, f), (packed, fill))


def test_fill_gradient_is_sum_over_masked_positions():
    mask = make_mask([4], (2, 2), 0.5, seed=5)
    packed = torch.randn(mask.total_kept, 3, requires_grad=True)
    fill = torch.zeros(3, requires_grad=True)
    unpack(packed, mask, fill).sum().backward()
    assert torch.equal(fill.grad, torch.full((3,), float(mask.num_tokens - mask.total_kept)))
    assert torch.equal(packed.grad, torch.ones_like(packed))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    keep_idx = torch.tensor([0, 2, 3, 7], device=device)
    x = torch.randn(9, 5, device=device, requires_grad=requires_grad)
    opcheck(torch.ops.vidcore.pack.default, (x, keep_idx))
    packed = torch.randn(4, 5, device=device, requires_grad=requires_grad)
    fill = torch.randn(5, device=device, requires_grad=requires_grad)
    opcheck(torch.ops.vidcore.unpack.default, (packed, keep_idx, fill, 9))
    opcheck(torch.ops.vidcore.unpack_fill_grad.default, (torch.randn(9, 5, device=device),
                                                         keep_idx))


def test_compile_make_mask_pack_unpack():
    x = torch.randn(2, 3, 2, 2, 8)
    fill = torch.randn(8)

    def masked_round_trip(x, fill):
        mask = make_mask(3, (2, 2), 0.5, batch_size=2, seed=4)
        return unpack(pack(x, mask) * 2, mask, fill)

    compiled = torch.compile(masked_round_trip, fullgraph=True)
    assert_exact(compiled(x, fill), masked_round_trip(x, fill))


@pytest.mark.parametrize("fn, message", [
    (lambda x, m, f, p: pack(x[:, :2], m), r"pack: x of shape \(2, 2, 4, 4, 8\) does not match"),
    (lambda x, m, f, p: pack(x.transpose(2, 3), m), "pack: x must be contiguous"),
    (lambda x, m, f, p: pack(x[0, 0], m), "pack: x must be 4-D or 5-D"),
    (lambda x, m, f, p: unpack(p[1:], m, f), r"unpack: packed must be contiguous \[total_kept"),
    (lambda x, m, f, p: unpack(p, m, f.half()), r"unpack: fill must have dtype in \(float32\)"),
    (lambda x, m, f, p: unpack(p, m, f[:3]), r"unpack: fill must have shape \(8,\)"),
    (lambda x, m, f, p: unpack(p, m, f.to("meta")), "unpack: fill must be on cpu"),
    (lambda x, m, f, p: pack(x, m.keep_idx), "pack: mask must be a TokenMask, got Tensor"),
])
def test_bad_input(fn, message):
    mask = make_mask(3, (4, 4), 0.5, batch_size=2)
    x = torch.randn(2, 3, 4, 4, 8)
    with pytest.raises((ValueError, TypeError), match=message):
        fn(x, mask, torch.zeros(8), pack(x, mask))


def test_int64_offsets_past_2_pow_31_elements():
    # 2M tokens of 1040 bytes: flat byte offsets pass 2^31 (about 5 s and 4.4 GB on CPU).
    x = torch.empty(1, 8192, 16, 16, 1040, dtype=torch.uint8)
    x.view(-1, 1040)[-4:] = torch.arange(4, dtype=torch.uint8)[:, None] + 1
    mask = make_mask(8192, (16, 16), 0.5, batch_size=1, seed=3)
    assert_exact(pack(x, mask), reference.pack(x.view(-1, 1040), mask.keep_idx))


@pytest.mark.cuda_ext
def test_cuda_kernels_match_reference_and_cpu():
    for dim in (1, 3, 8, 1024):
        mask = make_mask([7, 0, 64], (16, 16), 0.37, pattern="random", seed=1, device="cuda")
        x = payload((71, 16, 16, dim), torch.bfloat16, "cuda")
        packed = pack(x, mask)
        assert_exact(packed, x.view(-1, dim)[mask.keep_idx])
        fill = payload((dim,), torch.bfloat16, "cuda")
        assert_exact(unpack(packed, mask, fill), unpack(packed, mask, fill, backend="torch"))


@pytest.mark.parametrize("shape", [(2, 3, 4, 4, 0), (0, 3, 4, 4, 8), (2, 0, 4, 4, 8),
                                   (2, 3, 0, 4, 8)], ids=["D0", "B0", "T0", "H0"])
def test_empty_shapes_just_work(shape):
    x = torch.randn(shape)
    packed, mask = mask_and_pack(x, 0.5, seed=1)
    assert packed.shape == (mask.total_kept, shape[-1])
    assert_exact(pack(x, mask), packed)
    fill = torch.randn(shape[-1])
    assert unpack(packed, mask, fill).shape == (shape[0] * shape[1], *shape[2:])
    assert_exact(unpack(packed, mask, fill), unpack(packed, mask, fill, backend="torch"))


@pytest.mark.parametrize("keep_idx", [[2, 0], [1, 1], [0, 9]], ids=["unsorted", "duplicate",
                                                                     "past-end"])
@pytest.mark.parametrize("fn", [torch.ops.vidcore.unpack, reference.unpack], ids=["op", "ref"])
def test_unpack_refuses_unordered_keep_idx_on_every_backend(fn, keep_idx):
    # The row search of the kernels needs strictly ascending indices: with [2, 0] the C++ twin
    # used to write one row where the reference wrote both. Now both refuse.
    with pytest.raises(RuntimeError, match="unpack: keep_idx must be strictly ascending"):
        fn(torch.randn(2, 3), torch.tensor(keep_idx), torch.zeros(3), 4)


def tree_sum(rows: list[torch.Tensor]) -> torch.Tensor:
    """The aligned binary tree sum, written as its definition: split at the largest power of
    two below the row count (an independent oracle of the fill gradient's order)."""
    if len(rows) == 1:
        return rows[0]
    half = 1 << ((len(rows) - 1).bit_length() - 1)
    return tree_sum(rows[:half]) + tree_sum(rows[half:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_fill_gradient_is_the_pairwise_sum_for_any_thread_count(dtype):
    num_rows = 3 * 1024 + 37  # several 1024-row tiles and a ragged last one
    grad = (torch.randn(num_rows, 3, dtype=torch.float64) * 10.0 ** torch.randint(
        -3, 4, (num_rows, 1))).to(dtype)
    keep_idx = torch.randperm(num_rows)[:1000].sort().values
    grad[keep_idx[:5]] = float("inf")  # kept rows take no part, even when not finite
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    masked = torch.ones(num_rows, dtype=torch.bool).index_fill_(0, keep_idx, False)
    leaves = torch.where(masked[:, None], grad.to(acc), 0.0)
    expected = tree_sum(list(leaves)).to(dtype)
    assert_exact(reference.unpack_fill_grad(grad, keep_idx), expected)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            assert_exact(torch.ops.vidcore.unpack_fill_grad(grad, keep_idx), expected)
    finally:
        torch.set_num_threads(before)


def test_no_host_to_device_copy_once_a_layout_was_seen(monkeypatch):
    # CUDA graph safety without a GPU: fake CUDA tensors, every aten / vidcore op recorded.
    # The first call uploads the layout's metadata (2 copies); a repeat, as in a captured graph
    # after warm-up, copies nothing from the host.
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from vidcore.ops import _mask_plan

    class HostCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.copies = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            leaves = torch.utils._pytree.tree_leaves
            src = {a.device.type for a in leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
            dst = {a.device.type for a in leaves(out) if isinstance(a, torch.Tensor)}
            if "cpu" in src and "cuda" in dst:
                self.copies.append(str(func))
            return out

    monkeypatch.setattr(_mask_plan, "_upload", lambda host, device: host.to(device))
    _mask_plan.clear_metadata_cache()  # no real CUDA tensors cached by earlier tests
    try:
        with FakeTensorMode():
            x, fill = torch.empty(2, 3, 4, 5, 8, device="cuda:0"), torch.empty(8, device="cuda:0")

            def step():
                mask = make_mask([3, 3], (4, 5), [0.25, 0.5], seed=1, device="cuda:0")
                return unpack(pack(x, mask), mask, fill), mask_and_pack(x, [0.25, 0.5], seed=1)

            calls = [HostCopies(), HostCopies()]
            for log in calls:
                with log:
                    step()
    finally:
        _mask_plan.clear_metadata_cache()
    assert calls[0].copies == ["aten._to_copy.default"] * 2, calls[0].copies
    assert calls[1].copies == []


@pytest.mark.cuda_ext
def test_cuda_fill_gradient_is_bit_identical_to_cpu():
    grad = torch.randn(5000, 67, dtype=torch.bfloat16)
    keep_idx = torch.randperm(5000)[:1700].sort().values
    expected = torch.ops.vidcore.unpack_fill_grad(grad, keep_idx)
    assert_exact(torch.ops.vidcore.unpack_fill_grad(grad.cuda(), keep_idx.cuda()).cpu(), expected)


@pytest.mark.gpu
def test_cuda_graph_capture_make_mask_pack_unpack():
    x = torch.randn(2, 8, 16, 16, 64, device="cuda")
    fill = torch.randn(64, device="cuda")

    def step():
        mask = make_mask([8, 8], (16, 16), [0.3, 0.6], seed=1, device="cuda")
        return unpack(pack(x, mask) * 2, mask, fill)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up: the layout's metadata reaches the device before capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
    graph.replay()
    torch.cuda.synchronize()
    expected = make_mask([8, 8], (16, 16), [0.3, 0.6], seed=1)
    cpu = x.cpu().view(-1, 64)
    want = fill.cpu().expand(cpu.shape[0], 64).clone()
    want[expected.keep_idx] = cpu[expected.keep_idx] * 2
    assert_exact(out.cpu().view(-1, 64), want)
