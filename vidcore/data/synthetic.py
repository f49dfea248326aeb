"""Synthetic data for the action models, deterministic in (seed, index) and generated on the fly:

- `ProceduralActivities` (ActionLLM, action anticipation): videos as per-frame feature sequences
  (I3D-like). Each video performs one activity, a Markov chain over that activity's script of
  actions (usually the next step, sometimes one skipped), every action lasting a class-specific
  share of the video. Frame features are the action's prototype plus noise; the per-frame
  "clue" is what a noisy frame classifier would predict (ActionLLM's text clues come from such
  a classifier). What comes next depends on the activity and on how far it has got, so a model
  that reads the past beats "repeat the last observed action".
- `OrderedSubActionEpisodes` (Task-Adapter++, few-shot recognition): N-way K-shot episodes of
  short clips in which three coloured sub-actions follow one another. The N classes of an
  episode are orders of the same three sub-actions, so every class shows the same colours for
  about as long: a model that averages frames cannot tell them apart (chance, 1/N).

    videos = ProceduralActivities(256, feature_dim=64, seed=0)
    v = videos[0]              # v.features [T, F], v.labels [T], v.clues [T]
    episodes = OrderedSubActionEpisodes(100, n_way=5, k_shot=1, split="train")
    e = episodes[0]            # e.support [N*K, T, 3, S, S] uint8, e.query, e.class_orders
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ActivityVideo", "ProceduralActivities", "action_names", "Episode",
           "OrderedSubActionEpisodes", "SUB_ACTION_COLOURS"]

_VERBS = ("take", "pour", "stir", "cut", "open", "close", "add", "put", "crack", "fry", "spread",
          "wash", "peel", "mix", "serve", "heat")
_OBJECTS = ("cup", "milk", "egg", "bread", "pan", "bowl", "knife", "sugar", "butter", "juice",
            "tea", "cheese", "salt", "oil", "plate", "lid")


def action_names(num_classes: int) -> list[str]:
    """Distinct two-word action names ("take cup", ...) for `num_classes` <= 256 classes."""
    if not 1 <= num_classes <= len(_VERBS) * len(_OBJECTS):
        raise ValueError(f"action_names: num_classes must be in [1, 256], got {num_classes}")
    # stride 5 through the objects (coprime with 16): neighbouring classes share no word
    return [f"{_VERBS[i % 16]} {_OBJECTS[(5 * i + i // 16) % 16]}" for i in range(num_classes)]


@dataclass(frozen=True)
class ActivityVideo:
    features: Tensor  # float32 [T, F]
    labels: Tensor  # int64 [T], the action of every frame
    clues: Tensor  # int64 [T], a noisy frame classifier's prediction of every frame
    activity: int


class ProceduralActivities(torch.utils.data.Dataset):
    """`size` videos of `num_frames` frames over `num_classes` actions and `num_activities`
    activities.

    The task (activity scripts, action prototypes and typical durations) is drawn from
    `task_seed`, the videos from `seed`: training and evaluation sets share a task and differ in
    `seed`. Scripts are 5-7 distinct actions (activities share actions); a video walks
    its activity's script, skipping a step with probability `skip_probability`, and every action
    lasts its class's typical share of the video times U(0.75, 1.25). `noise` is the standard
    deviation of the feature noise (prototypes have unit-variance entries); the frame classifier
    is right with probability `clue_accuracy`, else it names a random other action.
    """

    def __init__(self, size: int, *, num_classes: int = 12, num_activities: int = 4,
                 feature_dim: int = 2048, num_frames: int = 64, noise: float = 1.0,
                 clue_accuracy: float = 0.8, skip_probability: float = 0.2, seed: int = 0,
                 task_seed: int = 0):
        if num_classes < 3 or num_activities < 1 or feature_dim < 1:
            raise ValueError("ProceduralActivities needs num_classes >= 3, num_activities >= 1 "
                             "and feature_dim >= 1")
        if num_frames < 16:
            raise ValueError(f"ProceduralActivities: num_frames must be >= 16, got {num_frames}")
        if not 0.0 <= clue_accuracy <= 1.0 or not 0.0 <= skip_probability < 1.0:
            raise ValueError("ProceduralActivities: clue_accuracy in [0, 1], skip_probability "
                             "in [0, 1)")
        self.size, self.num_classes, self.num_frames = size, num_classes, num_frames
        self.noise, self.clue_accuracy, self.skip_probability = noise, clue_accuracy, skip_probability
        self.seed = seed
        task = torch.Generator().manual_seed(task_seed)
        self.prototypes = torch.randn(num_classes, feature_dim, generator=task)
        self.typical_share = 0.5 + torch.rand(num_classes, generator=task)
        self.scripts = [self._script(task) for _ in range(num_activities)]

    def _script(self, rng: torch.Generator) -> list[int]:
        steps = min(self.num_classes, int(torch.randint(5, 8, (), generator=rng)))
        return torch.randperm(self.num_classes, generator=rng)[:steps].tolist()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> ActivityVideo:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        activity = int(torch.randint(len(self.scripts), (), generator=rng))
        script = self.scripts[activity]
        steps, at = [], 0
        while at < len(script):
            steps.append(script[at])
            skip = float(torch.rand((), generator=rng)) < self.skip_probability
            at += 2 if skip and at + 2 < len(script) else 1
        actions = torch.tensor(steps)
        shares = self.typical_share[actions] * (0.75 + 0.5 * torch.rand(len(steps), generator=rng))
        labels = actions.repeat_interleave(_frames_per_step(shares, self.num_frames))
        features = self.prototypes[labels] + self.noise * torch.randn(
            self.num_frames, self.prototypes.shape[1], generator=rng)
        wrong = torch.rand(self.num_frames, generator=rng) >= self.clue_accuracy
        other = (labels + 1 + torch.randint(self.num_classes - 1, labels.shape, generator=rng))
        clues = torch.where(wrong, other % self.num_classes, labels)
        return ActivityVideo(features, labels, clues, activity)


def _frames_per_step(shares: Tensor, num_frames: int) -> Tensor:
    """Integer frame counts >= 1 proportional to `shares`, summing to `num_frames`."""
    edges = torch.round(torch.cumsum(shares, 0) / shares.sum() * (num_frames - len(shares)))
    counts = torch.diff(edges, prepend=edges.new_zeros(1)).long() + 1
    return counts


# Sub-actions of the few-shot clips: a square of one colour.
SUB_ACTION_COLOURS = {"red": (230, 40, 40), "green": (40, 210, 60), "blue": (50, 80, 240),
                      "yellow": (235, 215, 40), "cyan": (40, 220, 230), "magenta": (220, 50, 220),
                      "white": (245, 245, 245), "orange": (245, 140, 30)}


@dataclass(frozen=True)
class Episode:
    support: Tensor  # uint8 [n_way * k_shot, T, 3, S, S], way-major (class c: rows c*K .. c*K+K-1)
    support_labels: Tensor  # int64 [n_way * k_shot]
    query: Tensor  # uint8 [n_way * n_query, T, 3, S, S], way-major
    query_labels: Tensor  # int64 [n_way * n_query]
    class_orders: tuple[tuple[str, ...], ...]  # per way, its sub-actions in order


class OrderedSubActionEpisodes(torch.utils.data.Dataset):
    """`size` episodes; class = an order of three sub-actions (colours).

    Every episode draws one set of three colours and uses `n_way` of its six orders as its
    classes (n_way <= 6). The sets are split between "train" and "test" (every third set, in
    the order itertools.combinations lists them, is a test set), so test episodes show colour
    combinations never trained on. A clip gives its sub-actions the most even split of its
    `num_frames` frames in a random order (3, 3 and 2 frames for 8), so no sub-action, whatever
    its place, gets more frames on average; the square's place and size and the background
    noise change from clip to clip.
    """

    def __init__(self, size: int, *, n_way: int = 5, k_shot: int = 1, n_query: int = 1,
                 num_frames: int = 8, frame_size: int = 32, split: str = "train", seed: int = 0):
        if not 2 <= n_way <= 6:
            raise ValueError(f"OrderedSubActionEpisodes: n_way must be in [2, 6], got {n_way}")
        if k_shot < 1 or n_query < 1 or num_frames < 6 or frame_size < 16:
            raise ValueError("OrderedSubActionEpisodes needs k_shot >= 1, n_query >= 1, "
                             "num_frames >= 6 and frame_size >= 16")
        if split not in ("train", "test"):
            raise ValueError(f"OrderedSubActionEpisodes: split must be 'train' or 'test', got "
                             f"{split!r}")
        sets = list(itertools.combinations(SUB_ACTION_COLOURS, 3))
        self.sets = [s for i, s in enumerate(sets) if (i % 3 == 2) == (split == "test")]
        self.size, self.n_way, self.k_shot, self.n_query = size, n_way, k_shot, n_query
        self.num_frames, self.frame_size, self.seed = num_frames, frame_size, seed
        self.split = split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Episode:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + index + (
            0 if self.split == "train" else 500_000_000))
        colours = self.sets[int(torch.randint(len(self.sets), (), generator=rng))]
        orders = list(itertools.permutations(colours))
        picked = torch.randperm(len(orders), generator=rng)[:self.n_way].tolist()
        classes = tuple(orders[i] for i in picked)

        def clips(per_class: int) -> Tensor:
            return torch.stack([self._clip(rng, order) for order in classes
                                for _ in range(per_class)])

        support, query = clips(self.k_shot), clips(self.n_query)
        ways = torch.arange(self.n_way)
        return Episode(support, ways.repeat_interleave(self.k_shot), query,
                       ways.repeat_interleave(self.n_query), classes)

    def _clip(self, rng: torch.Generator, order: tuple[str, ...]) -> Tensor:
        frames, size = self.num_frames, self.frame_size
        # stage lengths: a random order of the most even split (3, 3, 2 for 8 frames), so every
        # sub-action fills the same share of frames on average, whichever place it takes
        even = [frames // 3 + (i < frames % 3) for i in range(3)]
        lengths = torch.tensor(even)[torch.randperm(3, generator=rng)]
        stage = torch.repeat_interleave(torch.arange(3), lengths)
        clip = torch.randint(0, 60, (frames, 3, size, size), generator=rng, dtype=torch.uint8)
        side = size // 2 + int(torch.randint(size // 4, (), generator=rng))
        row, col = (int(torch.randint(size - side + 1, (), generator=rng)) for _ in range(2))
        for t in range(frames):
            colour = torch.tensor(SUB_ACTION_COLOURS[order[int(stage[t])]], dtype=torch.uint8)
            clip[t, :, row:row + side, col:col + side] = colour.view(3, 1, 1)
        return clip
