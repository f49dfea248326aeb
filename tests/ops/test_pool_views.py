"""vidcore.ops.pool's public surface: View fields checked without coercion (and independently of
the plan cache), empty sizes, metadata the caller owns, the byte-bounded plan cache, bad input."""
import numpy as np
import pytest
import torch

from vidcore.ops import (
    Adaptive,
    Linspace,
    SegmentCentres,
    Stride,
    Uniform,
    View,
    merge_tokens,
    pool,
    pool_cache,
)
from vidcore.testing import assert_exact


@pytest.fixture
def cache():
    """The process-wide plan cache, restored after the test."""
    limit = pool_cache.max_bytes
    pool_cache.clear()
    yield pool_cache
    pool_cache.max_bytes = limit
    pool_cache.clear()


BAD_VIEWS = [
    (View(frames=(1.7, 2.2)), TypeError, r"views\[0\].frames\[0\] must be an int, got float"),
    (View(frames=(0, True)), TypeError, r"views\[0\].frames\[1\] must be an int, got bool"),
    (View(frames=("1",)), TypeError, r"views\[0\].frames\[0\] must be an int, got str"),
    (View(frames="al"), ValueError, r"views\[0\].frames must be 'all', Uniform\(n\)"),
    (View(frames=3), TypeError, r"views\[0\].frames must be 'all'.*got int"),
    (View(frames=(0, -1)), ValueError, r"views\[0\].frames\[1\] must be >= 0, got -1"),
    (View(frames=torch.tensor([0.0, 1.0])), TypeError, r"views\[0\].frames as a tensor"),
    (View(frames=Uniform(2.0)), TypeError, r"views\[0\].frames.n must be an int, got float"),
    (View(frames=Linspace(0)), ValueError, r"views\[0\].frames.n must be >= 1, got 0"),
    (View(frames=SegmentCentres(True)), TypeError, r"views\[0\].frames.n must be an int"),
    (View(frames=Stride(0)), ValueError, r"views\[0\].frames.step must be >= 1, got 0"),
    (View(frames=Stride(2, -1)), ValueError, r"views\[0\].frames.start must be >= 0"),
    (View(temporal=2.0), TypeError, r"views\[0\].temporal must be an int, got float"),
    (View(temporal=True), TypeError, r"views\[0\].temporal must be an int, got bool"),
    (View(temporal=0), ValueError, r"views\[0\].temporal must be >= 1, got 0"),
    (View(temporal="all"), ValueError, r"views\[0\].temporal must be None, 'mean' or an int"),
    (View(spatial=(0, 2)), ValueError, r"views\[0\].spatial must be >= 1, got 0"),
    (View(spatial=(2.0, 2)), TypeError, r"views\[0\].spatial must be an int, got float"),
    (View(spatial=("2", 2)), TypeError, r"views\[0\].spatial must be an int, got str"),
    (View(spatial=(2, 2, 2)), ValueError, r"views\[0\].spatial must be None, 'mean', \(kh, kw\)"),
    (View(spatial="max"), ValueError, r"views\[0\].spatial must be None, 'mean'"),
    (View(spatial=Adaptive(0, 1)), ValueError, r"views\[0\].spatial.h must be >= 1"),
    (View(spatial=Adaptive(2, 1.5)), TypeError, r"views\[0\].spatial.w must be an int"),
    (View(mode="sum"), ValueError, r"views\[0\].mode must be 'avg' or 'max', got 'sum'"),
    (View(mode=1), ValueError, r"views\[0\].mode must be 'avg' or 'max', got 1"),
]


@pytest.mark.parametrize("view, error, message", BAD_VIEWS)
def test_view_fields_are_not_coerced(view, error, message):
    with pytest.raises(error, match="pool: " + message):
        pool(torch.randn(1, 4, 3, 3, 2), [view])


@pytest.mark.parametrize("good, bad", [(View(temporal=2), View(temporal=2.0)),
                                       (View(frames=(1, 2)), View(frames=(1.0, 2.0))),
                                       (View(frames=Uniform(2)), View(frames=Uniform(2.0))),
                                       (View(spatial=(1, 2)), View(spatial=(True, 2)))])
def test_checks_do_not_depend_on_the_cache(good, bad, cache):
    # bad == good and hash(bad) == hash(good): a cached plan must not let bad through.
    x = torch.randn(1, 4, 3, 3, 2)
    for _ in range(2):
        pool(x, [good])
        with pytest.raises(TypeError, match="must be an int"):
            pool(x, [bad])


def test_integer_like_fields_are_accepted():
    x = torch.randn(1, 6, 4, 4, 2)
    plain = pool(x, [View(frames=(3, 1), temporal=2, spatial=(2, 2))]).tokens
    for frames in ([3, 1], np.array([3, 1]), torch.tensor([3, 1]), (np.int64(3), 1)):
        view = View(frames=frames, temporal=np.int32(2), spatial=[2, np.int64(2)])
        assert_exact(pool(x, [view]).tokens, plain)
    assert_exact(pool(x, [View(frames=range(0, 6, 2))]).tokens,
                 pool(x, [View(frames=Stride(2))]).tokens)


