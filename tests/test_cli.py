"""`vidcore info` and `vidcore bench`: what they print, write, and how they fail."""
import json
import os
import subprocess
import sys

import pytest
import torch
from vidcore.bench.runner import BenchError, _output_path, run

import vidcore
from vidcore.profiler.cli import main


def test_info_json_lists_every_backend(capsys):
    assert main(["info", "--json"]) == 0
    about = json.loads(capsys.readouterr().out)
    assert {"versions", "device", "extension", "backends"} <= about.keys()
    rows = {(r["op"], r["device"]): r for r in about["backends"]}
    assert rows[("unit_keys", "cpu")]["kernel"] == "C++" and rows[("unit_keys", "cpu")]["live"]
    not_live = [r for r in about["backends"] if not r["live"]]
    assert all(r["reason"] for r in not_live), "every backend that is not live must say why"


def test_info_table(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "unit_keys" in out and "merge_attention_states" in out


def test_info_in_python_is_a_dict_that_prints_as_the_table():
    about = vidcore.info()
    assert isinstance(about, dict) and json.loads(json.dumps(about))["device"] == about["device"]
    shown = str(about)
    assert repr(about) == shown and "backends" in shown and "pool_backward" in shown
    assert "{" not in shown.splitlines()[-2], "the table, not the dict's repr"


@pytest.mark.parametrize("argv, message", [
    (["bench", "--ops", "bogus"], "vidcore bench: error: unknown op bogus; available: attention, "),
    (["bench", "--ops", "pack", "--shape", "Q=1"], "vidcore bench: error: --shape 'Q=1' for pack: "
                                                   "expected NAME=VALUE with NAME in B, T, H, W, D"),
    (["bench", "--ops", "pack", "--shape", "B=1.5"], "--shape expects an integer, got '1.5'"),
    (["bench", "--ops", "unit_keys", "--dtype", "float16"],
     "vidcore bench: error: the unit_keys benchmark takes no --dtype"),
])
def test_bench_requests_it_cannot_honour_fail_in_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_bench_on_cuda_without_a_gpu_fails_in_one_line(capsys):
    assert main(["bench", "--device", "cuda", "--ops", "pack"]) == 2
    assert capsys.readouterr().err == ("vidcore bench: error: --device cuda, but torch sees no CUDA "
                                       "device here (torch.cuda.is_available() is False)\n")


def test_a_closed_pipe_ends_quietly():
    """`vidcore info --json | head -1`: the reader is gone before vidcore writes."""
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", "vidcore.profiler.cli", "info", "--json"],
                          stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(write)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_bench_writes_json_png_and_dispatch_record(tmp_path, capsys):
    results = run(["unit_keys"], size="tiny", device="cpu", out_dir=tmp_path)
    out = capsys.readouterr().out
    assert "unit_keys B1-U64" in out and "1/1" in out and "ETA" in out and "% of copy:" in out
    saved = json.loads(open(results["json"]).read())
    assert saved["copy_bandwidth_gbps"] > 0 and saved["versions"]["torch"]
    assert saved["run_id"] == os.path.basename(results["json"]).removesuffix(".json")
    rows = {r["provider"]: r for r in saved["rows"]}
    assert set(rows) == {"reference", "compiled", "vidcore"}
    assert rows["vidcore"]["dispatch"] == [{"op": "unit_keys", "key": "CPU", "kernel": "C++"}]
    assert rows["vidcore"]["kernel"] == "C++" and rows["vidcore"]["gbps"] > 0
    for row in rows.values():
        assert 0 < row["min_us"] <= row["median_us"] and row["reps"] >= 5
        baseline = rows[row["baseline"]]["median_us"]
        assert row["speedup"] == pytest.approx(baseline / row["median_us"])
    assert (tmp_path / results["png"]).stat().st_size > 0


def test_bench_with_the_users_shape(tmp_path):
    results = run(["unit_keys"], device="cpu", out_dir=tmp_path, plot=False, quiet=True,
                  shape="videos=2,units=96")
    assert {(r["case"], r["bytes"]) for r in results["rows"]} == {("B2-U96", 8 * 2 * 96)}


def test_two_runs_in_one_second_write_two_files(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = _output_path(tmp_path, "cpu (2 threads)", now)
    assert first.name == "cpu-2-threads-20260102-030405.json"
    first.write_text("{}")
    assert _output_path(tmp_path, "cpu (2 threads)", now).name == "cpu-2-threads-20260102-030405-2.json"


def test_bench_rejects_unknown_op(tmp_path):
    with pytest.raises(BenchError, match="unknown ops nope, gone; available: attention"):
        run(["nope", "gone"], size="tiny", device="cpu", out_dir=tmp_path)
