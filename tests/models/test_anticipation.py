"""The anticipation protocol on hand-computed cases: MoC counting and windows, targets,
decoding of query outputs to frame labels."""
import math

import pytest
import torch

from vidcore.models.anticipation import (
    anticipation_accuracy,
    anticipation_counts,
    anticipation_targets,
    decode_anticipation,
    mean_over_classes,
    repeat_last_action,
)


def labels(*runs):
    """labels((0, 3), (1, 2)) -> [0, 0, 0, 1, 1]."""
    return torch.tensor([c for c, n in runs for _ in range(n)])


def test_counts_score_the_window_after_the_observation():
    truth = labels((0, 3), (1, 4), (2, 3))  # N = 10
    guess = torch.tensor([1, 1, 2, 2, 2])  # frames 3..7 (obs 0.3, the next 50%)
    right, scored = anticipation_counts(truth, guess, 0.3, 0.3, 3)
    # frames 3, 4, 5 (int(0.3 * 10) .. int(0.6 * 10)): truth 1, 1, 1; guess 1, 1, 2
    assert right.tolist() == [0, 2, 0] and scored.tolist() == [0, 3, 0]
    right, scored = anticipation_counts(truth, guess, 0.3, 0.5, 3)
    # frames 3..7: truth 1 1 1 1 2, guess 1 1 2 2 2
    assert right.tolist() == [0, 2, 1] and scored.tolist() == [0, 4, 1]


def test_counts_stop_where_the_prediction_ends():
    truth = labels((0, 10))
    right, scored = anticipation_counts(truth, torch.tensor([0, 0]), 0.2, 0.5, 2)
    assert right.tolist() == [2, 0] and scored.tolist() == [2, 0]  # not 5 scored frames


def test_mean_over_classes_skips_absent_classes():
    right, scored = torch.tensor([1, 0, 3]), torch.tensor([2, 0, 4])
    assert mean_over_classes(right, scored) == pytest.approx((0.5 + 0.75) / 2)
    assert math.isnan(mean_over_classes(torch.zeros(3), torch.zeros(3)))


def test_accuracy_pools_frames_over_videos_before_averaging_classes():
    """Class 0: 1 of 1 right in video a, 0 of 3 right in video b -> 1/4, not mean(1, 0)."""
    a = (labels((0, 2), (0, 1), (1, 7)), torch.tensor([0, 1, 1, 1, 1]))
    b = (labels((1, 2), (0, 8)), torch.tensor([1, 1, 1, 1, 1]))
    scores = anticipation_accuracy([a, b], 0.2, 2, predictions=(0.1, 0.3))
    # p = 0.1: frames 2..2 -> a: class 0 right; b: class 0 wrong  -> class 0: 1/2
    assert scores[0.1] == pytest.approx(0.5)
    # p = 0.3: frames 2..4 (int(0.5 * 10) = 5): a: 0 right, 1 1 right; b: 0 0 0 wrong
    assert scores[0.3] == pytest.approx((1 / 4 + 2 / 2) / 2)


def test_none_prediction_is_never_right():
    truth = labels((0, 4), (1, 6))
    right, scored = anticipation_counts(truth, torch.full((5,), 2), 0.3, 0.5, 2)
    assert right.sum() == 0 and scored.tolist() == [1, 4]


def test_repeat_last_action():
    assert repeat_last_action(labels((3, 2), (5, 2)), 3, 4).tolist() == [5, 5, 5, 5]


def test_targets_are_the_transcript_then_none_then_padding():
    truth = labels((0, 3), (1, 2), (2, 3), (0, 2))  # N = 10
    actions, durations = anticipation_targets(truth, 3, 5, 6, none_index=3)
    assert actions.tolist() == [1, 2, 3, -100, -100, -100]
    assert durations.tolist() == pytest.approx([2 / 5, 3 / 5, 0, 0, 0, 0])
    actions, durations = anticipation_targets(truth, 0, 10, 3, none_index=3)
    assert actions.tolist() == [0, 1, 2]  # cut to the queries: NONE dropped first
    assert durations.tolist() == pytest.approx([0.3, 0.2, 0.3])


def test_decode_lays_out_actions_by_duration_until_none():
    logits = torch.full((4, 4), -5.0)
    logits[0, 2] = logits[1, 0] = logits[2, 3] = logits[3, 1] = 5.0  # 2, 0, NONE, 1
    durations = torch.log(torch.tensor([3.0, 1.0, 9.0, 9.0]))  # shares 3/4, 1/4 before NONE
    assert decode_anticipation(logits, durations, 8, none_index=3).tolist() == [2] * 6 + [0] * 2


def test_decode_fills_rounding_gaps_with_the_last_action_and_first_none_predicts_none():
    logits = torch.full((3, 3), -5.0)
    logits[0, 0] = logits[1, 1] = logits[2, 1] = 5.0
    durations = torch.zeros(3)  # thirds of 7 frames: int(0.5 + 7 / 3) = 2 each, one frame left
    assert decode_anticipation(logits, durations, 7, none_index=2).tolist() == [0, 0, 1, 1, 1, 1, 1]
    logits[0] = torch.tensor([-5.0, -5.0, 5.0])
    assert decode_anticipation(logits, durations, 4, none_index=2).tolist() == [2, 2, 2, 2]
