"""What the Triton launchers ask for, checked on CPU: the device guard (with a mocked CUDA
device), grid shapes (recorded launches, nothing run), the backward's extra memory, and the
order in which programs take work (the first wave, run alone in the interpreter)."""
import contextlib
import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from vidcore.kernels import _launch
from vidcore.kernels._launch import check_grid, launch, record_launches
from vidcore.kernels.attention import attention_fwd
from vidcore.kernels.attention_backward import attention_bwd
from vidcore.kernels.merge_attention_states import (
    merge_attention_states_bwd,
    merge_attention_states_fwd,
)

KERNELS = Path(_launch.__file__).parent
# The interpreter's 16-row tiles make the order of work visible in a small case.
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(),
                                      reason="runs the Triton interpreter's 16-row tiles on CPU")


def packed(lens_q, lens_k, heads_q=2, heads_kv=1, dim=16, dtype=torch.float32):
    q = torch.randn(sum(lens_q), heads_q, dim, dtype=dtype)
    k, v = (torch.randn(sum(lens_k), heads_kv, dim, dtype=dtype) for _ in range(2))
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, (cu_q, cu_k, max(lens_q), max(lens_k))


def test_launch_runs_the_kernel_with_the_inputs_device_current(monkeypatch):
    current = []

    @contextlib.contextmanager
    def fake_cuda_device(device):
        current.append(device)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", fake_cuda_device)
    seen = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((grid, args, kwargs, list(current)))

    launch(Kernel(), (7,), "x", device=torch.device("cuda", 1), BLOCK=4)
    assert seen == [((7,), ("x",), {"BLOCK": 4}, [torch.device("cuda", 1)])]
    assert current == []


def test_every_kernel_launch_goes_through_launch():
    direct = [f"{p.name}: {m.group(0)}" for p in KERNELS.glob("*.py") if p.name != "_launch.py"
              for m in re.finditer(r"\b\w+_kernel\[[^\]]*\]\(", p.read_text())]
    assert not direct, f"launch these with vidcore.kernels._launch.launch: {direct}"


def record_all(batch: int):
    """Every launch of the four launchers on `batch` one-token sequences."""
    q, k, v, args = packed([1] * batch, [1] * batch)
    mask = (False, 0.25, 0, None, -1, -1, 0.0)
    out, lse = torch.randn_like(q), torch.randn(q.shape[1], q.shape[0])
    states = (torch.randn(batch, 1, 2, 16), torch.randn(batch, 2, 1))
    with record_launches() as launches:
        attention_fwd(q, k, v, *args, *mask)
        attention_bwd(torch.randn_like(q), q, k, v, out, lse, *args, *mask, None)
        merge_attention_states_fwd(*states, *states)
        merge_attention_states_bwd(*states, *states, *states)
    return launches


def test_more_sequences_than_a_grid_axis_1_holds():
    # 70000 sequences (CUDA's grid axes 1 and 2 stop at 65535): everything on axis 0.
    launches = record_all(70000)
    names = [rec.kernel.fn.__name__ if hasattr(rec.kernel, "fn") else rec.kernel.__name__
             for rec in launches]
    assert names == ["_attention_fwd_kernel", "_attention_bwd_delta_kernel",
                     "_attention_bwd_kernel", "_attention_bwd_dq_kernel",
                     "_merge_attention_states_fwd_kernel", "_merge_attention_states_bwd_kernel"]
    # 16-row blocks, 2 query heads, 1 key/value head; the delta and dq passes: 64-row blocks
    expected = [70000 * 2, 2188, 70000, 2188, 70000 * 2, 70000 * 2]
    grids = [rec.grid_for({"BLOCK_M": 16, "BLOCK_N": 16}) for rec in launches]
    assert grids == [(n,) for n in expected]
    assert all(rec.device == torch.device("cpu") for rec in launches)  # the inputs' device


def test_grid_beyond_cuda_limit_is_refused():
    assert check_grid("attention", 2**31 - 1) == 2**31 - 1
    with pytest.raises(ValueError, match="attention: 2147483648 programs exceed"):
        check_grid("attention", 2**31)
    assert check_grid("multi_source_attention", 65535, axis=1) == 65535  # axes 1 and 2: 65535
    with pytest.raises(ValueError, match=r"multi_source_attention: 65536 programs exceed .* axis 1"):
        check_grid("multi_source_attention", 65536, axis=1)


