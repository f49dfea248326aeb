"""Direct torch.ops.vidcore.pool / pool_backward calls with hostile plans (compiled graphs, export
and other frontends call the ops without vidcore's lowering). Each must raise a RuntimeError
naming the op and the argument, never crash (SIGSEGV, std::bad_alloc) or return garbage (NaN,
9.7e16). Indices that were dereferenced unchecked run in a subprocess, so a crash fails the test
instead of killing it (one interpreter each: seconds apiece, so only those); the other cases run
in process. The same plans go to the reference, the default implementation wherever no C++
kernel is registered."""
import re

import pytest
import torch

from vidcore import reference
from vidcore.testing import assert_raises_cleanly

X = "torch.randn(4, 3, 5, 6)"  # 4 frames of a 3 x 5 grid, D = 6
TABLE = "torch.tensor([0, 1, 2, 3])"


def plan(*rows) -> str:
    return f"torch.tensor({list(map(list, rows))}, dtype=torch.int64)"


ROW = (0, 1, 0, 1, 0, 1, 0)  # frame slot 0, grid cell (0, 0), mean
CASES = [  # (op, arguments, what the message must say); the first seven read out of bounds once
    ("pool", f"{X}, {plan(ROW)}, torch.tensor([10**9])",
     "pool: frame_table[0] = 1000000000 is outside x's 4 frames"),
    ("pool", f"{X}, {plan(ROW)}, torch.tensor([-1])", "pool: frame_table[0] = -1 is outside"),
    ("pool", f"{X}, {plan((0, 9, 0, 1, 0, 1, 0))}, {TABLE}",
     "pool: plan[0] = [0, 9, 0, 1, 0, 1, 0]: its frame slice"),
    ("pool", f"{X}, {plan((2**40, 2**40 + 1, 0, 1, 0, 1, 0))}, {TABLE}",
     "pool: plan[0] = [1099511627776, 1099511627777"),
    ("pool", f"{X}, {plan(ROW, (0, 1, 2, 4, 0, 1, 0))}, {TABLE}",  # rows past the grid
     "pool: plan[1] = [0, 1, 2, 4, 0, 1, 0]: its rows [r0, r1) must satisfy 0 <= r0 < r1 <= H"),
    ("pool", f"{X}, {plan((0, 1, 0, 1, -1, 1, 0))}, {TABLE}", "pool: plan[0] = [0, 1, 0, 1, -1"),
    ("pool", f"{X}, {plan((0, 1, 0, 1, 0, 1, 2))}, {TABLE}",  # an unknown mode is not a mean
     "its mode must be 0 (avg) or 1 (max)"),
    ("pool", f"{X}, {plan((1, 2, 0, 1, 0, 1, 0), ROW)}, {TABLE}", "pool: plan[1] = [0, 1, 0, 1, 0"
     ", 1, 0]: rows must come in frame-slice order"),
    ("pool", f"{X}, {plan((0, 1, 1, 2, 0, 1, 0), ROW)}, {TABLE}",
     "windows sharing a frame slice must not go back"),
    ("pool", f"torch.empty(1, 2**20, 2**20, 0), {plan((0, 1, 0, 2**20, 0, 2**20, 0))}, "
     "torch.tensor([0])", "its box must hold fewer than 2^31 cells"),
    ("pool", f"{X}, {plan(ROW)}, {TABLE}.int()", "pool: frame_table must be a contiguous int64"),
    ("pool", f"{X}, {plan(ROW)}.int(), {TABLE}", "pool: plan must be a contiguous int64 [L, 7]"),
    ("pool", f"{X}, {plan(ROW)}[:, :6], {TABLE}", "pool: plan must be a contiguous int64 [L, 7]"),
    ("pool_backward", f"torch.randn(1, 6), {X}, {plan(ROW)}, torch.tensor([10**9])",
     "pool_backward: frame_table[0] = 1000000000 is outside x's 4 frames"),
    ("pool_backward", f"torch.randn(1, 6), {X}, {plan((0, 1, 0, 1, 3, 9, 1))}, {TABLE}",
     "pool_backward: plan[0] = [0, 1, 0, 1, 3, 9, 1]: its columns"),
    ("pool_backward", f"torch.randn(2, 6), {X}, {plan(ROW)}, {TABLE}",
     "pool_backward: grad must be a contiguous Float [1, 6]"),
]


OUT_OF_BOUNDS = [CASES[i] for i in (0, 2, 3, 4, 6, 13, 14)]


@pytest.mark.parametrize("op, args, message", OUT_OF_BOUNDS)
def test_out_of_bounds_call_raises_cleanly(op, args, message):
    name, text = assert_raises_cleanly(f"torch.ops.vidcore.{op}({args})", match=message)
    assert name == "RuntimeError", text


@pytest.mark.parametrize("op, args, message", [c for c in CASES if c not in OUT_OF_BOUNDS])
def test_direct_call_raises(op, args, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        getattr(torch.ops.vidcore, op)(*eval(args, {"torch": torch}))


@pytest.mark.parametrize("op, args, message", CASES)
def test_reference_rejects_the_same_plans(op, args, message):
    call = getattr(reference, op)
    with pytest.raises(RuntimeError, match=op + ": "):
        call(*eval(args, {"torch": torch}))
