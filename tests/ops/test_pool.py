"""vidcore.ops.pool: every view kind against PyTorch's pooling functions, the CPU twin against
the plan reference, ragged batches, gradients."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import Adaptive, SegmentCentres, Uniform, View, merge_tokens, pool
from vidcore.ops.pool_views import lower_views, select_frames
from vidcore.testing import assert_close, assert_exact, opcheck

VIEWS = [
    pytest.param(View(), id="copy"),
    pytest.param(View(frames=Uniform(4), spatial=(2, 3), mode="max"), id="uniform-2x3-max"),
    pytest.param(View(temporal=4, spatial=Adaptive(2, 3)), id="kt4-adaptive"),
    pytest.param(View(frames=SegmentCentres(3), spatial="mean"), id="centres-spatial-mean"),
    pytest.param(View(temporal="mean", mode="max"), id="temporal-max"),
    pytest.param(View(frames=(5, 0, 0), spatial=(4, 4)), id="explicit-border-windows"),
    pytest.param(View(spatial=Adaptive(4, 4), mode="max"), id="adaptive-max-upsampling-rows"),
]


def spec(x: torch.Tensor, views, num_frames) -> torch.Tensor:
    """The views computed one by one with reference.pool_view (F.avg_pool2d & co)."""
    pieces, start = [], 0
    for t in num_frames:
        for view in views:
            frames = select_frames(view.frames, t)
            pieces.append(reference.pool_view(x[start:start + t], frames, view.temporal,
                                              view.spatial, view.mode))
        start += t
    return torch.cat(pieces)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("view", VIEWS)
def test_view_matches_pytorch_pooling(view, dtype, device):
    x = torch.randn(2, 6, 5, 7, 9, device=device).to(dtype)
    pooled = pool(x, [view])
    expected = spec(x.flatten(0, 1), [view], [6, 6])
    if view.mode == "max" or (view.temporal is None and view.spatial is None):
        assert_exact(pooled.tokens.flatten(0, 1), expected)  # max and copies are exact
    else:
        assert_close(pooled.tokens.flatten(0, 1).float(), expected.float(), dtype=dtype)


def test_cpu_twin_matches_plan_reference_max_bitwise():
    x = torch.randn(13, 5, 7, 33)
    views = [v.values[0] for v in VIEWS]
    fast, ref = (pool(x, views, num_frames=[6, 7], backend=b).tokens for b in ("auto", "torch"))
    assert_close(fast, ref)
    is_max = lower_views(views, [6, 7], 5, 7)[0][:, 6] == 1
    assert_exact(fast[is_max], ref[is_max])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_twin_schedule_any_thread_count(threads):
    # The C++ twin splits frame blocks into per-thread ranges and combines the partials of tokens
    # that cross ranges; explicit frames out of order and repeated make runs within a block;
    # back-to-back temporal means must not be coalesced into one span across views.
    x = torch.randn(37, 3, 4, 40)
    views = [View(temporal="mean"), View(temporal="mean"),
             View(temporal="mean", mode="max", spatial="mean"),
             View(frames=(6, 2, 2, 7, 0), temporal=2, spatial=(2, 2)),
             View(frames=Uniform(5), spatial=(1, 2), mode="max"), View(temporal=3)]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = pool(x, views, num_frames=[29, 8]).tokens
    finally:
        torch.set_num_threads(previous)
    ref = pool(x, views, num_frames=[29, 8], backend="torch").tokens
    assert_close(fast, ref)
    is_max = lower_views(views, [29, 8], 3, 4)[0][:, 6] == 1
    assert_exact(fast[is_max], ref[is_max])


def test_ragged_batch_metadata():
    x = torch.randn(5, 4, 4, 8)
    views = [View(spatial=(2, 2)), View(temporal="mean", spatial="mean")]
    pooled = pool(x, views, num_frames=[3, 2])
    assert pooled.cu_seqlens.tolist() == [0, 13, 22] and pooled.max_seqlen == 13
    assert pooled.tokens.shape == (22, 8)
    assert pooled.view.tolist() == [0] * 12 + [1] + [0] * 8 + [1]
    assert pooled.frame_index[:12].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert pooled.row[:4].tolist() == [0, 0, 1, 1] and pooled.col[:4].tolist() == [0, 1, 0, 1]
    assert_close(pooled.tokens, spec(x, views, [3, 2]))


def test_frame_selection_matches_the_seeds():
    import numpy as np

    for t in range(1, 70):
        for n in (1, 4, 10, 16):
            assert select_frames(Uniform(n), t) == np.linspace(0, t, n + 1).astype(int)[:-1].tolist()
            seg = t / n
            assert select_frames(SegmentCentres(n), t) == [int(seg / 2 + round(seg * i))
                                                           for i in range(n)]


@given(frames=st.lists(st.integers(1, 4), min_size=1, max_size=3), h=st.integers(1, 5),
       w=st.integers(1, 5), dim=st.integers(1, 12), kh=st.integers(1, 3), kw=st.integers(1, 3),
       temporal=st.sampled_from([None, "mean", 2]), mode=st.sampled_from(["avg", "max"]),
       seed=st.integers(0, 2**16))
def test_property_matches_pytorch_pooling(frames, h, w, dim, kh, kw, temporal, mode, seed):
    torch.manual_seed(seed)
    x = torch.randn(sum(frames), h, w, dim)
    views = [View(temporal=temporal, spatial=(kh, kw), mode=mode), View(spatial=Adaptive(2, 2))]
    assert_close(pool(x, views, num_frames=frames).tokens, spec(x, views, frames))


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gradcheck(mode):
    x = torch.randn(2, 3, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    views = [View(spatial=(2, 3), mode=mode), View(frames=Uniform(2), temporal="mean", mode=mode)]
    assert torch.autograd.gradcheck(lambda x: pool(x, views).tokens, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_kernel_matches_reference(dtype, device):
    x = torch.randn(7, 5, 6, 10, device=device).to(dtype)
    x[0, :2, :2] = 1.0  # ties inside a max window
    views = [v.values[0] for v in VIEWS]  # overlapping views meet in the gradient
    plan, table, _, _ = lower_views(views, [7], 5, 6)
    plan, table = plan.to(device), table.to(device)
    grad = torch.randn(plan.shape[0], 10, device=device).to(dtype)
    got = torch.ops.vidcore.pool_backward(grad, x, plan, table)
    assert_close(got.float(), reference.pool_backward(grad, x, plan, table).float(), dtype=dtype)


def test_max_gradient_goes_to_the_first_maximum_like_torch():
    x = torch.zeros(1, 1, 2, 4, 1, requires_grad=True)  # all ties
    pool(x, [View(spatial=(2, 2), mode="max")]).tokens.sum().backward()
    expected = torch.zeros(1, 1, 4, 2, requires_grad=True)
    torch.nn.functional.max_pool2d(expected.view(1, 1, 2, 4), 2).sum().backward()
    assert_exact(x.grad.view(2, 4), expected.grad.view(2, 4))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    x = torch.randn(4, 3, 5, 6, device=device, requires_grad=requires_grad)
    plan, table, _, _ = lower_views([View(spatial=(2, 2)), View(temporal=3, mode="max")],
                                    [4], 3, 5)
    opcheck(torch.ops.vidcore.pool.default, (x, plan.to(device), table.to(device)))


def test_compile():
    x = torch.randn(2, 4, 4, 4, 8)
    views = [View(spatial=(2, 2)), View(temporal="mean")]
    compiled = torch.compile(lambda x: pool(x, views).tokens * 2, fullgraph=True)
    assert_close(compiled(x), pool(x, views).tokens * 2)


def test_list_valued_views_are_accepted():
    x = torch.randn(1, 4, 4, 4, 2)
    listed = pool(x, [View(frames=[3, 1], spatial=[2, 2])]).tokens
    assert_exact(listed, pool(x, [View(frames=(3, 1), spatial=(2, 2))]).tokens)


def test_merge_tokens():
    x = torch.arange(2 * 8 * 3).view(2, 8, 3)
    merged = merge_tokens(x, 4)
    assert merged.shape == (2, 2, 12) and merged[0, 1].tolist() == x[0, 4:8].flatten().tolist()
    with pytest.raises(ValueError, match=r"merge_tokens: the token dim of x \(2, 8, 3\) must be"):
        merge_tokens(x, 3)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(views=[]), ValueError, "pool: views must be a non-empty sequence"),
    (dict(views=[View(spatial=(0, 2))]), ValueError, r"pool: views\[0\].spatial must be >= 1"),
    (dict(views=[View(temporal=0)]), ValueError, r"pool: views\[0\].temporal must be >= 1"),
    (dict(views=[View(mode="sum")]), ValueError, r"pool: views\[0\].mode must be 'avg' or 'max'"),
    (dict(views=[View(frames=(0, 9))]), ValueError, r"pool: views\[0\] selects frames \[0, 9\]"),
    (dict(views=[View(frames=SegmentCentres(8))]), ValueError, "selects frames .* outside"),
    (dict(views=[View(spatial=Adaptive(0, 1))]), ValueError, r"views\[0\].spatial.h must be"),
    (dict(views=[View(), {"frames": "all"}]), TypeError, r"pool: views\[1\] must be a View"),
    (dict(num_frames=[2, 2]), ValueError, "pool: num_frames is only for ragged x"),
    (dict(x=torch.randn(4, 3, 3, 2), num_frames=[1, 2]), ValueError,
     r"pool: num_frames \[1, 2\] sum to 3, but x has 4 frames"),
    (dict(x=torch.randn(1, 3, 3, 3, 2).int()), TypeError, "pool: x must have dtype in"),
])
def test_bad_input(kwargs, error, message):
    args = dict(x=torch.randn(2, 3, 3, 3, 2), views=[View()]) | kwargs
    with pytest.raises(error, match=message):
        pool(args.pop("x"), args.pop("views"), **args)


@pytest.mark.cuda_ext
def test_cuda_kernel_matches_cpu_twin():
    x = torch.randn(3, 50, 24, 24, 64).bfloat16()
    views = [v.values[0] for v in VIEWS]
    cpu = pool(x, views).tokens
    assert_close(pool(x.cuda(), views).tokens.cpu().float(), cpu.float(), dtype=torch.bfloat16)
    grads = []  # backward: fp32 atomics on CUDA vs channel slices on CPU
    for device in ("cpu", "cuda"):
        leaf = x.to(device).requires_grad_()
        pool(leaf, views).tokens.float().square().sum().backward()
        grads.append(leaf.grad.cpu().float())
    assert_close(grads[1], grads[0], dtype=torch.bfloat16)


@pytest.mark.gpu
def test_cuda_graph_capture_presets():
    # Plans are cached per (views, frames, grid, device): after a warm-up call a preset issues no
    # host-to-device copy and no sync, so it can be captured and replayed on new inputs.
    from vidcore.ops import slowfast, video_chatgpt

    x = torch.randn(2, 12, 8, 8, 64, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        slowfast(x), video_chatgpt(x)  # warm-up: builds and caches the plans
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            tokens = torch.cat([slowfast(x), video_chatgpt(x)], 1)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    expected = torch.cat([slowfast(x), video_chatgpt(x)], 1)
    assert_exact(tokens, expected)
