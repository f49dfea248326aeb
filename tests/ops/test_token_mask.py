"""vidcore.ops.make_mask: exact counts, the (key, u) rule, and bit-identical keep_idx on the
reference, the CPU twin and (on a GPU) the CUDA kernel."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import TokenMask, draw_ratios, make_mask, pack, unit_keys, unpack
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
    pytest.param([3, 2], (0, 4), id="H0"),
    pytest.param([], (2, 2), id="B0"),
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


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_cpu_twin_is_identical_for_any_thread_count(threads):
    # One long video runs the split selection (tiles of units and tokens in parallel); many
    # short ones run one task per video.
    expected = [make_mask(frames, (16, 16), 0.37, seed=5, backend="torch").keep_idx
                for frames in ([300], [3] * 9)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for frames, want in zip(([300], [3] * 9), expected, strict=True):
            assert_exact(make_mask(frames, (16, 16), 0.37, seed=5).keep_idx, want)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("count_rule, kept", [("round", 460), ("trunc", 461)])
def test_count_rule_matches_st_llm(count_rule, kept):
    # ST-LLM masks int(ratio * L) tokens (stllm/models/utils.py): ratio 0.101 of 512 tokens keeps
    # 512 - int(51.712) = 461; vidcore's default rounds (masks 52, keeps 460).
    for backend in ("auto", "torch"):
        mask = make_mask([2], (16, 16), 0.101, count_rule=count_rule, backend=backend)
        assert mask.kept_per_video == (kept,) and mask.keep_idx.numel() == kept
        assert mask.count_rule == count_rule


def test_count_rule_trunc_equals_int_of_ratio_times_units():
    for ratio in (0.0, 0.1, 0.15, 0.29, 0.5, 0.7, 0.999, 1.0):
        mask = make_mask([4, 3], (5, 7), ratio, pattern="tube", count_rule="trunc")
        kept_units = 35 - int(ratio * 35)  # tube units: the 5 x 7 spatial positions
        assert mask.kept_per_video == (kept_units * 4, kept_units * 3)
        assert mask.total_kept == mask.keep_idx.numel()


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


@pytest.mark.parametrize("frames, size", [([], (2, 2)), ([0, 0], (2, 3)), ([2], (0, 3))])
def test_position_ids_of_empty_masks(frames, size):
    t, h, w, pos = make_mask(frames, size, 0.5).position_ids()
    assert all(p.shape == (0,) and p.dtype == torch.int64 for p in (t, h, w, pos))


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
    assert draw_ratios(0, seed=3) == []


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(batch_size=-1), ValueError, "draw_ratios: batch_size must be >= 0, got -1"),
    (dict(batch_size=2.0), TypeError, "draw_ratios: batch_size must be an int"),
    (dict(seed=0.5), TypeError, "draw_ratios: seed must be an int"),
    (dict(mean=float("nan")), ValueError, "draw_ratios: mean must be a finite number, got nan"),
    (dict(std=float("inf")), ValueError, "draw_ratios: std must be a finite number"),
    (dict(std=-0.1), ValueError, "draw_ratios: need std >= 0"),
    (dict(low=0.9, high=0.1), ValueError, "draw_ratios: need std >= 0 and 0 <= low <= high"),
    (dict(high=1.5), ValueError, "draw_ratios: need std >= 0 and 0 <= low <= high <= 1"),
])
def test_draw_ratios_bad_input(kwargs, error, message):
    args = dict(batch_size=4, seed=0) | kwargs
    with pytest.raises(error, match=message):
        draw_ratios(args.pop("batch_size"), args.pop("seed"), **args)


def test_ratio_accepts_numpy_scalars_and_cpu_tensors():
    expected = make_mask([2, 3], (2, 2), [0.25, 0.75], seed=1).keep_idx
    for ratio in ([np.float32(0.25), np.float64(0.75)], np.array([0.25, 0.75]),
                  torch.tensor([0.25, 0.75])):
        assert_exact(make_mask([2, 3], (2, 2), ratio, seed=1).keep_idx, expected)
    one = make_mask([2, 3], (2, 2), np.float32(0.5), seed=1).keep_idx
    assert_exact(one, make_mask([2, 3], (2, 2), 0.5, seed=1).keep_idx)


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
    (dict(frame_size=(-1, 2)), ValueError, "make_mask: frame_size must be >= 0, got -1"),
    (dict(frame_size=(2**16, 2**16)), ValueError, "make_mask: frame_size 65536 x 65536 has more"),
    (dict(ratio=torch.tensor(0.5, device="meta")), ValueError,
     "make_mask: a ratio tensor must be a 0-D or 1-D CPU tensor"),
    (dict(ratio=float("nan")), ValueError, r"make_mask: ratio must be in \[0, 1\], got nan"),
    (dict(ratio="0.5"), TypeError, "make_mask: ratio must be a float or one float per video"),
    (dict(count_rule="floor"), ValueError, "make_mask: count_rule must be one of"),
    (dict(num_frames=[2**31], frame_size=(1, 1), ratio=0.0), ValueError,
     "make_mask: the batch keeps 2147483648 tokens; cu_seqlens is int32"),
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


def _hand_made(**changes) -> TokenMask:
    """A TokenMask built by hand from a real one's fields (videos of 8 and 12 tokens)."""
    mask = make_mask([2, 3], (2, 2), 0.5, seed=1)
    fields = {f.name: getattr(mask, f.name) for f in dataclasses.fields(mask) if f.init}
    return TokenMask(**(fields | changes))


