"""`python -m vidcore.train {actionllm,task_adapter}`: the loop runs on the synthetic data, logs
the model's metric next to its baseline, saves a checkpoint that loads with the flags it was
trained with; slow: a few CPU minutes of training beat the baselines (README figures)."""
from __future__ import annotations

import json

import pytest

from vidcore.models.actionllm import ActionLLMForAnticipation
from vidcore.models.task_adapter import TaskAdapterForFewShot
from vidcore.train import main


def _history(out) -> dict:
    return json.loads((out / "history.json").read_text())


def test_actionllm_training_cli_logs_moc_and_baseline_and_saves(tmp_path):
    out = tmp_path / "actionllm"
    assert main(["actionllm", "--steps", "3", "--batch-size", "2", "--feature-dim", "16",
                 "--num-frames", "20", "--eval-size", "2", "--width", "32",
                 "--seed-position-encoding", "--seed-frozen-heads", "--out", str(out),
                 "--no-progress"]) == 0
    final = _history(out)["eval"][-1]
    for name in ("moc", "baseline_moc"):
        for obs in (20, 30):
            for pred in (10, 20, 30, 50):
                assert 0.0 <= final[f"{name}_obs{obs}_pred{pred}"] <= 1.0, final
    assert final["accuracy"] == final["moc_obs30_pred50"]
    config = ActionLLMForAnticipation.from_pretrained(out / "checkpoint").config
    assert config.position_encoding_over_batch and not config.train_heads


def test_task_adapter_training_cli_logs_accuracy_and_baseline_and_saves(tmp_path):
    out = tmp_path / "task_adapter"
    assert main(["task_adapter", "--steps", "2", "--n-way", "3", "--frame-size", "16",
                 "--width", "32", "--eval-size", "2", "--seed-scores", "--out", str(out),
                 "--no-progress"]) == 0
    final = _history(out)["eval"][-1]
    assert 0.0 <= final["accuracy"] <= 1.0 and 0.0 <= final["frame_average_accuracy"] <= 1.0
    assert TaskAdapterForFewShot.from_pretrained(out / "checkpoint").config.transposed_scores


@pytest.mark.slow
def test_actionllm_beats_repeating_the_last_observed_action(tmp_path):
    """600 steps (about 2 CPU minutes): MoC at obs 30% / pred 50% above the baseline's."""
    out = tmp_path / "actionllm"
    assert main(["actionllm", "--steps", "600", "--out", str(out), "--no-progress"]) == 0
    final = _history(out)["eval"][-1]
    assert final["accuracy"] > final["baseline_moc_obs30_pred50"] + 0.1, final


@pytest.mark.slow
def test_task_adapter_beats_chance_and_the_frame_average_baseline(tmp_path):
    """400 episodes (about 2 CPU minutes), 5-way 1-shot on held-out colour sets."""
    out = tmp_path / "task_adapter"
    assert main(["task_adapter", "--steps", "400", "--out", str(out), "--no-progress"]) == 0
    final = _history(out)["eval"][-1]
    assert final["accuracy"] > max(0.2, final["frame_average_accuracy"]) + 0.2, final
