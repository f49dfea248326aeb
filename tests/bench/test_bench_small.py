"""`make test-slow`: every benchmark at --size small through the runner, torch.compile baselines
included, as `vidcore bench` runs them (CI's smoke runs only the tiny shapes, once each)."""
import json
import math

import pytest
from vidcore.bench.runner import available_ops, run


@pytest.mark.slow
def test_every_op_benchmarks_at_small_size(tmp_path):
    results = run(size="small", device="cpu", out_dir=tmp_path, quiet=True)
    rows = json.loads(open(results["json"]).read())["rows"]
    assert {row["op"] for row in rows} == set(available_ops())
    for row in rows:
        assert math.isfinite(row["median_us"]) and 0 < row["min_us"] <= row["median_us"], row
        if row["provider"] == "vidcore":
            assert row["dispatch"] and row["kernel"], row