def _edited(index: int, value: int) -> torch.Tensor:
    keep = make_mask([2, 3], (2, 2), 0.5, seed=1).keep_idx.clone()
    keep[index] = value
    return keep


@pytest.mark.parametrize("changes, message", [
    (dict(keep_idx=_edited(-1, 10**9)), r"mask.keep_idx\[9\] = 1000000000 must lie in video 1"),
    (dict(keep_idx=_edited(0, -1)), r"mask.keep_idx\[0\] = -1 must lie in video 0"),
    (dict(keep_idx=_edited(3, 8)), r"mask.keep_idx\[3\] = 8 must lie in video 0"),
    (dict(keep_idx=_edited(1, 0)), r"mask.keep_idx\[1\] = 0 must lie in video 0's token rows and "
     "above the entry before it"),
    (dict(keep_idx=_edited(0, 7)), r"mask.keep_idx\[1\] = \d must lie"),
    (dict(cu_seqlens=torch.tensor([0, 5, 10], dtype=torch.int32)),
     r"mask.cu_seqlens must be \[0, 4, 10\]"),
])
def test_hand_made_mask_is_checked_before_any_op_reads_it(changes, message):
    # Out of range, negative, in another video's rows, duplicate, unsorted: each used to reach
    # the kernels (SIGSEGV in pack, garbage reads, or unpack writing 1 row where the reference
    # wrote all).
    x = torch.randn(5, 2, 2, 3)
    for use in (lambda m: pack(x, m), lambda m: pack(x, m, backend="torch"),
                lambda m: unpack(torch.zeros(10, 3), m, torch.zeros(3)),
                lambda m: m.position_ids()):
        with pytest.raises(ValueError, match=message):
            use(_hand_made(**changes))


def test_hand_made_mask_that_is_right_is_accepted_and_replace_is_checked():
    mask = make_mask([2, 3], (2, 2), 0.5, seed=1)
    x = torch.randn(5, 2, 2, 3)
    assert_exact(pack(x, _hand_made(keep_idx=mask.keep_idx.clone())), pack(x, mask))
    with pytest.raises(ValueError, match=r"pack: mask.keep_idx\[2\] = 9 must lie in video 0"):
        pack(x, dataclasses.replace(mask, keep_idx=_edited(2, 9)))


@pytest.mark.parametrize("edit", [lambda m: m.keep_idx.__setitem__(0, 10**9),
                                  lambda m: m.keep_idx.flip(0).sort(),  # no edit: stays valid
                                  lambda m: m.cu_seqlens.zero_()], ids=["keep_idx", "none",
                                                                        "cu_seqlens"])
def test_in_place_edit_of_a_made_mask_is_refused(edit, request):
    mask = make_mask([2, 3], (2, 2), 0.5, seed=1)
    x = torch.randn(5, 2, 2, 3)
    edit(mask)
    if request.node.callspec.id == "none":
        assert pack(x, mask).shape == (10, 3)
        return
    for use in (lambda: pack(x, mask), lambda: pack(x, mask, backend="torch"),
                lambda: unpack(torch.zeros(10, 3), mask, torch.zeros(3))):
        with pytest.raises(ValueError, match="was modified in place after the mask was made"):
            use()


@pytest.mark.parametrize("changes, error, message", [
    (dict(keep_idx=torch.zeros(10, dtype=torch.int32)), TypeError, "keep_idx must be a 1-D int64"),
    (dict(cu_seqlens=torch.zeros(3, dtype=torch.int64)), TypeError, "cu_seqlens must be an int32"),
    (dict(kept_per_video=(4,)), ValueError, "kept_per_video .* must give one count per video"),
    (dict(kept_per_video=(4, 13)), ValueError, r"kept_per_video \[4, 13\] must give one"),
    (dict(num_frames=[2, 3]), TypeError, "num_frames must be a tuple of ints"),
    (dict(max_seqlen=5), ValueError, r"max_seqlen must be max\(kept_per_video\) = 6"),
    (dict(keep_idx=torch.zeros(9, dtype=torch.int64)), ValueError, "keep_idx must have sum"),
])
def test_hand_made_mask_fields_are_checked_at_construction(changes, error, message):
    with pytest.raises(error, match=f"TokenMask: {message}"):
        _hand_made(**changes)
