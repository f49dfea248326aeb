"""Out of memory is recorded, not suffered: a provider that cannot allocate is marked, the other
is still timed, and a sweep reports the first frame count where the reference ran out."""
from __future__ import annotations

import pytest
import torch

import vidcore
from vidcore.profiler import pipeline as pipeline_module
from vidcore.profiler import report
from vidcore.profiler.measure import MemoryMeter, host_limit, is_out_of_memory, time_stage

TOO_MUCH = 1 << 40  # 1 TiB: refused under any cap below it


def test_host_limit_turns_a_huge_allocation_into_an_error_and_is_lifted_after():
    with host_limit(256 << 20), pytest.raises(RuntimeError) as caught:
        torch.empty(TOO_MUCH // 1024, dtype=torch.uint8)  # 1 GiB > 256 MiB
    assert is_out_of_memory(caught.value)
    assert torch.empty(512 << 20, dtype=torch.uint8).numel() == 512 << 20  # the cap is gone


def test_the_provider_that_runs_out_is_marked_and_the_other_timed():
    fns = {"vidcore": lambda: torch.ones(1000).sum(),
           "reference": lambda: torch.empty(TOO_MUCH, dtype=torch.uint8)}
    timings = time_stage(fns, "cpu", MemoryMeter("cpu"), repeats=2, host_limit_bytes=1 << 30)
    assert timings["reference"].status == "out of memory" and timings["reference"].seconds is None
    assert timings["vidcore"].status == "ok" and timings["vidcore"].reps == 2
    assert timings["vidcore"].seconds > 0 and float(timings["vidcore"].output) == 1000


def test_errors_other_than_memory_propagate():
    def broken():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        time_stage({"vidcore": broken}, "cpu", MemoryMeter("cpu"), repeats=1,
                   host_limit_bytes=1 << 30)


def test_a_sweep_reports_where_the_reference_runs_out_of_memory(monkeypatch, tmp_path, tiny):
    """The reference attention is made to need 1 TiB once a sequence passes 30 tokens (as the
    seeds' dense attention does at long lengths): the sweep keeps going, reports the frame count
    and stage where it stopped fitting, and vidcore's path runs at every frame count."""
    real_attention = pipeline_module.attention

    def attention(q, k, v, *, backend="auto", **kwargs):
        if backend == "torch" and q.shape[0] > 30:
            torch.empty(TOO_MUCH, dtype=torch.uint8)
        return real_attention(q, k, v, backend=backend, **kwargs)

    monkeypatch.setattr(pipeline_module, "attention", attention)
    results = vidcore.profile(synthetic=1, sweep=[4, 16, 32], preset="video_chatgpt",
                              host_limit_gib=1.0, out_dir=tmp_path, **tiny)
    # video_chatgpt: T + 16 tokens, half kept, + 8 text tokens: 18, 24, 32 in self-attention
    assert results["out_of_memory"] == {
        "vidcore": None, "reference": {"frames": 32, "stages": ["self_attention"]}}
    last = results["points"][-1]
    assert last["total_ms"]["reference"] is None and last["total_ms"]["vidcore"] > 0
    failed = [r for r in results["rows"] if r["status"] != "ok"]
    assert [(r["frames"], r["stage"], r["provider"]) for r in failed] == [
        (32, "self_attention", "reference")]
    assert "reference: self_attention" in report.as_text(report.sweep_table(results))
