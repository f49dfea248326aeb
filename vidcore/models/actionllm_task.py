"""ActionLLM's training task on ProceduralActivities (`python -m vidcore.train actionllm`):
a tiny default model, samples observed at 20/30/50% (the seed's Breakfast fractions) with their
anticipation targets, and the anticipation protocol's MoC accuracy next to the "repeat the last
observed action" baseline."""
from __future__ import annotations

import argparse
import random
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from vidcore.data.synthetic import ActivityVideo, ProceduralActivities, action_names
from vidcore.models.actionllm import ActionLLMConfig, ActionLLMForAnticipation
from vidcore.models.anticipation import (
    FUTURE_FRACTION,
    IGNORE_INDEX,
    OBSERVATIONS,
    PREDICTIONS,
    anticipation_accuracy,
    anticipation_targets,
    decode_anticipation,
    repeat_last_action,
)
from vidcore.models.processing import word_tokenizer
from vidcore.train import TrainTask

__all__ = ["TRAIN_TASK", "tiny_actionllm_config", "anticipation_sample", "collate",
           "evaluate_anticipation", "TRAIN_OBSERVATIONS"]

TRAIN_OBSERVATIONS = (0.2, 0.3, 0.5)  # the seed's Breakfast training fractions
_EVAL_SEED = 1_000_000


