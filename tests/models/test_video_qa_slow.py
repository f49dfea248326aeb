"""Slow checks of the video-QA models (make test-slow): CPU training on the synthetic set learns to
answer, and the loop runs under torchrun with DDP and FSDP2 (2 CPU processes, gloo)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vidcore.train import main

CHANCE = (1 / 4 + 1 / 4 + 1 / 3) / 3  # colour, direction, count: equally many questions


@pytest.mark.slow
@pytest.mark.parametrize("task", ["stllm", "minigpt4_video"])
def test_stllm_and_minigpt4_video_learn_the_synthetic_set(tmp_path, task):
    """600 steps on CPU (a few minutes): held-out answer accuracy well above chance (0.28)."""
    out = tmp_path / task
    assert main([task, "--steps", "600", "--batch-size", "16", "--lr", "1e-3",
                 "--out", str(out), "--no-progress"]) == 0
    final = json.loads((out / "history.json").read_text())["eval"][-1]
    assert final["accuracy"] > CHANCE + 0.2, final


def _torchrun(tmp_path, parallel: str) -> dict[str, torch.Tensor]:
    out = tmp_path / parallel
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m",
               "vidcore.train", "stllm", "--steps", "3", "--batch-size", "2", "--width", "32",
               "--frame-size", "16", "--num-frames", "4", "--eval-size", "4", "--out", str(out),
               "--no-progress", "--parallel", parallel]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out / "checkpoint" / "model.safetensors")


@pytest.mark.slow
def test_stllm_trains_under_torchrun_with_ddp_and_fsdp(tmp_path):
    """Both average the same gradients of the same shards: the same weights after 3 steps."""
    ddp, fsdp = _torchrun(tmp_path, "ddp"), _torchrun(tmp_path, "fsdp")
    assert ddp.keys() == fsdp.keys()
    for name, tensor in ddp.items():
        torch.testing.assert_close(fsdp[name], tensor, msg=name)
