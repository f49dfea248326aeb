"""vidcore.ops.make_mask: exact counts, the (key, u) rule, and bit-identical keep_idx on the
reference, the CPU twin and (on a GPU) the CUDA kernel."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import draw_ratios, make_mask, unit_keys
from vidcore.testing import assert_exact, opcheck

PATTERNS = [("random", (1, 2, 2)), ("tube", (1, 2, 2)), ("frame", (1, 2, 2)),
            ("block", (2, 2, 2))]
RATIOS = [0.0, 0.25, 0.5, 0.9, 1.0]
BATCHES = [
    pytest.param([4, 2, 6], (4, 6), id="ragged"),
    pytest.param([2, 0, 4], (2, 2), id="empty-video"),
    pytest.param([2], (1, 1), id="N1"),
    pytest.param([1, 1], (2, 4), id="T1"),
    pytest.param([0, 0], (2, 2), id="all-empty"),
]


def masks_agree(frames, size, ratio, pattern, block, seed=11, device="cpu"):
    fast = make_mask(frames, size, ratio, pattern=pattern, block=block, seed=seed, device=device)
    ref = make_mask(frames, size, ratio, pattern=pattern, block=block, seed=seed,
                    backend="torch")
    assert_exact(fast.keep_idx.cpu(), ref.keep_idx)
    assert_exact(fast.cu_seqlens.cpu(), ref.cu_seqlens)
    return fast


def test_reference_semantics_random_masks_smallest_key_unit_pairs():
    frames, (h, w), ratio, seed = [3, 2], (2, 3), 0.5, 7
    mask = make_mask(frames, (h, w), ratio, seed=seed, backend="torch")
    expected, offset = [], 0
    for b, t in enumerate(frames):
        keys = unit_keys(seed, b, t * h * w).tolist()
        masked = set(sorted(range(t * h * w), key=lambda u: (keys[u], u))[:math.floor(
            ratio * t * h * w + 0.5)])
        expected += [offset + u for u in range(t * h * w) if u not in masked]
        offset += t * h * w
    assert mask.keep_idx.tolist() == expected


@pytest.mark.parametrize("pattern, block", PATTERNS[1:], ids=lambda p: str(p))
def test_reference_semantics_structured_units(pattern, block):
    t, h, w = 4, 4, 6
    keep = torch.zeros(t * h * w, dtype=torch.bool)
    keep[make_mask([t], (h, w), 0.5, pattern=pattern, block=block, seed=3).keep_idx] = True
    keep = keep.view(t, h, w)
    if pattern == "tube":  # the same positions in every frame
        assert (keep == keep[0]).all()
    elif pattern == "frame":  # whole frames
        assert (keep.flatten(1).all(1) | ~keep.flatten(1).any(1)).all()
    else:  # whole 2 x 2 x 2 blocks
        blocks = keep.view(2, 2, 2, 2, 3, 2).permute(0, 2, 4, 1, 3, 5).flatten(3)
        assert (blocks.all(-1) | ~blocks.any(-1)).all()


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("pattern, block", PATTERNS, ids=[p for p, _ in PATTERNS])
@pytest.mark.parametrize("frames, size", BATCHES)
def test_cpu_twin_matches_reference(frames, size, pattern, block, ratio, device):
    if pattern == "block":  # the largest 2 x 2 x 2 sub-block that divides this batch
        block = (1 + all(t % 2 == 0 for t in frames), 2 - size[0] % 2, 2 - size[1] % 2)
    masks_agree(frames, size, ratio, pattern, block, device=device)


@pytest.mark.parametrize("pattern, block", PATTERNS, ids=[p for p, _ in PATTERNS])
def test_exact_counts(pattern, block):
    frames, (h, w), ratios = [4, 2, 6], (4, 6), [0.1, 0.5, 0.77]
    mask = make_mask(frames, (h, w), ratios, pattern=pattern, block=block, seed=1)
    for t, r, kept in zip(frames, ratios, mask.kept_per_video, strict=False):
        units = reference.num_units(pattern, t, h, w, block)
        assert kept == (units - math.floor(r * units + 0.5)) * (t * h * w // units)
    assert mask.cu_seqlens.tolist() == [0, *torch.tensor(mask.kept_per_video).cumsum(0).tolist()]
    assert mask.max_seqlen == max(mask.kept_per_video) and mask.keep_idx.numel() == mask.total_kept


def test_long_video_two_million_units():
    masks_agree([8192], (16, 16), 0.5, "random", (1, 2, 2))


@given(frames=st.lists(st.integers(0, 5), min_size=1, max_size=4), h=st.integers(1, 5),
       w=st.integers(1, 5), ratio=st.floats(0, 1), pattern=st.sampled_from(["random", "tube",
       "frame"]), seed=st.integers(0, 2**64))
def test_property_cpu_twin_matches_reference(frames, h, w, ratio, pattern, seed):
    masks_agree(frames, (h, w), ratio, pattern, (1, 1, 1), seed)


def test_seed_changes_mask_and_is_deterministic():
    a, b = (make_mask(8, (4, 4), 0.5, batch_size=2, seed=s) for s in (1, 2))
    assert not torch.equal(a.keep_idx, b.keep_idx)
    assert torch.equal(a.keep_idx, make_mask(8, (4, 4), 0.5, batch_size=2, seed=1).keep_idx)


def test_position_ids():
    mask = make_mask([3, 2], (2, 3), 0.5, seed=4)
    t, h, w, pos = mask.position_ids()
    offsets = torch.tensor([0, 18])
    video = torch.repeat_interleave(torch.arange(2), torch.tensor(mask.kept_per_video))
    assert torch.equal(offsets[video] + (t * 2 + h) * 3 + w, mask.keep_idx)
    assert pos.tolist() == [*range(mask.kept_per_video[0]), *range(mask.kept_per_video[1])]


def test_draw_ratios_are_deterministic_and_clipped():
    ratios = draw_ratios(64, seed=3)
    assert ratios == draw_ratios(64, seed=3) and ratios != draw_ratios(64, seed=4)
    assert all(0.1 <= r <= 0.7 for r in ratios)


def test_opcheck(device):
    meta = torch.tensor([[0, 3, 4, 0], [18, 2, 9, 14]], device=device)
    opcheck(torch.ops.vidcore.make_mask.default, (meta, 2, 3, "random", [1, 1, 1], 5, 17, 3))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(ratio=1.5), ValueError, r"make_mask: ratio must be in \[0, 1\], got 1.5"),
    (dict(ratio=[0.5]), ValueError, "make_mask: ratio must be a float or have one value per"),
    (dict(num_frames=[2, -1]), ValueError, "make_mask: num_frames must be >= 0, got -1"),
    (dict(num_frames=torch.tensor([2], device="meta")), ValueError,
     "make_mask: num_frames must be held on the host"),
    (dict(num_frames=torch.tensor([2.0])), TypeError, "make_mask: num_frames must be a 1-D int"),
    (dict(num_frames=4), TypeError, "make_mask: batch_size must be an int, got NoneType"),
    (dict(frame_size=(0, 2)), ValueError, "make_mask: frame_size must be >= 1, got 0"),
    (dict(pattern="tubes"), ValueError, "make_mask: pattern must be one of"),
    (dict(pattern="block", block=(2, 3, 2)), ValueError, r"make_mask: block \(2, 3, 2\) must "),
    (dict(block=(1, 0, 2)), ValueError, "make_mask: block must be >= 1, got 0"),
    (dict(backend="numpy"), ValueError, "make_mask: backend must be one of"),
])
def test_bad_input(kwargs, error, message):
    args = dict(num_frames=[2, 4], frame_size=(4, 4), ratio=0.5) | kwargs
    with pytest.raises(error, match=message):
        make_mask(args.pop("num_frames"), args.pop("frame_size"), args.pop("ratio"), **args)


@pytest.mark.cuda_ext
@pytest.mark.parametrize("pattern, block", PATTERNS, ids=[p for p, _ in PATTERNS])
def test_cuda_kernel_matches_reference(pattern, block):
    for frames, size in [([4, 0, 6, 2], (4, 6)), ([64] * 8, (16, 16))]:
        for ratio in RATIOS:
            masks_agree(frames, size, ratio, pattern, block, device="cuda")
    masks_agree([8192], (16, 16), 0.5, "random", block, device="cuda")
