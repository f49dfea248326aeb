"""The long-term action anticipation protocol of Breakfast / 50Salads (Farha et al. 2018, as
ActionLLM's engine.py and FUTR run it), over frame-level labels:

- a video of N frames is observed up to frame int(obs * N); the model predicts the actions of the
  next int(0.5 * N) frames;
- `anticipation_targets`: the training target of those frames, their run-length transcript
  followed by NONE, as many entries as the model has future queries, with each segment's share
  of the future as its duration;
- `decode_anticipation`: the model's per-query actions and durations back to frame labels;
- `anticipation_counts` / `mean_over_classes` / `anticipation_accuracy`: for every prediction
  horizon p (10/20/30/50% of the video) the frames int(obs * N) .. int((obs + p) * N) are
  scored; right and wrong frames are counted per ground-truth class over all videos, and the
  metric is the mean over classes (that occur) of each class's frame accuracy (MoC).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "OBSERVATIONS", "PREDICTIONS", "FUTURE_FRACTION",
           "anticipation_targets", "decode_anticipation", "normalize_durations",
           "repeat_last_action", "anticipation_counts", "mean_over_classes",
           "anticipation_accuracy"]

IGNORE_INDEX = -100
OBSERVATIONS = (0.2, 0.3)  # observed fractions of the video
PREDICTIONS = (0.1, 0.2, 0.3, 0.5)  # prediction horizons, fractions of the video
FUTURE_FRACTION = 0.5  # the model predicts this fraction of the video after the observation


def _split(num_frames: int, observed_fraction: float) -> tuple[int, int]:
    """(observed frames, predicted frames) of a video, as the seeds round them."""
    return int(observed_fraction * num_frames), int(FUTURE_FRACTION * num_frames)


def anticipation_targets(labels: Tensor, observed: int, future: int, num_queries: int,
                         none_index: int) -> tuple[Tensor, Tensor]:
    """Targets of the future queries (ActionLLM's util/action_dataset.py).

    Args:
        labels: [N] int64 frame labels of the whole video.
        observed, future: frames observed and frames to predict after them.
        num_queries: Q, the model's future queries.
        none_index: the NONE class (= the number of action classes).
    Returns:
        actions [Q] int64: the actions of labels[observed : observed + future] run by run, then
            NONE, then IGNORE_INDEX; cut to Q entries (NONE is dropped first);
        durations [Q] float32: each run's frames / future, 0 at NONE and padding.
    """
    window = labels[observed:observed + future]
    if window.numel() == 0:
        raise ValueError("anticipation_targets: nothing to predict (future window is empty)")
    actions, counts = torch.unique_consecutive(window, return_counts=True)
    actions = torch.cat([actions, actions.new_tensor([none_index])])
    durations = torch.cat([counts.float() / window.numel(), counts.new_zeros(1).float()])
    pad = max(0, num_queries - len(actions))
    actions = F.pad(actions, (0, pad), value=IGNORE_INDEX)[:num_queries]
    durations = F.pad(durations, (0, pad))[:num_queries]
    return actions, durations


def normalize_durations(duration_logits: Tensor, mask: Tensor | None) -> Tensor:
    """exp(logits), zero where `mask` is 0, divided by its sum over the queries (the seed's
    util/action_tool.py:normalize_duration): each query's share of the future."""
    weights = torch.exp(duration_logits)
    if mask is not None:
        weights = weights * mask
    return F.normalize(weights, p=1, dim=-1)


def decode_anticipation(action_logits: Tensor, duration_logits: Tensor, future: int,
                        none_index: int) -> Tensor:
    """One video's query outputs -> the labels of its `future` predicted frames.

    The queries' argmax actions are read in order up to the first NONE; their durations
    (normalised over those queries) become int(0.5 + future * share) frames each, laid out one
    after the other; frames left over at the end take the last action. A first query of NONE
    predicts NONE (`none_index`, never a ground-truth class) for every frame, as in the seed.
    Unlike the seed (engine.py:225-231), leftover frames take the last action before NONE,
    not the last query's argmax, which may lie after it.

    Args:
        action_logits: [Q, C + 1]; duration_logits: [Q].
    Returns:
        [future] int64.
    """
    actions = action_logits.argmax(-1)
    is_none = actions == none_index
    kept = int(is_none.int().argmax()) if bool(is_none.any()) else len(actions)
    if kept == 0:
        return actions.new_full((future,), none_index)
    shares = normalize_durations(duration_logits[:kept], None)
    lengths = (0.5 + future * shares).long()
    frames = torch.repeat_interleave(actions[:kept], lengths)[:future]
    return F.pad(frames, (0, future - len(frames)), value=int(actions[kept - 1]))


def repeat_last_action(labels: Tensor, observed: int, future: int) -> Tensor:
    """The baseline: the last observed frame's action for every future frame."""
    return labels[observed - 1].repeat(future)


def anticipation_counts(labels: Tensor, predicted: Tensor, observed_fraction: float,
                        prediction_fraction: float, num_classes: int) -> tuple[Tensor, Tensor]:
    """Right and scored frames per ground-truth class for one video and one horizon.

    Args:
        labels: [N] int64 ground truth of the whole video (classes 0 .. num_classes - 1).
        predicted: [F] int64 labels predicted for the frames after the observation.
        observed_fraction, prediction_fraction: obs and p; the frames int(obs * N) ..
            int((obs + p) * N) are scored, or fewer when `predicted` ends before (engine.py's
            eval_file: last_frame = min(len(prediction), len(ground truth))).
    Returns:
        (right [num_classes], scored [num_classes]) int64.
    """
    num_frames = len(labels)
    start = int(observed_fraction * num_frames)
    end = min(int((observed_fraction + prediction_fraction) * num_frames), start + len(predicted))
    truth = labels[start:max(start, end)]
    guess = predicted[:len(truth)].to(truth.device)
    right = torch.bincount(truth[truth == guess], minlength=num_classes)
    return right, torch.bincount(truth, minlength=num_classes)


def mean_over_classes(right: Tensor, scored: Tensor) -> float:
    """Mean over the classes with scored frames of right / scored (NaN when there are none)."""
    seen = scored > 0
    if not bool(seen.any()):
        return float("nan")
    return float((right[seen].double() / scored[seen].double()).mean())


def anticipation_accuracy(videos: Iterable[tuple[Tensor, Tensor]], observed_fraction: float,
                          num_classes: int, predictions: Sequence[float] = PREDICTIONS
                          ) -> dict[float, float]:
    """MoC accuracy over a set of videos at one observation for each horizon.

    Args:
        videos: (labels [N], predicted [F]) per video: the ground truth of the whole video and
            the labels predicted for the frames after int(observed_fraction * N).
        observed_fraction: obs (0.2 or 0.3 in the protocol).
        num_classes: ground-truth classes (a predicted NONE or other index never counts right).
        predictions: the horizons p.
    Returns:
        {p: MoC in [0, 1]}.
    """
    right = torch.zeros(len(predictions), num_classes, dtype=torch.long)
    scored = torch.zeros_like(right)
    for labels, predicted in videos:
        for i, p in enumerate(predictions):
            r, s = anticipation_counts(labels.cpu(), predicted.cpu(), observed_fraction, p,
                                       num_classes)
            right[i] += r
            scored[i] += s
    return {p: mean_over_classes(right[i], scored[i]) for i, p in enumerate(predictions)}
