"""vidcore: fused kernels for the token operations of video LLMs, as PyTorch ops.

Public ops live in `vidcore.ops` (each backed by one `torch.ops.vidcore.*` op);
`vidcore.reference` is their plain-PyTorch specification; `vidcore.info()` reports which
fast backends are live on this machine and why the others are not; `vidcore.profile()` times
a video's token pipeline stage by stage and `vidcore.plan()` says how many frames fit a context
(both from vidcore.profiler, imported on first use).
"""
from importlib.metadata import version

from vidcore import ops, reference
from vidcore.info import info

__version__ = version("vidcore")
__all__ = ["info", "ops", "reference", "profile", "plan", "__version__"]


def __getattr__(name: str):
    if name in ("profile", "plan"):  # the profiler (rich, its stages) loads when first used
        from vidcore import profiler

        return getattr(profiler, name)
    raise AttributeError(f"module 'vidcore' has no attribute {name!r}")
