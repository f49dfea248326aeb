"""The attention kernels' config rules (kernels/_attention_configs.py), checked on their own;
tests/kernels/test_aot_compile.py holds them to the compiled binaries."""
import pytest
from vidcore.kernels._attention_configs import (
    BWD_TILES,
    FWD_TILES,
    keep_tile,
    kept_tiles,
    shared_estimate,
)
from vidcore.kernels._target import TARGETS

BLOCK_DS = (32, 64, 128, 256)  # head dims 32..256 padded to a power of two
INPUTS = [(2, "tf32"), (4, "tf32"), (4, "ieee")]  # (bytes per element, dot precision)


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS)
@pytest.mark.parametrize("kind, tiles", [("fwd", FWD_TILES), ("bwd", BWD_TILES)])
def test_every_head_dim_and_dtype_keeps_a_tile_that_fits(target, kind, tiles):
    for block_d in BLOCK_DS:
        for elem, precision in INPUTS:
            kept = kept_tiles(kind, tiles, block_d, elem, precision, target)
            assert kept, (kind, target.name, block_d, elem, precision)
            assert all(shared_estimate(kind, m, n, block_d, stages, elem) <= target.max_shared
                       for m, n, _, stages in kept)


def test_forward_128_row_tiles_take_8_warps():
    # 4 warps holding 128 rows spill at head dims 96-256 on sm_80 and sm_90a (issue 17, item 7)
    assert all(warps == 8 for m, _, warps, _ in FWD_TILES if m == 128)


def test_head_dim_256_backward_needs_its_own_tiles():
    # The forward's (128, 32) tile, streamed by the backward at d = 256, would need ~288 KB of
    # shared memory (issue 17, item 6): far over an H100's 227 KB. The backward's tiles that are
    # kept there fit.
    h100 = TARGETS["sm_90a"]
    assert shared_estimate("bwd", 128, 32, 256, 2, 2) > h100.max_shared
    kept = kept_tiles("bwd", BWD_TILES, 256, 2, "tf32", h100)
    assert kept and all(keep_tile("bwd", t, 256, 2, "tf32", h100) for t in kept)


def test_exact_float32_takes_only_small_tiles():
    # tl.dot without TF32 runs on FMA units: larger tiles spill thousands of bytes at d = 128
    for target in TARGETS.values():
        for kind, tiles in (("fwd", FWD_TILES), ("bwd", BWD_TILES)):
            for block_d in BLOCK_DS:
                exact = kept_tiles(kind, tiles, block_d, 4, "ieee", target)
                assert exact and all(m * n <= 16 * 32 and warps == 8
                                     for m, n, warps, _ in exact), (kind, block_d, exact)
