"""`vidcore info` and the bench runner behind `vidcore bench`."""
import json

from vidcore.bench.runner import available_ops, run

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


def test_bench_runner_writes_json_and_png(tmp_path):
    assert {"unit_keys", "merge_attention_states"} <= set(available_ops())
    results = run(["unit_keys"], size="tiny", device="cpu", out_dir=tmp_path, quiet=True)
    saved = json.loads(open(results["json"]).read())
    assert saved["copy_bandwidth_gbps"] > 0 and saved["versions"]["torch"]
    providers = {r["provider"]: r for r in saved["rows"]}
    assert set(providers) == {"reference", "compiled", "vidcore"}
    assert providers["reference"]["speedup"] == 1.0
    assert providers["vidcore"]["kernel"] == "C++" and providers["vidcore"]["gbps"] > 0
    assert (tmp_path / results["png"]).stat().st_size > 0


def test_bench_rejects_unknown_op(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="bench: unknown ops \\['nope'\\]"):
        run(["nope"], size="tiny", device="cpu", out_dir=tmp_path)
