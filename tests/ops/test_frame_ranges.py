"""Builders of q_frame_range (vidcore.ops.frame_ranges): values written out by hand, and the
arguments they refuse."""
import pytest
import torch

from vidcore.ops import interleave_ranges, stage_ranges, window_ranges


def test_builders():
    assert stage_ranges([2, 1, 1], 7).tolist() == [[0, 2], [0, 2], [2, 4], [4, 7]]
    assert window_ranges([0, 3, 6], 1, 7).tolist() == [[0, 2], [2, 5], [5, 7]]
    assert window_ranges([2], 0, 3).tolist() == [[2, 3]]
    assert interleave_ranges([2, 0, 1]).tolist() == [[0, 1], [0, 1], [2, 3]]
    assert stage_ranges([], 4).shape == (0, 2) and stage_ranges([1], 4).dtype == torch.int32
    assert window_ranges([], 2, 0).shape == (0, 2) and interleave_ranges([]).shape == (0, 2)


@pytest.mark.parametrize("call, error, message", [
    (lambda: window_ranges([0], -1, 3), ValueError, "window_ranges: window must be >= 0, got -1"),
    (lambda: window_ranges([0, -1], 1, 3), ValueError,
     r"window_ranges: query_frames\[1\] must be >= 0, got -1"),
    (lambda: window_ranges([3], 1, 3), ValueError,
     r"window_ranges: query_frames\[0\] must be < 3, got 3"),
    (lambda: window_ranges([1.0], 1, 3), TypeError,
     r"window_ranges: query_frames\[0\] must be an int"),
    (lambda: interleave_ranges([1, -2]), ValueError,
     r"interleave_ranges: tokens_per_subtitle\[1\] must be >= 0, got -2"),
    (lambda: stage_ranges([1], -1), ValueError, "stage_ranges: num_frames must be >= 0"),
])
def test_bad_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()
