"""The synthetic video-QA set: deterministic, and each answer is what the frames show (checked
by measuring the frames, not by reading the generator's choices)."""
from __future__ import annotations

import pytest
import torch

from vidcore.data.video_qa import COLOURS, COUNTS, DIRECTIONS, SyntheticVideoQA, VideoQACollator


def _moving_pixels(video: torch.Tensor) -> torch.Tensor:
    """[T, S, S] mask of pixels of a saturated colour (the moving squares; grey and the dark
    noise are not)."""
    frames = video.int()
    return (frames.amax(1) - frames.amin(1)) > 100


def _measured_answer(video: torch.Tensor, kind: str) -> str:
    moving = _moving_pixels(video)
    if kind == "colour":
        pixels = video.permute(0, 2, 3, 1)[moving].float().mean(0)
        return min(COLOURS, key=lambda c: float((pixels - torch.tensor(COLOURS[c])).norm()))
    if kind == "direction":
        rows, cols = torch.meshgrid(torch.arange(video.shape[-2]), torch.arange(video.shape[-1]),
                                    indexing="ij")
        first, last = moving[0], moving[-1]
        d_col = cols[last].float().mean() - cols[first].float().mean()
        d_row = rows[last].float().mean() - rows[first].float().mean()
        if abs(d_col) > abs(d_row):
            return "right" if d_col > 0 else "left"
        return "down" if d_row > 0 else "up"
    side = video.shape[-1] // 4
    return COUNTS[round(int(moving[0].sum()) / side**2) - 1]


def test_answers_match_what_the_frames_show():
    data = SyntheticVideoQA(48, num_frames=6, frame_size=32, seed=3)
    kinds = set()
    for i in range(len(data)):
        sample = data[i]
        kinds.add(sample.kind)
        assert sample.video.shape == (6, 3, 32, 32) and sample.video.dtype == torch.uint8
        assert _measured_answer(sample.video, sample.kind) == sample.answer, (i, sample)
    assert kinds == {"colour", "direction", "count"}


def test_samples_are_deterministic_and_varied():
    a, b = SyntheticVideoQA(16, seed=1), SyntheticVideoQA(16, seed=1)
    assert all(torch.equal(a[i].video, b[i].video) for i in range(16))
    assert not torch.equal(a[0].video, SyntheticVideoQA(16, seed=2)[0].video)
    answers = {SyntheticVideoQA(64, seed=0, kinds=["direction"])[i].answer for i in range(64)}
    assert answers == set(DIRECTIONS)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kinds"):
        SyntheticVideoQA(4, kinds=["shape"])
    with pytest.raises(IndexError):
        SyntheticVideoQA(4)[4]


def test_collate_builds_the_packing_plan():
    from vidcore.models.stllm import STLLMProcessor, tiny_stllm_config
    from vidcore.models.video_qa_task import synthetic_tokenizer

    tokenizer = synthetic_tokenizer(STLLMProcessor)
    config = tiny_stllm_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<video>"),
                               frame_size=16, width=32)
    processor = STLLMProcessor.for_model(tokenizer, config)
    data = SyntheticVideoQA(3, num_frames=4, frame_size=16)
    batch = VideoQACollator(processor)([data[i] for i in range(3)])
    layout = batch["sequence_layout"]
    assert layout.visual_lengths().tolist() == [config.video_tokens(4)] * 3
    valid = batch["attention_mask"].bool()
    is_video = batch["input_ids"] == processor.video_token_index
    assert int(layout.segments[:, 2].sum()) == int(valid.sum())
    assert layout.text_index.tolist() == torch.nonzero((valid & ~is_video).flatten()).flatten(
        ).tolist()
    tok = processor.tokenizer
    for i, row in enumerate(batch["labels"]):
        answer = tok(data[i].answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert row[row != -100].tolist() == answer
    assert (processor.tokenizer(" ".join(data[0].question.split()))["input_ids"].count(
        processor.tokenizer.unk_token_id) == 0)
