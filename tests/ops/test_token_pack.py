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


def test_mask_and_pack_ragged_equals_make_mask_then_pack():
    x = payload((9, 2, 2, 8), torch.float32)
    packed, mask = mask_and_pack(x, [0.3, 0.6], num_frames=[4, 5], pattern="tube", seed=1)
    expected = make_mask([4, 5], (2, 2), [0.3, 0.6], pattern="tube", seed=1)
    assert_exact(mask.keep_idx, expected.keep_idx)
    assert_exact(packed, reference.pack(x.view(-1, 8), expected.keep_idx))


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
    (lambda x, m, f, p: mask_and_pack(x[0], 0.5), "mask_and_pack: x .* needs num_frames"),
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


@pytest.mark.gpu
def test_cuda_graph_capture_make_mask_pack():
    x = torch.randn(2, 8, 16, 16, 64, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        pack(x, make_mask(8, (16, 16), 0.5, batch_size=2, seed=1, device="cuda"))  # warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            packed = pack(x, make_mask(8, (16, 16), 0.5, batch_size=2, seed=1, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    expected = make_mask(8, (16, 16), 0.5, batch_size=2, seed=1)
    assert_exact(packed.cpu(), x.cpu().view(-1, 64)[expected.keep_idx])
