"""vidcore.ops.mask_and_pack: the fused op (selection, compaction and row copy in one pass)
equals make_mask followed by pack, bit for bit, on every backend, with pack's gradient."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import make_mask, mask_and_pack, pack
from vidcore.testing import assert_exact, opcheck

PATTERNS = [("random", (1, 1, 1)), ("tube", (1, 1, 1)), ("frame", (1, 1, 1)),
            ("block", (2, 2, 1))]


def fused_equals_unfused(x, ratio, num_frames=None, **kwargs):
    packed, mask = mask_and_pack(x, ratio, num_frames=num_frames, **kwargs)
    frames = x.shape[1] if num_frames is None else num_frames
    batch = x.shape[0] if num_frames is None else None
    expected = make_mask(frames, tuple(x.shape[-3:-1]), ratio, batch_size=batch,
                         device=x.device, **kwargs)
    assert_exact(mask.keep_idx, expected.keep_idx)
    assert_exact(mask.cu_seqlens, expected.cu_seqlens)
    assert (mask.kept_per_video, mask.max_seqlen) == (expected.kept_per_video,
                                                      expected.max_seqlen)
    rows = x.reshape(x.shape[:-1].numel(), x.shape[-1])
    assert_exact(packed, rows[expected.keep_idx])  # an independent gather
    reference_packed, reference_mask = mask_and_pack(x, ratio, num_frames=num_frames,
                                                     backend="torch", **kwargs)
    assert_exact(packed, reference_packed)
    assert_exact(mask.keep_idx, reference_mask.keep_idx)
    return packed, mask


@pytest.mark.parametrize("pattern, block", PATTERNS, ids=[p for p, _ in PATTERNS])
@pytest.mark.parametrize("ratio", [0.0, 0.3, [0.9, 0.1], 1.0], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8], ids=str)
def test_matches_make_mask_then_pack(pattern, block, ratio, dtype):
    x = (torch.randn(2, 4, 4, 6, 5) * 50).to(dtype)
    fused_equals_unfused(x, ratio, pattern=pattern, block=block, seed=3)


def test_ragged_batch():
    x = torch.randn(9, 2, 2, 8)
    packed, mask = fused_equals_unfused(x, [0.3, 0.6], num_frames=[4, 5], pattern="tube", seed=1)
    assert mask.num_frames == (4, 5) and packed.shape == (mask.total_kept, 8)


@given(frames=st.lists(st.integers(0, 4), min_size=1, max_size=3), h=st.integers(0, 4),
       w=st.integers(1, 4), dim=st.integers(0, 9), ratio=st.floats(0, 1),
       pattern=st.sampled_from(["random", "tube", "frame"]), seed=st.integers(0, 2**40),
       count_rule=st.sampled_from(["round", "trunc"]))
def test_property_matches_make_mask_then_pack(frames, h, w, dim, ratio, pattern, seed,
                                              count_rule):
    x = torch.randn(sum(frames), h, w, dim)
    fused_equals_unfused(x, ratio, num_frames=frames, pattern=pattern, seed=seed,
                         count_rule=count_rule)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_long_video_is_identical_for_any_thread_count(threads):
    x = torch.randn(1, 96, 16, 16, 8)  # 24K tokens: the split selection and compaction
    expected = mask_and_pack(x, 0.41, seed=9, backend="torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        packed, mask = mask_and_pack(x, 0.41, seed=9)
    finally:
        torch.set_num_threads(before)
    assert_exact(packed, expected[0])
    assert_exact(mask.keep_idx, expected[1].keep_idx)


def test_count_rule_trunc_reaches_the_fused_op():
    x = torch.randn(1, 2, 16, 16, 4)
    packed, mask = mask_and_pack(x, 0.101, count_rule="trunc")
    assert packed.shape[0] == mask.total_kept == 461  # ST-LLM: 512 - int(0.101 * 512)
    assert mask_and_pack(x, 0.101)[0].shape[0] == 460  # vidcore's default rounds


def test_gradient_scatters_back_like_pack():
    x = torch.randn(2, 3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: mask_and_pack(x, 0.5, seed=2)[0], (x,))
    packed, mask = mask_and_pack(x, 0.5, seed=2)
    grad = torch.randn_like(packed)
    (fused,) = torch.autograd.grad(packed, x, grad)
    (unfused,) = torch.autograd.grad(pack(x, mask), x, grad)
    assert_exact(fused, unfused)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    meta = torch.tensor([[0, 3, 4, 0], [18, 2, 9, 14]], device=device)
    x = torch.randn(30, 5, device=device, requires_grad=requires_grad)
    opcheck(torch.ops.vidcore.mask_and_pack.default,
            (x, meta, 2, 3, "random", [1, 1, 1], 5, 17, 3))


def test_compile():
    def masked_double(x):
        packed, mask = mask_and_pack(x, 0.5, seed=4)
        return packed * 2, mask.cu_seqlens

    x = torch.randn(2, 3, 2, 2, 8)
    compiled = torch.compile(masked_double, fullgraph=True)
    assert_exact(compiled(x), masked_double(x))


def test_reference_is_make_mask_then_pack():
    meta = torch.tensor([[0, 3, 4, 0], [18, 2, 9, 14]])
    x = torch.randn(30, 5)
    packed, keep_idx = reference.mask_and_pack(x, meta, 2, 3, "random", [1, 1, 1], 5, 17, 3)
    assert_exact(keep_idx, reference.make_mask(meta, 2, 3, "random", [1, 1, 1], 5, 17, 3))
    assert_exact(packed, x[keep_idx])


@pytest.mark.parametrize("call, error, message", [
    (lambda x: mask_and_pack(x[0], 0.5), ValueError, r"mask_and_pack: x \[sum T_b, H, W, D\] "
     "needs num_frames"),
    (lambda x: mask_and_pack(x, 0.5, num_frames=[3, 3]), ValueError,
     "mask_and_pack: num_frames is only for ragged x"),
    (lambda x: mask_and_pack(x[0], 0.5, num_frames=[2, 2]), ValueError,
     r"mask_and_pack: x of shape \(3, 4, 4, 8\) does not match"),
    (lambda x: mask_and_pack(x.transpose(2, 3), 0.5), ValueError,
     "mask_and_pack: x must be contiguous"),
    (lambda x: mask_and_pack(x[..., 0, 0], 0.5), ValueError, "mask_and_pack: x must be 4-D"),
    (lambda x: mask_and_pack(x, 1.5), ValueError, r"mask_and_pack: ratio must be in \[0, 1\]"),
    (lambda x: mask_and_pack(x, 0.5, count_rule="ceil"), ValueError,
     "mask_and_pack: count_rule must be one of"),
    (lambda x: mask_and_pack(x, 0.5, pattern="tubes"), ValueError,
     "mask_and_pack: pattern must be one of"),
    (lambda x: mask_and_pack(x.numpy(), 0.5), TypeError,
     "mask_and_pack: x must be a torch.Tensor"),
])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(2, 3, 4, 4, 8))


@pytest.mark.cuda_ext
@pytest.mark.parametrize("pattern, block", PATTERNS, ids=[p for p, _ in PATTERNS])
def test_cuda_kernel_matches_cpu(pattern, block):
    # Short videos (one block per video) and few long ones (the split kernels).
    for shape in [(3, 4, 4, 6, 64), (1, 512, 16, 16, 64), (2, 130, 16, 16, 8)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        for ratio in (0.0, 0.37, 1.0):
            packed, mask = mask_and_pack(x.cuda(), ratio, pattern=pattern, block=block, seed=5)
            expected, expected_mask = mask_and_pack(x, ratio, pattern=pattern, block=block,
                                                    seed=5)
            assert_exact(packed.cpu(), expected)
            assert_exact(mask.keep_idx.cpu(), expected_mask.keep_idx)
