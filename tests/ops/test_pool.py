"""vidcore.ops.pool kernels: the C++ twin (and CUDA) against the plan reference, forward and
backward; torch's max-pool rule for ties and NaN; bit-identical results for any CPU thread count;
gradcheck, opcheck, torch.compile. Independent oracles of every view kind live in
test_pool_oracle.py, View checks and empty sizes in test_pool_views.py, direct hostile calls in
test_pool_hostile.py, the seeds' layouts in test_pool_presets.py."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import Adaptive, Linspace, SegmentCentres, Stride, Uniform, View, pool
from vidcore.ops.pool_views import lower_views
from vidcore.testing import assert_close, assert_exact, opcheck

VIEWS = [
    View(),
    View(frames=Uniform(4), spatial=(2, 3), mode="max"),
    View(temporal=4, spatial=Adaptive(2, 3)),
    View(frames=SegmentCentres(3), spatial="mean"),
    View(temporal="mean", mode="max"),
    View(frames=(5, 0, 0), spatial=(4, 4)),
    View(spatial=Adaptive(4, 4), mode="max"),
    View(frames=Stride(2, 1), temporal=2, spatial=(2, 2), mode="max"),
]


def plan_for(views, num_frames, height, width, device="cpu"):
    plan, table, _, _ = lower_views(views, num_frames, height, width)
    return plan.to(device), table.to(device)


def with_ties_and_nans(shape, dtype=torch.float32, device="cpu"):
    x = torch.randint(0, 4, shape).to(dtype)
    x.view(-1)[torch.randperm(x.numel())[:5]] = float("nan")
    return x.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_twin_matches_plan_reference(dtype, device):
    x = torch.randn(13, 5, 7, 33, device=device).to(dtype)
    fast, ref = (pool(x, VIEWS, num_frames=[6, 7], backend=b).tokens for b in ("auto", "torch"))
    assert_close(fast.float(), ref.float(), dtype=dtype)
    is_max = lower_views(VIEWS, [6, 7], 5, 7)[0][:, 6] == 1
    assert_exact(fast[is_max], ref[is_max])  # a max is an input value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_backward_matches_reference_with_ties_and_nans(dtype, device):
    x = with_ties_and_nans((7, 5, 6, 10), dtype, device)
    plan, table = plan_for(VIEWS, [7], 5, 6, device)  # overlapping views meet in the gradient
    grad = torch.randn(plan.shape[0], 10, device=device).to(dtype)
    got = torch.ops.vidcore.pool_backward(grad, x, plan, table)
    expected = reference.pool_backward(grad, x, plan, table)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert_close(got.float(), expected.float(), dtype=dtype)


@pytest.mark.parametrize("values", [[1, 3, 3, 0], [1, "nan", 2, "nan"], ["nan", 5, 1, 1],
                                    [0.0, -0.0, 0.0, 0.0], ["-inf"] * 4])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_max_follows_torch_max_pool(values, backend):
    # torch: the first maximum in scan order takes the gradient; with NaNs, the last NaN.
    box = torch.tensor([float(v) for v in values], dtype=torch.float64).view(1, 1, 2, 2, 1)
    ours = box.clone().requires_grad_()
    out = pool(ours, [View(spatial=(2, 2), mode="max")], backend=backend).tokens
    out.backward(torch.ones_like(out))
    theirs = box.view(1, 1, 2, 2).clone().requires_grad_()
    expected = F.max_pool2d(theirs, 2)
    expected.backward(torch.ones_like(expected))
    assert_exact(out.view(-1), expected.view(-1))
    assert_exact(ours.grad.view(-1), theirs.grad.view(-1))


def test_reference_backward_sends_nan_maxima_their_gradient():
    # The test oracle itself: a box whose maximum is NaN passes g to its last NaN, not nowhere.
    x = torch.tensor([[1.0, float("nan")], [float("nan"), 0.0]]).view(1, 2, 2, 1)
    plan, table = plan_for([View(spatial="mean", mode="max")], [1], 2, 2)
    grad = reference.pool_backward(torch.full((1, 1), 5.0), x, plan, table)
    assert grad.view(-1).tolist() == [0.0, 0.0, 5.0, 0.0]


def test_bit_identical_for_any_thread_count():
    # 37 frames = 10 frame blocks in 4 fixed ranges: temporal means and kt windows cross range
    # bounds, explicit frames out of order and repeated make several runs within a block; past
    # four threads the twin splits channels too.
    x = torch.randn(37, 3, 4, 40)
    views = [View(temporal="mean"), View(temporal="mean", mode="max", spatial="mean"),
             View(frames=(6, 2, 2, 7, 0), temporal=2, spatial=(2, 2)), View(temporal=5),
             View(frames=Linspace(5), spatial=(1, 2), mode="max"), View(temporal=3)]
    previous, results = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3, 4, 6):
            torch.set_num_threads(threads)
            leaf = x.clone().requires_grad_()
            tokens = pool(leaf, views, num_frames=[29, 8]).tokens
            grad = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0))
            tokens.backward(grad)
            results.append((tokens.detach(), leaf.grad))
    finally:
        torch.set_num_threads(previous)
    for tokens, grad_x in results[1:]:
        assert_exact(tokens, results[0][0])
        assert_exact(grad_x, results[0][1])
    assert_close(results[0][0], pool(x, views, num_frames=[29, 8], backend="torch").tokens)


@given(frames=st.lists(st.integers(0, 4), min_size=1, max_size=3), h=st.integers(1, 5),
       w=st.integers(1, 5), dim=st.integers(1, 12), kh=st.integers(1, 3), kw=st.integers(1, 3),
       temporal=st.sampled_from([None, "mean", 2]), mode=st.sampled_from(["avg", "max"]),
       seed=st.integers(0, 2**16))
def test_property_twin_matches_reference(frames, h, w, dim, kh, kw, temporal, mode, seed):
    torch.manual_seed(seed)
    x = torch.randn(sum(frames), h, w, dim)
    views = [View(temporal=temporal, spatial=(kh, kw), mode=mode), View(spatial=Adaptive(2, 2))]
    fast, ref = (pool(x, views, num_frames=frames, backend=b).tokens for b in ("auto", "torch"))
    assert_close(fast, ref)
    plan, table = plan_for(views, frames, h, w)
    grad = torch.randn(plan.shape[0], dim)
    assert_close(torch.ops.vidcore.pool_backward(grad, x, plan, table),
                 reference.pool_backward(grad, x, plan, table))


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gradcheck(mode):
    x = torch.randn(2, 3, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    views = [View(spatial=(2, 3), mode=mode), View(frames=Uniform(2), temporal="mean", mode=mode)]
    assert torch.autograd.gradcheck(lambda x: pool(x, views).tokens, (x,))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    x = torch.randn(4, 3, 5, 6, device=device, requires_grad=requires_grad)
    plan, table = plan_for([View(spatial=(2, 2)), View(temporal=3, mode="max")], [4], 3, 5,
                           device)
    opcheck(torch.ops.vidcore.pool.default, (x, plan, table))


def test_opcheck_backward(device):
    x = torch.randn(4, 3, 5, 6, device=device)
    plan, table = plan_for([View(spatial=(2, 2)), View(temporal=3, mode="max")], [4], 3, 5,
                           device)
    grad = torch.randn(plan.shape[0], 6, device=device)
    opcheck(torch.ops.vidcore.pool_backward.default, (grad, x, plan, table))


def test_compile():
    x = torch.randn(2, 4, 4, 4, 8)
    views = [View(spatial=(2, 2)), View(temporal="mean")]

    def fn(x):
        pooled = pool(x, views)
        return pooled.tokens * 2, pooled.frame_index + 1, pooled.cu_seqlens

    compiled = torch.compile(fn, fullgraph=True)
    assert_exact(compiled(x), fn(x))


@pytest.mark.cuda_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels", [64, 100, 99])  # 16-byte vectors, 8-byte (16-bit types), 1
def test_cuda_kernels_match_cpu_twin(dtype, channels):
    # Forward: the same sums in another order (close); backward: a gather in the CPU twin's
    # order (bit-identical, and run to run).
    x = torch.randint(0, 4, (60, 12, 10, channels)).to(dtype)
    views = [*VIEWS, View(temporal=7, spatial=Adaptive(5, 3))]
    cpu = pool(x, views, num_frames=[20, 25, 15]).tokens
    gpu = pool(x.cuda(), views, num_frames=[20, 25, 15]).tokens
    assert_close(gpu.cpu().float(), cpu.float(), dtype=dtype)
    plan, table = plan_for(views, [20, 25, 15], 12, 10)
    x = with_ties_and_nans(x.shape, dtype)
    grad = torch.randn(plan.shape[0], channels).to(dtype)
    expected = torch.ops.vidcore.pool_backward(grad, x, plan, table)
    for _ in range(2):
        got = torch.ops.vidcore.pool_backward(grad.cuda(), x.cuda(), plan.cuda(), table.cuda())
        assert_exact(got.cpu(), expected)


@pytest.mark.cuda_ext
def test_cuda_device_assert_on_a_bad_plan():
    from vidcore.testing import run_isolated

    result = run_isolated("""
        import torch, vidcore
        x = torch.randn(4, 3, 5, 6, device="cuda")
        plan = torch.tensor([[0, 1, 0, 1, 0, 1, 0]], device="cuda")
        torch.ops.vidcore.pool(x, plan, torch.tensor([10**9], device="cuda"))
        torch.cuda.synchronize()
    """)
    assert result.returncode != 0 and "device-side assert" in result.stderr


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
