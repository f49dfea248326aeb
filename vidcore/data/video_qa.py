"""A synthetic video-QA set whose answers depend on what the video shows: squares of one colour
move in one direction across a noisy background, with grey squares standing still, and each
sample asks for the colour of the moving squares, the direction they move in, or how many move.
Deterministic in (seed, index); rendered on the fly, so any size costs nothing up front.

    data = SyntheticVideoQA(1024, num_frames=8, frame_size=32, seed=0)
    batch = VideoQACollator(processor)([data[i] for i in range(8)])   # -> model(**batch)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["COLOURS", "DIRECTIONS", "COUNTS", "QUESTIONS", "VideoQASample", "SyntheticVideoQA",
           "VideoQACollator", "corpus"]

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230),
           "yellow": (230, 210, 40)}
DIRECTIONS = ("left", "right", "up", "down")
COUNTS = ("one", "two", "three")
QUESTIONS = {
    "colour": "What colour are the moving shapes?",
    "direction": "Which way do the shapes move?",
    "count": "How many shapes are moving?",
}


def corpus() -> list[str]:
    """Every word the questions and answers use (to build a word tokenizer)."""
    return [*QUESTIONS.values(), " ".join(COLOURS), " ".join(DIRECTIONS), " ".join(COUNTS)]


@dataclass(frozen=True)
class VideoQASample:
    video: Tensor  # uint8 [T, 3, S, S]
    question: str
    answer: str
    kind: str  # "colour" | "direction" | "count"


class SyntheticVideoQA(torch.utils.data.Dataset):
    """`size` samples of `num_frames` frames of `frame_size` x `frame_size` pixels. Question
    kinds cycle over `kinds` (index % len(kinds)), so every kind is equally frequent; chance
    accuracy is the mean of 1/4 (colour), 1/4 (direction) and 1/3 (count)."""

    def __init__(self, size: int, *, num_frames: int = 8, frame_size: int = 32, seed: int = 0,
                 kinds: Sequence[str] = tuple(QUESTIONS)):
        if num_frames < 2 or frame_size < 12:
            raise ValueError("SyntheticVideoQA needs num_frames >= 2 and frame_size >= 12")
        unknown = set(kinds) - set(QUESTIONS)
        if unknown:
            raise ValueError(f"SyntheticVideoQA: unknown question kinds {sorted(unknown)}")
        self.size, self.num_frames, self.frame_size = size, num_frames, frame_size
        self.seed, self.kinds = seed, tuple(kinds)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> VideoQASample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + index)

        def pick(n: int) -> int:
            return int(torch.randint(n, (), generator=rng))

        colour, direction = list(COLOURS)[pick(len(COLOURS))], DIRECTIONS[pick(len(DIRECTIONS))]
        moving, still = pick(3) + 1, pick(2)
        video = self._render(rng, COLOURS[colour], direction, moving, still)
        kind = self.kinds[index % len(self.kinds)]
        answer = {"colour": colour, "direction": direction, "count": COUNTS[moving - 1]}[kind]
        return VideoQASample(video, QUESTIONS[kind], answer, kind)

    def _render(self, rng: torch.Generator, rgb: tuple[int, int, int], direction: str,
                moving: int, still: int) -> Tensor:
        size, frames = self.frame_size, self.num_frames
        side = max(2, size // 4)
        video = torch.randint(0, 24, (frames, 3, size, size), generator=rng, dtype=torch.uint8)
        for _ in range(still):  # grey distractors, the same in every frame
            row, col = (int(torch.randint(size - side, (), generator=rng)) for _ in range(2))
            video[:, :, row:row + side, col:col + side] = 150
        travel = size - side - 1
        step = travel * (0.5 + 0.4 * float(torch.rand((), generator=rng))) / (frames - 1)
        lanes = torch.randperm(3, generator=rng)[:moving].tolist()  # one lane each: no overlap
        lane_width = size // 3
        colour = torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1)
        for lane in lanes:
            across = lane * lane_width + int(torch.randint(max(1, lane_width - side), (),
                                                           generator=rng))
            start = float(torch.rand((), generator=rng)) * (travel - step * (frames - 1))
            for t in range(frames):
                along = int(start + step * t)
                if direction in ("left", "up"):
                    along = travel - along
                row, col = (across, along) if direction in ("left", "right") else (along, across)
                video[t, :, row:row + side, col:col + side] = colour
        return video


class VideoQACollator:
    """samples -> the model's batch (processor: input_ids with the video placeholders expanded,
    attention_mask, labels on the answers, pixel_values_videos, and the host-side
    sequence_layout the model packs the batch with), plus `answers` (str) for evaluation."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: Sequence[VideoQASample]) -> dict:
        batch = self.processor([s.video for s in samples], [s.question for s in samples],
                               [s.answer for s in samples])
        return dict(batch)
