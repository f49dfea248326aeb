"""The synthetic video-QA training task shared by ST-LLM and MiniGPT4-Video (vidcore.train):
a word tokenizer over the task's words, a tiny model, SyntheticVideoQA batches, and answer
accuracy (every answer token, teacher forced, is the model's argmax: what greedy decoding would
answer)."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import torch

from vidcore.data.video_qa import SyntheticVideoQA, VideoQACollator, corpus
from vidcore.models.processing import word_tokenizer
from vidcore.models.sequence import IGNORE_INDEX
from vidcore.train import TrainTask

__all__ = ["video_qa_task", "answer_accuracy", "synthetic_tokenizer"]

_EVAL_SEED = 1_000_000


def synthetic_tokenizer(processor_class):
    """The word tokenizer of the synthetic task: its words + those of the processor's prompt."""
    return word_tokenizer([*corpus(), *processor_class.CORPUS])


def _arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("synthetic video QA")
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument("--num-frames", type=int, default=8)
    group.add_argument("--frame-size", type=int, default=32, help="pixels (square frames)")
    group.add_argument("--eval-size", type=int, default=192)
    group.add_argument("--width", type=int, default=64, help="hidden size of the tiny models")


def answer_accuracy(model: torch.nn.Module, batches: Iterable[dict]) -> dict[str, float]:
    """Share of samples whose answer tokens (and end of sequence) are all the argmax of the
    inference forward's logits, overall and per question kind."""
    hits: dict[str, list[int]] = {}
    for batch in batches:
        batch = dict(batch)
        labels, kinds = batch.pop("labels"), batch.pop("kinds")
        logits = model(**batch).logits
        targets = labels[:, 1:]
        right = (logits[:, :-1].argmax(-1) == targets) | (targets == IGNORE_INDEX)
        for kind, ok in zip(kinds, right.all(1).tolist(), strict=True):
            hits.setdefault(kind, []).append(int(ok))
    every = [h for kind in hits.values() for h in kind]
    metrics = {"accuracy": sum(every) / max(1, len(every))}
    metrics.update({f"accuracy_{k}": sum(v) / len(v) for k, v in sorted(hits.items())})
    return metrics


class _EvalCollator(VideoQACollator):
    def __call__(self, samples):
        return {**super().__call__(samples), "kinds": [s.kind for s in samples]}


def video_qa_task(name: str, model_class, processor_class, tiny_config: Callable[..., object],
                  **settings) -> TrainTask:
    """A TrainTask for a video-QA model on SyntheticVideoQA. `tiny_config(vocab_size,
    video_token_index, frame_size=..., width=..., **settings)` gives the default model."""

    def config(args):
        tokenizer = args.processor.tokenizer
        return tiny_config(len(tokenizer), args.processor.video_token_index,
                           frame_size=args.frame_size, width=args.width, **settings)

    def build_processor(args):
        tokenizer = synthetic_tokenizer(processor_class)
        probe = tiny_config(len(tokenizer), 0, frame_size=args.frame_size, width=args.width,
                            **settings)
        return processor_class.for_model(tokenizer, probe, num_frames=args.num_frames)

    def build_model(args):
        return model_class(config(args))

    def build_data(args):
        shards = max(1, getattr(args, "world_size", 1))
        train = SyntheticVideoQA(args.steps * args.batch_size, num_frames=args.num_frames,
                                 frame_size=args.frame_size,
                                 seed=args.seed * shards + getattr(args, "rank", 0) + 1)
        held_out = SyntheticVideoQA(args.eval_size, num_frames=args.num_frames,
                                    frame_size=args.frame_size, seed=_EVAL_SEED)
        loader = torch.utils.data.DataLoader
        return (loader(train, batch_size=args.batch_size, drop_last=True,
                       collate_fn=VideoQACollator(args.processor)),
                loader(held_out, batch_size=args.batch_size,
                       collate_fn=_EvalCollator(args.processor)))

    return TrainTask(name=name, build_model=build_model, build_data=build_data,
                     evaluate=answer_accuracy, add_arguments=_arguments,
                     build_processor=build_processor)

