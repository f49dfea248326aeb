"""Task-Adapter++'s training task on OrderedSubActionEpisodes (`python -m vidcore.train
task_adapter`): a tiny CLIP, the class texts of every episode ("A video of action about red
then green then blue: the red square", one sentence per sub-action), episode accuracy on held-out
colour sets, and a frame-averaging prototype baseline that ignores order."""
from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from vidcore.data.synthetic import SUB_ACTION_COLOURS, Episode, OrderedSubActionEpisodes
from vidcore.models.processing import CLIP_MEAN, CLIP_STD, word_tokenizer
from vidcore.models.task_adapter import TaskAdapterConfig, TaskAdapterForFewShot
from vidcore.models.task_adapter_blocks import cosine_matrix
from vidcore.train import TrainTask

__all__ = ["TRAIN_TASK", "tiny_task_adapter_config", "class_sentences", "episode_batch",
           "few_shot_accuracy", "frame_average_accuracy",
           "frame_average_predictions", "synthetic_tokenizer"]

_EVAL_SEED = 1_000_000


def class_sentences(order: Sequence[str]) -> list[str]:
    """The seed's prompts for one class: 'A video of action about {class}: {sub-action}'."""
    name = " then ".join(order)
    return [f"A video of action about {name}: the {colour} square" for colour in order]


def synthetic_tokenizer():
    """A word tokenizer over every word of the class sentences (<s> = 2, </s> = 3)."""
    return word_tokenizer(class_sentences(list(SUB_ACTION_COLOURS)))


def tiny_task_adapter_config(vocab_size: int, *, frame_size: int = 32, width: int = 64,
                             **overrides) -> TaskAdapterConfig:
    """Two-layer CLIP towers of `width` (4 heads) on 8 x 8 patches, adapters in every layer."""
    heads = max(1, width // 16)
    settings = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=width,
                           intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=heads, image_size=frame_size, patch_size=8),
        text_config=dict(model_type="clip_text_model", vocab_size=vocab_size, hidden_size=width,
                         intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=heads, max_position_embeddings=32,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3),
        projection_dim=width, adapter_layers=2, text_adapter_layers=2)
    settings.update(overrides)
    return TaskAdapterConfig(**settings)


def _pixels(videos: Tensor) -> Tensor:
    """uint8 [N, T, 3, S, S] -> CLIP-normalised float32."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (videos.float() / 255 - mean) / std


def episode_batch(episode: Episode, tokenizer) -> dict:
    """One episode as the model's inputs (plus its labels)."""
    sentences = [s for order in episode.class_orders for s in class_sentences(order)]
    ids = tokenizer([f"<s> {s} </s>" for s in sentences], padding=True,
                    add_special_tokens=False, return_tensors="pt")["input_ids"]
    ways = len(episode.class_orders)
    return {"support_videos": _pixels(episode.support), "query_videos": _pixels(episode.query),
            "support_labels": episode.support_labels,
            "class_input_ids": ids.view(ways, -1, ids.shape[-1]),
            "labels": episode.query_labels}


class _Batches:
    def __init__(self, episodes: OrderedSubActionEpisodes, tokenizer):
        self.episodes, self.tokenizer = episodes, tokenizer

    def __iter__(self):
        for i in range(len(self.episodes)):
            yield episode_batch(self.episodes[i], self.tokenizer)


def frame_average_predictions(support: Tensor, support_labels: Tensor, query: Tensor,
                              ways: int) -> Tensor:
    """The order-blind baseline's decision: each video's frame features averaged over frames,
    a class prototype = the mean of its support averages, each query takes the class of the
    prototype of highest cosine (ties: the lowest class).

    Args:
        support [Ns, T, D], query [Nq, T, D]: per-frame features; support_labels [Ns] in
            [0, ways).
    Returns:
        [Nq] int64 predicted classes.
    """
    support, query = support.mean(1), query.mean(1)
    counts = torch.bincount(support_labels, minlength=ways).clamp(min=1)
    prototypes = support.new_zeros(ways, support.shape[-1]).index_add(
        0, support_labels, support) / counts[:, None].to(support.dtype)
    return cosine_matrix(query, prototypes).argmax(-1)


@torch.no_grad()
def frame_average_accuracy(model: TaskAdapterForFewShot, batches: Iterable[dict]) -> float:
    """The order-blind baseline on the model's frozen CLIP: per-frame features (no adapters,
    no temporal embedding) -> frame_average_predictions; the fraction of queries right."""
    right = total = 0
    for batch in batches:
        features = []
        for key in ("support_videos", "query_videos"):
            videos = batch[key]
            pooled = model.vision_model(pixel_values=videos.flatten(0, 1)).pooler_output
            features.append(model.visual_projection(pooled).view(*videos.shape[:2], -1))
        guess = frame_average_predictions(features[0], batch["support_labels"], features[1],
                                          batch["class_input_ids"].shape[0])
        right += int((guess == batch["labels"]).sum())
        total += len(guess)
    return right / max(1, total)


@torch.no_grad()
def few_shot_accuracy(model: TaskAdapterForFewShot, batches: Iterable[dict]
                      ) -> dict[str, float]:
    """Query accuracy over the episodes, and the frame-averaging baseline on the same ones."""
    batches = list(batches)
    right = total = 0
    for batch in batches:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        right += int((logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    return {"accuracy": right / max(1, total),
            "frame_average_accuracy": frame_average_accuracy(model, batches)}


def _arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("synthetic few-shot episodes")
    group.add_argument("--n-way", type=int, default=5)
    group.add_argument("--k-shot", type=int, default=1)
    group.add_argument("--n-query", type=int, default=1, help="queries per class")
    group.add_argument("--frame-size", type=int, default=32)
    group.add_argument("--eval-size", type=int, default=200, help="evaluation episodes")
    group.add_argument("--width", type=int, default=64, help="hidden size of the tiny CLIP")
    group.add_argument("--train-backbone", action="store_true",
                       help="train the CLIP towers too (the seed keeps them frozen)")
    group.add_argument("--seed-scores", action="store_true",
                       help="the seed's transposed [class, query] x [query, class] product")


def _episodes(args: argparse.Namespace, size: int, split: str, seed: int
              ) -> OrderedSubActionEpisodes:
    return OrderedSubActionEpisodes(size, n_way=args.n_way, k_shot=args.k_shot,
                                    n_query=args.n_query, frame_size=args.frame_size,
                                    split=split, seed=seed)


def _build_model(args: argparse.Namespace) -> TaskAdapterForFewShot:
    return TaskAdapterForFewShot(tiny_task_adapter_config(
        len(synthetic_tokenizer()), frame_size=args.frame_size, width=args.width,
        freeze_backbone=not args.train_backbone, transposed_scores=args.seed_scores))


def _build_data(args: argparse.Namespace) -> tuple[Iterable, Iterable]:
    tokenizer = synthetic_tokenizer()
    shards = max(1, getattr(args, "world_size", 1))
    train = _episodes(args, args.steps, "train", args.seed * shards + getattr(args, "rank", 0))
    held_out = _episodes(args, args.eval_size, "test", _EVAL_SEED)
    return _Batches(train, tokenizer), list(_Batches(held_out, tokenizer))


TRAIN_TASK = TrainTask(name="task_adapter", build_model=_build_model, build_data=_build_data,
                       evaluate=few_shot_accuracy, add_arguments=_arguments)
