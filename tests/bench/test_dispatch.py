"""The dispatch check: a benchmark's vidcore provider is traced before it is timed, so a provider
that runs the reference, another op, or another device cannot pass for the kernel its row names."""
import inspect

import pytest
import torch
from vidcore.bench.dispatch import Dispatch, DispatchError, check_dispatch, trace_dispatch
from vidcore.bench.harness import BenchCase
from vidcore.bench.runner import available_ops, time_case

import vidcore.ops
from vidcore.ops import make_mask, mask_and_pack, pack, unit_keys


def _case(op: str, vidcore, kernel_ops=()) -> BenchCase:
    return BenchCase(op, "t", {}, lambda: {"vidcore": vidcore, "reference": vidcore},
                     ("reference", "vidcore"), kernel_ops=kernel_ops)


@pytest.fixture
def tokens():
    x = torch.randn(1, 2, 4, 4, 8)
    return x, make_mask(2, (4, 4), 0.5, batch_size=1, seed=0)


def test_trace_names_the_op_the_dispatch_key_and_the_kernel(tokens):
    x, mask = tokens
    assert trace_dispatch(lambda: pack(x, mask)) == [Dispatch("pack", "CPU", "C++")]
    fused = trace_dispatch(lambda: mask_and_pack(x, 0.5, seed=0))
    assert [d.op for d in fused] == ["mask_and_pack"]  # one fused op
    # a backward run through autograd is traced too
    xg = x.clone().requires_grad_()
    assert [d.op for d in trace_dispatch(lambda: pack(xg, mask).sum().backward())] == ["pack", "unpack"]


def test_ops_whose_tensors_come_in_lists_are_keyed_by_their_device():
    q = [torch.randn(1, 2, n, 4) for n in (3, 5)]
    traced = trace_dispatch(lambda: vidcore.ops.multi_source_attention(q, q, q))
    assert [(d.op, d.key) for d in traced] == [("multi_source_attention", "CPU")]


def test_a_provider_that_runs_the_reference_is_rejected(tokens):
    x, mask = tokens
    case = _case("pack", lambda: pack(x, mask, backend="torch"))
    with pytest.raises(DispatchError, match=r"never reached vidcore::pack \(it ran no vidcore op\)"):
        time_case(case, "cpu")


def test_a_provider_that_runs_another_op_is_rejected(tokens):
    x, mask = tokens
    with pytest.raises(DispatchError, match=r"never reached vidcore::pack \(it ran \['unit_keys'\]\)"):
        check_dispatch(_case("pack", lambda: unit_keys(0, 0, 16)), lambda: unit_keys(0, 0, 16), "cpu")
    # mask_and_pack must reach both of its kernels
    half = _case("mask_and_pack", lambda: pack(x, mask), kernel_ops=("make_mask", "pack"))
    with pytest.raises(DispatchError, match="never reached vidcore::make_mask"):
        check_dispatch(half, lambda: pack(x, mask), "cpu")


def test_a_provider_on_another_device_is_rejected(tokens):
    x, mask = tokens
    with pytest.raises(DispatchError, match=r"ran \['pack on CPU'\], not on the benchmark device cuda"):
        check_dispatch(_case("pack", None), lambda: pack(x, mask), "cuda")


def test_every_bench_module_registers_public_op_names():
    """`vidcore bench --ops` takes the names of vidcore.ops, and every case of a module is one of
    the ops it registers, so one op is one name from function to table."""
    public = {name for name in vidcore.ops.__all__ if inspect.isfunction(getattr(vidcore.ops, name))}
    ops = available_ops()
    assert {"unit_keys", "pack", "mask_and_pack", "pool", "attention",
            "merge_attention_states"} <= set(ops)
    assert set(ops) <= public, f"bench ops that are not public ops: {set(ops) - public}"
    for module in set(ops.values()):
        registered = {op for op, owner in ops.items() if owner is module}
        assert {case.op for case in module.cases("tiny", "cpu")} == registered, module.__name__