class _Allocations(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.created = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for t in result if isinstance(result, tuple | list) else [result]:
            if isinstance(t, torch.Tensor):
                self.created.append((str(func), t.dtype, tuple(t.shape)))
        return result


def test_backward_memory_is_delta_and_one_dq_accumulator():
    q, k, v, args = packed([30, 50], [40, 20], heads_q=4, heads_kv=2, dim=64, dtype=torch.float16)
    out, lse = torch.randn_like(q), torch.randn(4, 80)
    with record_launches() as launches, _Allocations() as allocations:
        attention_bwd(torch.randn_like(q), q, k, v, out, lse, *args, True, 0.125, 0, None, -1, -1,
                      0.0, torch.randn(4, 80))
    # delta = rowsum(dO * O) takes no float32 copy of dO or O; the only q-sized float32 buffer
    # is the dQ accumulator of the five-GEMM scheme (flash-attention's dq_accum).
    big_fp32 = [a for a in allocations.created if a[1] == torch.float32
                and math.prod(a[2]) >= q.numel()]
    assert big_fp32 == [("aten.zeros.default", torch.float32, tuple(q.shape))]
    assert launches[1].args[8].shape == q.shape  # the dQ accumulator the main kernel adds to
    delta = launches[0].args[3]
    assert launches[0].kernel.fn.__name__ == "_attention_bwd_delta_kernel"
    assert delta.dtype == torch.float32 and delta.shape == (4, 80)
    assert delta is launches[1].args[5]  # the main kernel reads it


def run_first_programs(rec, programs: int) -> None:
    rec.kernel[(programs,)](*rec.args, **rec.kwargs)


@interpreter_only
@pytest.mark.parametrize("causal", [True, False])
def test_first_wave_takes_each_sequences_last_query_block(causal):
    # Under a causal mask the last query block sees the most keys: the first batch x heads
    # programs must compute exactly those (16-row blocks in the interpreter).
    q, k, v, args = packed([40, 20], [40, 50])
    with record_launches() as launches:
        attention_fwd(q, k, v, *args, causal, 0.25, 0, None, -1, -1, 0.0)
    (rec,) = launches
    out = rec.args[3].fill_(math.nan)
    run_first_programs(rec, programs=2 * 2)  # 2 sequences x 2 heads
    written = ~out.reshape(60, -1).isnan().all(-1)
    expected = torch.zeros(60, dtype=torch.bool)
    expected[32:40] = expected[56:60] = True
    assert torch.equal(written, expected)


@interpreter_only
def test_backward_first_wave_takes_each_sequences_first_key_block():
    # dK/dV: key block 0 is seen by the most queries under a causal mask: it goes first.
    q, k, v, args = packed([40, 20], [40, 50])
    out, lse = attention_fwd(q, k, v, *args, True, 0.25, 0, None, -1, -1, 0.0)
    with record_launches() as launches:
        attention_bwd(torch.randn_like(q), q, k, v, out, lse, *args, True, 0.25, 0, None, -1, -1,
                      0.0, None)
    delta, dkdv, _ = launches
    delta.kernel[delta.grid](*delta.args, **delta.kwargs)  # the main kernel reads delta
    dk = dkdv.args[6].fill_(math.nan)
    run_first_programs(dkdv, programs=2 * 1)  # 2 sequences x 1 key/value head
    written = ~dk.reshape(90, -1).isnan().all(-1)
    expected = torch.zeros(90, dtype=torch.bool)
    expected[0:16] = expected[40:56] = True
    assert torch.equal(written, expected)


def test_autotuning_reruns_start_from_zeroed_accumulators():
    # The backward adds into its dQ buffer and counts turns in its locks: every benchmark run of
    # the autotuner must start from zeros, or it would double-count dQ and wait forever on a
    # lock left at the previous run's count.
    from vidcore.kernels.attention_backward import _attention_bwd_kernel

    q, k, v, args = packed([30], [40])
    with record_launches() as launches:
        attention_bwd(torch.randn_like(q), q, k, v, torch.randn_like(q), torch.randn(2, 30),
                      *args, True, 0.25, 0, None, -1, -1, 0.0, None)
    main = launches[1]
    assert main.kernel is _attention_bwd_kernel
    named = dict(zip(main.kernel.arg_names, main.args, strict=False))
    assert _attention_bwd_kernel.reset_to_zero == ["dq_acc_ptr", "lock_ptr"]
    assert all(not named[name].any() for name in _attention_bwd_kernel.reset_to_zero)
