"""Measuring vidcore on long videos: `profile()` times and sizes every stage of a video's token
pipeline (vidcore against the reference path, over frame counts), `plan()` says how many frames
fit a context under each pooling preset. `cli.py` holds the `vidcore` command."""
from vidcore.profiler.plan import FramePlan, plan
from vidcore.profiler.runner import ProfileError, profile

__all__ = ["profile", "plan", "FramePlan", "ProfileError"]
