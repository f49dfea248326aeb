"""vidcore.data.synthetic: the activity videos follow their scripts, features and clues are what
they claim; the few-shot episodes' classes differ only in the order of their sub-actions."""
import itertools

import pytest
import torch

from vidcore.data.synthetic import (
    SUB_ACTION_COLOURS,
    OrderedSubActionEpisodes,
    ProceduralActivities,
    action_names,
)


def runs(labels):
    values, counts = torch.unique_consecutive(labels, return_counts=True)
    return values.tolist(), counts.tolist()


def test_videos_walk_their_activity_script():
    data = ProceduralActivities(40, num_classes=10, feature_dim=8, num_frames=48, seed=3)
    skips = 0
    for i in range(len(data)):
        video = data[i]
        assert video.features.shape == (48, 8) and video.labels.shape == video.clues.shape == (48,)
        actions, counts = runs(video.labels)
        script = data.scripts[video.activity]
        positions = [script.index(a) for a in actions]  # a script's actions are distinct
        steps = [b - a for a, b in itertools.pairwise(positions)]
        assert actions[0] == script[0] and actions[-1] == script[-1]
        assert all(step in (1, 2) for step in steps) and min(counts) >= 1
        skips += steps.count(2)
    assert skips > 0  # skip_probability 0.2 over ~200 steps


def test_features_are_prototype_plus_noise_and_clues_mostly_right():
    data = ProceduralActivities(30, num_classes=6, feature_dim=64, noise=0.5, clue_accuracy=0.8,
                                seed=1)
    residuals, hits, frames = [], 0, 0
    for i in range(len(data)):
        video = data[i]
        residuals.append(video.features - data.prototypes[video.labels])
        hits += int((video.clues == video.labels).sum())
        frames += len(video.labels)
        assert ((video.clues >= 0) & (video.clues < 6)).all()
    assert torch.cat(residuals).std().item() == pytest.approx(0.5, rel=0.05)
    assert hits / frames == pytest.approx(0.8, abs=0.03)


def test_deterministic_and_task_shared_across_seeds():
    a, b = ProceduralActivities(3, feature_dim=4, seed=0), ProceduralActivities(3, feature_dim=4,
                                                                                seed=0)
    assert torch.equal(a[2].features, b[2].features) and torch.equal(a[2].clues, b[2].clues)
    other = ProceduralActivities(3, feature_dim=4, seed=1)
    assert a.scripts == other.scripts and torch.equal(a.prototypes, other.prototypes)
    assert not torch.equal(a[0].features, other[0].features)


def test_action_names_are_distinct():
    names = action_names(48)
    assert len(set(names)) == 48 and all(len(n.split()) == 2 for n in names)


def _stage_colours(clip):
    """The colour of the square in each frame (the brightest pixel's RGB)."""
    colours = []
    lookup = {tuple(rgb): name for name, rgb in SUB_ACTION_COLOURS.items()}
    for frame in clip:
        flat = frame.flatten(1)
        colours.append(lookup[tuple(flat[:, flat.sum(0).argmax()].tolist())])
    return colours


def test_episode_classes_are_orders_of_one_colour_set():
    data = OrderedSubActionEpisodes(5, n_way=5, k_shot=2, n_query=1, num_frames=8,
                                    frame_size=16, seed=4)
    for i in range(len(data)):
        episode = data[i]
        assert episode.support.shape == (10, 8, 3, 16, 16) and episode.query.shape[0] == 5
        assert episode.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        orders = episode.class_orders
        assert len(set(orders)) == 5 and len({frozenset(o) for o in orders}) == 1
        for clip, label in zip(episode.support, episode.support_labels, strict=True):
            colours, counts = runs(torch.tensor([list(SUB_ACTION_COLOURS).index(c)
                                                 for c in _stage_colours(clip)]))
            assert [list(SUB_ACTION_COLOURS)[c] for c in colours] == list(orders[label])
            assert sorted(counts) == [2, 3, 3]  # the even split, in a random order


def test_train_and_test_episodes_use_disjoint_colour_sets():
    train = OrderedSubActionEpisodes(30, split="train", frame_size=16)
    test = OrderedSubActionEpisodes(30, split="test", frame_size=16)
    sets = lambda data: {frozenset(data[i].class_orders[0]) for i in range(len(data))}  # noqa: E731
    assert not sets(train) & sets(test)
    with pytest.raises(ValueError, match="n_way must be in"):
        OrderedSubActionEpisodes(1, n_way=7)
