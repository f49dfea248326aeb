"""Processors for the video-QA models (tokenizer + frame transform, like LlavaNextVideoProcessor):
prompts with the video placeholders expanded to the number of video tokens the model emits,
answer labels, frames resized and normalised, and the host-side `SequenceLayout` the model packs
with. `word_tokenizer` builds the tiny whole-word tokenizer that tests and the synthetic task use;
real use loads a tokenizer from a local directory (`from_pretrained`)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from vidcore.models.sequence import IGNORE_INDEX, sequence_layout

__all__ = ["VideoQAProcessor", "word_tokenizer", "VIDEO_TOKEN", "CLIP_MEAN", "CLIP_STD"]

VIDEO_TOKEN = "<video>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CONFIG_NAME = "processor_config.json"


def word_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerBase:
    """A whole-word tokenizer (tokenizers' WordLevel, whitespace + punctuation split) over the
    words of `corpus`, with <pad>, <unk>, <s>, </s> and the video placeholder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Whitespace()
    pieces = [piece for text in corpus for piece in text.split(VIDEO_TOKEN)]
    words = sorted({w for piece in pieces for w, _ in split.pre_tokenize_str(piece)})
    specials = ["<pad>", "<unk>", "<s>", "</s>", VIDEO_TOKEN]
    vocab = {token: i for i, token in enumerate(specials + [w for w in words if w not in specials])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = split
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>",
                                   extra_special_tokens=[VIDEO_TOKEN])


class VideoQAProcessor:
    """Base of the model processors. Subclasses define `prompt(question, num_frames, subtitles)`
    (text with one `<video>` per video run) and `video_tokens_per_run(num_frames)`.

    __call__(videos, questions, answers=None) -> BatchFeature with input_ids, attention_mask,
    labels (answers only; -100 elsewhere), pixel_values_videos [B, T, 3, S, S] and
    sequence_layout (host plan for the packed forward). Without answers the prompts are padded
    on the left, ready for `generate()`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, image_size: int = 224,
                 image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD,
                 **options):
        if VIDEO_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.options = options

    @property
    def video_token_index(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)

    # ---- subclass hooks ----------------------------------------------------------------------
    def prompt(self, question: str, num_frames: int, subtitles: Sequence[str] | None) -> str:
        raise NotImplementedError

    def video_tokens_per_run(self, num_frames: int) -> int:
        raise NotImplementedError

    # ---- frames ------------------------------------------------------------------------------
    def transform_frames(self, video: Tensor) -> Tensor:
        """uint8 [T, 3, H, W] -> float32 [T, 3, S, S]: resized (bilinear, antialiased) and
        normalised with the vision tower's mean and std."""
        if video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(f"a video must be [T, 3, H, W], got {tuple(video.shape)}")
        frames = video.float() / 255.0
        if tuple(frames.shape[-2:]) != (self.image_size, self.image_size):
            frames = F.interpolate(frames, size=(self.image_size, self.image_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (frames - mean) / std

    # ---- text --------------------------------------------------------------------------------
    def _encode(self, text: str, num_frames: int) -> list[int]:
        """Token ids of a prompt, each `<video>` expanded to its run of placeholder ids."""
        run = [self.video_token_index] * self.video_tokens_per_run(num_frames)
        ids = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        for i, piece in enumerate(text.split(VIDEO_TOKEN)):
            if i:
                ids += run
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def __call__(self, videos: Sequence[Tensor] | Tensor, questions: Sequence[str],
                 answers: Sequence[str] | None = None,
                 subtitles: Sequence[Sequence[str] | None] | None = None) -> BatchFeature:
        if len(videos) != len(questions) or (answers is not None and len(answers) != len(videos)):
            raise ValueError("videos, questions (and answers) must have one entry per sample")
        frames = [self.transform_frames(v) for v in videos]
        if len({f.shape for f in frames}) > 1:
            raise ValueError("every video of a batch must have the same number of frames")
        rows, targets = [], []
        for i, (video, question) in enumerate(zip(frames, questions, strict=True)):
            subs = subtitles[i] if subtitles is not None else None
            prompt = self._encode(self.prompt(question, video.shape[0], subs), video.shape[0])
            answer = [] if answers is None else self.tokenizer(
                answers[i], add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            rows.append(prompt + answer)
            targets.append([IGNORE_INDEX] * len(prompt) + answer)
        input_ids, attention_mask, labels = _pad(rows, targets, self.tokenizer.pad_token_id,
                                                 left=answers is None)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "pixel_values_videos": torch.stack(frames)}
        if answers is not None:
            batch["labels"] = labels
        batch["sequence_layout"] = sequence_layout(input_ids, attention_mask, self.video_token_index)
        return BatchFeature(batch, skip_tensor_conversion=["sequence_layout"])

    def batch_decode(self, ids: Tensor, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, **kwargs)

    # ---- save / load -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        config = {"processor_class": type(self).__name__, "image_size": self.image_size,
                  "image_mean": self.image_mean, "image_std": self.image_std, **self.options}
        with open(os.path.join(directory, _CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=1)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> VideoQAProcessor:
        """A processor saved by save_pretrained (tokenizer + processor_config.json)."""
        with open(os.path.join(directory, _CONFIG_NAME)) as f:
            config = json.load(f)
        config.pop("processor_class", None)
        return cls(AutoTokenizer.from_pretrained(directory), **config)


def _pad(rows: list[list[int]], targets: list[list[int]], pad_id: int, left: bool
         ) -> tuple[Tensor, Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, where], mask[i, where], labels[i, where] = (torch.tensor(row), 1, torch.tensor(target))
    return ids, mask, labels
