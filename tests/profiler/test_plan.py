"""`vidcore plan`: frames that fit a context, checked against numbers worked out by hand from the
seeds' settings (seeds.md section 4b) and each preset's token formula."""
from __future__ import annotations

import json

import pytest

from vidcore.profiler.cli import main
from vidcore.profiler.plan import plan


def _one(context: int, preset: str, **kwargs):
    (result,) = plan(context, preset=preset, **kwargs)
    return result


@pytest.mark.parametrize("context, frames, visual, text", [
    (3600, 45, 2880, 720),   # Llama-2: 45 frames x 64 tokens inside max_context_len 3,600
    (7200, 90, 5760, 1440),  # Mistral: 90 frames x 64 tokens inside 7,200
])
def test_minigpt4_video_frame_budget_of_the_seed(context, frames, visual, text):
    result = _one(context, "minigpt4_video")  # 16 x 16 CLIP tokens, 4 merged: 64 per frame
    assert (result.frames, result.visual_tokens, result.text_tokens) == (frames, visual, text)
    assert result.fits and result.views == [("every frame, 4 tokens merged into one", visual)]
    assert _one(context, "minigpt4_video", text_tokens=text).frames == frames


def test_the_models_frame_budget_agrees_on_the_seeds_settings():
    from vidcore.models.minigpt4_video import frame_budget

    # The model states the rule per LLM context (4096 / 8192), the planner per prompt budget.
    assert frame_budget(4096, 64) == _one(3600, "minigpt4_video").frames
    assert frame_budget(8192, 64) == _one(7200, "minigpt4_video").frames


@pytest.mark.parametrize("preset, frames, tokens", [
    ("slowfast", 100, 2880),         # 10 slow frames x 16 x 8 = 1280, + 16 per frame: 1280 + 1600
    ("video_chatgpt", 2624, 2880),   # one token per frame + 256 temporal means: 2624 + 256
    ("llava_next_video", 45, 2880),  # 8 x 8 = 64 per frame
    ("none", 11, 2816),              # 256 per frame: 11 x 256 = 2816 <= 2880 < 12 x 256
])
def test_frames_that_fit_each_preset(preset, frames, tokens):
    result = _one(3600, preset)
    assert (result.frames, result.visual_tokens) == (frames, tokens)


def test_a_preset_whose_tokens_do_not_grow_with_frames():
    # ST-LLM: 16 frames at segment centres + the temporal mean: 17 x grid tokens at any length.
    too_many = _one(3600, "st_llm_global_local")
    assert not too_many.fits and too_many.frames is None and too_many.visual_tokens == 17 * 256
    qformer = _one(3600, "st_llm_global_local", grid=(1, 32))  # the seed's 32 Q-Former queries
    assert qformer.fits and qformer.frames is None and qformer.visual_tokens == 17 * 32


def test_frames_per_second_for_a_duration_and_every_preset_listed():
    assert _one(3600, "minigpt4_video", duration=90.0).fps == pytest.approx(0.5)
    assert {p.preset for p in plan(3600, grid=(16, 16))} == {
        "st_llm_global_local", "slowfast", "video_chatgpt", "llava_next_video",
        "minigpt4_video", "none"}
    # an odd grid cannot take LLaVA-NeXT-Video's 2 x 2 pooling: listed without it
    assert "llava_next_video" not in {p.preset for p in plan(3600, grid=(15, 15))}


@pytest.mark.parametrize("kwargs, message", [
    (dict(context=0), "context must be a positive number of tokens"),
    (dict(context=3600, visual_share=1.5), "visual_share must be in (0, 1]"),
    (dict(context=3600, text_tokens=3600), "text_tokens must be an integer in [0, context=3600)"),
    (dict(context=3600, preset="bogus"), "unknown preset 'bogus'"),
    (dict(context=3600, preset="llava_next_video", grid=(15, 15)), "must be even"),
    (dict(context=3600, duration=0.0), "duration must be > 0"),
])
def test_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        plan(**kwargs)


def test_cli_json_and_table(capsys):
    assert main(["plan", "--context", "7200", "--preset", "minigpt4_video", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert (result["frames"], result["visual_tokens"]) == (90, 5760)
    assert main(["plan", "--context", "3600", "--duration", "120"]) == 0
    out = capsys.readouterr().out
    assert "2,880 for video, 720 for text" in out and "minigpt4_video" in out


def test_cli_bad_request_fails_in_one_line(capsys):
    assert main(["plan", "--context", "3600", "--grid", "sixteen"]) == 2
    err = capsys.readouterr().err
    assert err == "vidcore plan: error: --grid expects HxW (e.g. 16x16), got 'sixteen'\n"
