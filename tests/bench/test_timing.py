"""The benchmark arithmetic, checked with a fake clock whose times are known, so a speedup that
is inverted, a timer that times nothing, or a spread taken from the wrong statistic fails."""
import itertools

import pytest
import torch
from vidcore.bench.harness import BenchCase, shapes, time_providers
from vidcore.bench.runner import time_case

from vidcore.ops import make_mask, pack


class FakeClock:
    """A clock that moves only when a provider says how long it took."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def take(self, seconds: float) -> None:
        self.now += seconds


def _pack_case(clock: FakeClock, nbytes: int) -> BenchCase:
    """reference takes 4, 5, 6 ms in turn (median 5, min 4); vidcore runs the real pack kernel
    and takes 1 ms every time."""
    x = torch.randn(1, 2, 2, 2, 4)
    mask = make_mask(2, (2, 2), 0.5, batch_size=1, seed=0)
    reference_ms = itertools.cycle([4e-3, 5e-3, 6e-3])

    def vidcore():
        pack(x, mask)
        clock.take(1e-3)

    fns = {"reference": lambda: clock.take(next(reference_ms)), "vidcore": vidcore}
    return BenchCase("pack", "fake", {}, lambda: fns, ("reference", "vidcore"), bytes=nbytes)


def test_known_times_give_known_speedups_spreads_and_bandwidth():
    clock = FakeClock()
    rows = {r["provider"]: r for r in time_case(_pack_case(clock, 10**6), "cpu", clock=clock,
                                                  copy=False)}
    reference, vidcore = rows["reference"], rows["vidcore"]
    assert reference["median_us"] == pytest.approx(5000) and reference["min_us"] == pytest.approx(4000)
    assert vidcore["median_us"] == pytest.approx(1000) and vidcore["min_us"] == pytest.approx(1000)
    assert vidcore["speedup"] == pytest.approx(5.0) and reference["speedup"] == pytest.approx(1.0)
    assert vidcore["gbps"] == pytest.approx(1.0) and reference["gbps"] == pytest.approx(0.2)
    assert vidcore["reps"] == reference["reps"] >= 5


def test_time_providers_takes_turns_until_min_time():
    clock, order = FakeClock(), []

    def provider(name):
        return lambda: (order.append(name), clock.take(0.01))

    timings = time_providers({"a": provider("a"), "b": provider("b")}, "cpu", clock=clock,
                             min_time_s=0.095, min_reps=3)
    assert order[:2] == ["a", "b"]  # one warm-up call each, then round-robin
    assert order[2:] == ["a", "b"] * timings["a"].reps and timings["a"].reps == 10


def test_a_clock_that_never_moves_is_an_error():
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="clock did not advance"):
        time_providers({"a": lambda: None}, "cpu", clock=clock)


def test_copy_column_is_a_copy_of_the_same_bytes():
    x = torch.randn(1, 4, 8, 8, 64)
    mask = make_mask(4, (8, 8), 0.5, batch_size=1, seed=0)
    case = BenchCase("pack", "real", {}, lambda: {"vidcore": lambda: pack(x, mask)},
                     ("vidcore",), bytes=2 * mask.total_kept * 64 * 4, baseline="vidcore")
    (row,) = time_case(case, "cpu")
    assert row["copy_gbps"] > 0
    assert row["fraction_of_copy"] == pytest.approx(row["gbps"] / row["copy_gbps"])
    assert row["dispatch"] == [{"op": "pack", "key": "CPU", "kernel": "C++"}]


def test_shapes_takes_named_sizes_or_overrides_defaults_by_name():
    table = {"tiny": [(1, 2)], "small": [(3, 4), (5, 6)]}
    dims = {"B": 8, "T": 16}
    assert shapes(table, "small", dims) == [(3, 4), (5, 6)]
    assert shapes(table, {"T": 99}, dims) == [(8, 99)]