@pytest.mark.parametrize("x, num_frames, shape, cu_seqlens", [
    (torch.randn(0, 6, 4, 4, 3), None, (0, 13, 3), [0]),        # B = 0: no videos
    (torch.randn(2, 0, 4, 4, 3), None, (2, 0, 3), [0, 0, 0]),   # T = 0: empty videos
    (torch.randn(6, 4, 4, 3), [0, 6, 0], (13, 3), [0, 0, 13, 13]),  # ragged, empty videos
    (torch.randn(0, 4, 4, 3), [], (0, 3), [0]),
    (torch.randn(1, 6, 4, 4, 0), None, (1, 13, 0), [0, 13]),    # D = 0
])
def test_empty_sizes_give_the_tokens_that_exist(x, num_frames, shape, cu_seqlens):
    views = [View(frames=Uniform(3), spatial=(2, 2), mode="max"), View(temporal="mean",
                                                                       spatial="mean"),
             View(frames=SegmentCentres(2), spatial=Adaptive(1, 1))]
    leaf = x.clone().requires_grad_()
    pooled = pool(leaf, views[:2], num_frames=num_frames)
    assert pooled.tokens.shape == shape and pooled.cu_seqlens.tolist() == cu_seqlens
    assert pooled.max_seqlen == max(np.diff(cu_seqlens), default=0)
    pooled.tokens.sum().backward()
    assert leaf.grad.shape == x.shape
    assert pool(x, views, num_frames=num_frames).tokens.shape[-1] == x.shape[-1]


def test_empty_grid():
    x = torch.randn(1, 3, 0, 4, 2)  # H = 0: nothing to copy or tile, nothing to average
    assert pool(x, [View(), View(spatial=(2, 2))]).tokens.shape == (1, 0, 2)
    for spatial in ("mean", Adaptive(1, 1)):
        with pytest.raises(ValueError, match=r"pool: views\[1\].spatial=.* reduces the H x W "
                                             r"grid, but x has an empty 0 x 4 grid"):
            pool(x, [View(), View(spatial=spatial)])


def test_metadata_is_the_callers_own(cache):
    x = torch.randn(2, 4, 4, 4, 3)
    views = [View(spatial=(2, 2)), View(temporal="mean", spatial="mean")]
    first = pool(x, views)
    expected = [first.cu_seqlens.clone(), first.frame_index.clone(), first.row.clone()]
    for field in (first.cu_seqlens, first.frame_index, first.row, first.col, first.view):
        field.fill_(99)  # in place, as a careless caller might
    assert first.frame_index.eq(99).all()  # the caller's own copy keeps the edit
    again = pool(x, views)  # served from the cache
    assert cache.info()["hits"] >= 1
    assert_exact([again.cu_seqlens, again.frame_index, again.row], expected)


def test_cache_is_bounded_in_bytes_and_can_be_cleared(cache):
    x = torch.randn(1, 8, 6, 6, 2)
    cache.max_bytes = 20_000
    for t in range(1, 9):  # eight different plans, ~4-6 KB each
        pool(x[:, :t], [View(), View(spatial=(2, 2))])
        info = cache.info()
        assert info["bytes"] <= 20_000 and info["max_bytes"] == 20_000
    assert 0 < info["entries"] < 8
    cache.clear()
    assert cache.info()["entries"] == 0 and cache.info()["bytes"] == 0
    cache.max_bytes = 0  # caching off: every call lowers again, results unchanged
    a, b = (pool(x, [View(spatial=(3, 3))]).tokens for _ in range(2))
    assert_exact(a, b)
    assert cache.info()["entries"] == 0
    with pytest.raises(ValueError, match=r"pool_cache\.max_bytes must be an int >= 0"):
        cache.max_bytes = -1


def test_merge_tokens():
    x = torch.arange(2 * 8 * 3).view(2, 8, 3)
    merged = merge_tokens(x, 4)
    assert merged.shape == (2, 2, 12) and merged[0, 1].tolist() == x[0, 4:8].flatten().tolist()
    with pytest.raises(ValueError, match=r"merge_tokens: the token dim of x \(2, 8, 3\) must be"):
        merge_tokens(x, 3)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(views=[]), ValueError, "pool: views must be a non-empty sequence"),
    (dict(views=View()), ValueError, "pool: views must be a non-empty sequence"),
    (dict(views="all"), ValueError, "pool: views must be a non-empty sequence"),
    (dict(views=[View(frames=(0, 9))]), ValueError, r"pool: views\[0\] selects frames \[0, 9\]"),
    (dict(views=[View(frames=SegmentCentres(8))]), ValueError, "selects frames .* outside"),
    (dict(views=[View(), {"frames": "all"}]), TypeError, r"pool: views\[1\] must be a View"),
    (dict(num_frames=[2, 2]), ValueError, "pool: num_frames is only for ragged x"),
    (dict(x=torch.randn(4, 3, 3, 2), num_frames=[1, 2]), ValueError,
     r"pool: num_frames \[1, 2\] sum to 3, but x has 4 frames"),
    (dict(x=torch.randn(4, 3, 3, 2), num_frames=[2.0, 2]), TypeError,
     "pool: num_frames must be an int"),
    (dict(x=torch.randn(4, 3, 3, 2), num_frames=torch.tensor([2.0, 2.0])), ValueError,
     "pool: num_frames as a tensor must be a 1-D integer CPU tensor"),
    (dict(x=torch.randn(1, 3, 3, 3, 2).int()), TypeError, "pool: x must have dtype in"),
    (dict(x=torch.randn(3, 3, 2)), ValueError, "pool: x must be 4-D or 5-D"),
    (dict(backend="triton"), ValueError, "pool: backend must be one of"),
])
def test_bad_input(kwargs, error, message):
    args = dict(x=torch.randn(2, 3, 3, 3, 2), views=[View()]) | kwargs
    with pytest.raises(error, match=message):
        pool(args.pop("x"), args.pop("views"), **args)
