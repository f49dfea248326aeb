"""vidcore.ops.unit_keys: bit-identical on the reference, the CPU twin and (on a GPU) CUDA."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vidcore import reference
from vidcore.ops import unit_keys
from vidcore.testing import assert_exact, opcheck

M32 = 0xFFFFFFFF


def py_lowbias32(x: int) -> int:
    """An independent transcription of lowbias32 with Python ints (the oracle of the oracle)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def py_key(seed: int, b: int, u: int) -> int:
    return py_lowbias32(py_lowbias32(py_lowbias32((seed & M32) ^ 0x9E3779B9) ^ (b & M32)) ^ u)


def test_reference_semantics():
    assert py_lowbias32(0) == 0
    seed, videos = 2**40 + 12345, [0, 3, 2**33 + 1]
    keys = unit_keys(seed, videos, 7, backend="torch")
    expected = [[py_key(seed, b, u) for u in range(7)] for b in videos]
    assert keys.tolist() == expected
    assert keys.dtype == torch.int64 and keys.min() >= 0 and keys.max() <= M32


@pytest.mark.parametrize("case", [
    pytest.param((0, [0], 0), id="zero-units"),
    pytest.param((7, [], 5), id="zero-videos"),
    pytest.param((1, [5], 1), id="one-unit"),
    pytest.param((2**32 - 1, [0, 1, 2], 1000), id="max-seed"),
    pytest.param((42, [0, 1], 2**21 + 3), id="long-video-2M-units"),
])
def test_op_matches_reference(device, case):
    seed, videos, num_units = case
    index = torch.tensor(videos, dtype=torch.int64, device=device)
    keys = unit_keys(seed, index, num_units)
    assert keys.device.type == device
    assert_exact(keys.cpu(), reference.unit_keys(index.cpu(), seed, num_units))


@given(seed=st.integers(-(2**63), 2**64), videos=st.lists(st.integers(0, 2**40), max_size=4),
       num_units=st.integers(0, 300))
def test_fast_matches_reference_property(seed, videos, num_units):
    assert_exact(unit_keys(seed, videos, num_units), unit_keys(seed, videos, num_units,
                                                               backend="torch"))


def test_single_video_returns_1d():
    assert unit_keys(3, 2, 9).shape == (9,)
    assert_exact(unit_keys(3, 2, 9), unit_keys(3, [2], 9)[0])


def test_dispatches_to_cpu_twin():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("vidcore::unit_keys", "CPU")


def test_opcheck(device):
    index = torch.tensor([0, 4, 9], device=device)
    opcheck(torch.ops.vidcore.unit_keys.default, (index, 11, 37))


def test_compile():
    def two_videos(index: torch.Tensor) -> torch.Tensor:
        return torch.ops.vidcore.unit_keys(index, 5, 16) ^ torch.ops.vidcore.unit_keys(index, 6, 16)

    index = torch.arange(3)
    compiled = torch.compile(two_videos, fullgraph=True)
    assert_exact(compiled(index), two_videos(index))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_units=-1), ValueError, "unit_keys: num_units must be >= 0, got -1"),
    (dict(num_units=2**32), ValueError, "unit_keys: num_units must be < 4294967296"),
    (dict(num_units=2.0), TypeError, "unit_keys: num_units must be an int, got float"),
    (dict(seed=1.5), TypeError, "unit_keys: seed must be an int, got float"),
    (dict(video_index=-2), ValueError, "unit_keys: video_index must be >= 0, got -2"),
    (dict(video_index=torch.zeros(2, 2, dtype=torch.int64)), ValueError,
     r"unit_keys: video_index must be 1-D, got shape \(2, 2\)"),
    (dict(video_index=torch.zeros(2)), TypeError, "unit_keys: video_index must have dtype in"),
    (dict(backend="cuda"), ValueError, "unit_keys: backend must be one of"),
])
def test_bad_input(kwargs, error, message):
    args = dict(seed=0, video_index=0, num_units=4) | kwargs
    with pytest.raises(error, match=message):
        unit_keys(args.pop("seed"), args.pop("video_index"), args.pop("num_units"), **args)


@pytest.mark.cuda_ext
def test_cuda_kernel_matches_cpu_twin():
    index = torch.arange(100, dtype=torch.int64)
    assert_exact(unit_keys(9, index.cuda(), 70_001).cpu(), unit_keys(9, index, 70_001))