def tiny_actionllm_config(num_classes: int, feature_dim: int, *, width: int = 64,
                          **overrides) -> ActionLLMConfig:
    """A 2-layer Llama of `width`, the CMIB at width 32 with 8 heads (head dim 4, as the seed's
    128 / 32), 8 future queries; class names tokenised by a word tokenizer over the synthetic
    action names."""
    tokenizer = word_tokenizer(action_names(num_classes))
    names = [tokenizer(name, add_special_tokens=False)["input_ids"]
             for name in action_names(num_classes)]
    settings = dict(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=width,
                         intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=max(1, width // 16),
                         num_key_value_heads=max(1, width // 32),
                         max_position_embeddings=1024),
        num_classes=num_classes, feature_dim=feature_dim, feature_hidden_size=64,
        interaction_size=32, interaction_heads=8, interaction_ffn_size=64,
        num_future_queries=8, class_name_token_ids=names)
    settings.update(overrides)
    return ActionLLMConfig(**settings)


def anticipation_sample(video: ActivityVideo, observed_fraction: float, num_queries: int,
                        num_classes: int) -> dict[str, Tensor]:
    """One observed prefix of a video with its targets (the seed's _make_input)."""
    frames = len(video.labels)
    observed, future = int(observed_fraction * frames), int(FUTURE_FRACTION * frames)
    actions, durations = anticipation_targets(video.labels, observed, future, num_queries,
                                              num_classes)
    return {"video_features": video.features[:observed], "clue_labels": video.clues[:observed],
            "segmentation_labels": video.labels[:observed], "action_labels": actions,
            "duration_labels": durations}


def collate(samples: Sequence[dict[str, Tensor]]) -> dict:
    """Right-pad the observed frames; `observed_lengths` stays on the host."""
    lengths = [len(s["clue_labels"]) for s in samples]
    pad = torch.nn.utils.rnn.pad_sequence
    batch = {
        "video_features": pad([s["video_features"] for s in samples], batch_first=True),
        "clue_labels": pad([s["clue_labels"] for s in samples], batch_first=True),
        "segmentation_labels": pad([s["segmentation_labels"] for s in samples],
                                   batch_first=True, padding_value=IGNORE_INDEX),
        "action_labels": torch.stack([s["action_labels"] for s in samples]),
        "duration_labels": torch.stack([s["duration_labels"] for s in samples]),
    }
    batch["attention_mask"] = (torch.arange(max(lengths))[None]
                               < torch.tensor(lengths)[:, None]).long()
    batch["observed_lengths"] = lengths
    return batch


class _TrainingBatches:
    """Batches of random videos at random observed fractions, `steps` of them, reproducible."""

    def __init__(self, videos: ProceduralActivities, batch_size: int, steps: int,
                 num_queries: int, seed: int):
        self.videos, self.batch_size, self.steps = videos, batch_size, steps
        self.num_queries, self.seed = num_queries, seed

    def __iter__(self):
        rng = random.Random(self.seed)
        for _ in range(self.steps):
            yield collate([anticipation_sample(self.videos[rng.randrange(len(self.videos))],
                                               rng.choice(TRAIN_OBSERVATIONS), self.num_queries,
                                               self.videos.num_classes)
                           for _ in range(self.batch_size)])


def evaluation_batches(videos: ProceduralActivities, batch_size: int, num_queries: int
                       ) -> list[dict]:
    """Every video observed at 20% and at 30%; each batch carries the full `video_labels` and
    its `observed_fraction` for scoring."""
    batches = []
    for fraction in OBSERVATIONS:
        for start in range(0, len(videos), batch_size):
            chosen = [videos[i] for i in range(start, min(len(videos), start + batch_size))]
            batch = collate([anticipation_sample(v, fraction, num_queries, videos.num_classes)
                             for v in chosen])
            batch["video_labels"] = [v.labels for v in chosen]
            batch["observed_fraction"] = fraction
            batches.append(batch)
    return batches


@torch.no_grad()
def evaluate_anticipation(model: ActionLLMForAnticipation, batches: Iterable[dict]
                          ) -> dict[str, float]:
    """MoC at every (observation, horizon) of the protocol for the model and for repeating the
    last observed action; `accuracy` = the model's MoC at obs 30% / pred 50%."""
    classes = model.config.num_classes
    predicted: dict[float, list] = {f: [] for f in OBSERVATIONS}
    baseline: dict[float, list] = {f: [] for f in OBSERVATIONS}
    for batch in batches:
        batch = dict(batch)
        labels, fraction = batch.pop("video_labels"), batch.pop("observed_fraction")
        for key in ("segmentation_labels", "action_labels", "duration_labels"):
            batch.pop(key)
        out = model(**batch)
        for b, video_labels in enumerate(labels):
            frames = len(video_labels)
            observed, future = int(fraction * frames), int(FUTURE_FRACTION * frames)
            guess = decode_anticipation(out.action_logits[b].float(),
                                        out.duration_logits[b].float(), future, classes)
            predicted[fraction].append((video_labels, guess))
            baseline[fraction].append((video_labels,
                                       repeat_last_action(video_labels, observed, future)))
    metrics = {}
    for name, runs in (("moc", predicted), ("baseline_moc", baseline)):
        for fraction, videos in runs.items():
            scores = anticipation_accuracy(videos, fraction, classes, PREDICTIONS)
            for horizon, score in scores.items():
                metrics[f"{name}_obs{round(100 * fraction)}_pred{round(100 * horizon)}"] = score
    metrics["accuracy"] = metrics["moc_obs30_pred50"]
    return metrics


def _arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("synthetic procedural activities")
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument("--num-classes", type=int, default=12)
    group.add_argument("--num-activities", type=int, default=4)
    group.add_argument("--feature-dim", type=int, default=2048)
    group.add_argument("--num-frames", type=int, default=64)
    group.add_argument("--train-size", type=int, default=2048, help="training videos")
    group.add_argument("--eval-size", type=int, default=256, help="evaluation videos")
    group.add_argument("--num-queries", type=int, default=8, help="future queries")
    group.add_argument("--width", type=int, default=64, help="hidden size of the tiny LLM")
    group.add_argument("--train-llm", action="store_true",
                       help="train the LLM too (the seed keeps it frozen)")
    group.add_argument("--seed-position-encoding", action="store_true",
                       help="the seed's CMIB encoding indexed by batch, not by token")
    group.add_argument("--seed-frozen-heads", action="store_true",
                       help="the seed's action and segmentation heads, frozen at random init")


def _videos(args: argparse.Namespace, size: int, seed: int) -> ProceduralActivities:
    return ProceduralActivities(size, num_classes=args.num_classes,
                                num_activities=args.num_activities, feature_dim=args.feature_dim,
                                num_frames=args.num_frames, seed=seed, task_seed=args.seed)


def _build_model(args: argparse.Namespace) -> ActionLLMForAnticipation:
    return ActionLLMForAnticipation(tiny_actionllm_config(
        args.num_classes, args.feature_dim, width=args.width,
        num_future_queries=args.num_queries, freeze_language_model=not args.train_llm,
        position_encoding_over_batch=args.seed_position_encoding,
        train_heads=not args.seed_frozen_heads))


def _build_data(args: argparse.Namespace) -> tuple[Iterable, Iterable]:
    queries = args.num_queries
    shards = max(1, getattr(args, "world_size", 1))
    train = _TrainingBatches(_videos(args, args.train_size, args.seed + 1), args.batch_size,
                             args.steps, queries, seed=args.seed * shards + getattr(args, "rank", 0))
    held_out = evaluation_batches(_videos(args, args.eval_size, _EVAL_SEED), args.batch_size,
                                  queries)
    return train, held_out


TRAIN_TASK = TrainTask(name="actionllm", build_model=_build_model, build_data=_build_data,
                       evaluate=evaluate_anticipation, add_arguments=_arguments)
