"""vidcore: fused kernels for the token operations of video LLMs, as PyTorch ops.

Public ops live in `vidcore.ops` (each backed by one `torch.ops.vidcore.*` op);
`vidcore.reference` is their plain-PyTorch specification; `vidcore.info()` reports which
fast backends are live on this machine and why the others are not.
"""
from importlib.metadata import version

from vidcore import ops, reference
from vidcore.info import info

__version__ = version("vidcore")
__all__ = ["info", "ops", "reference", "__version__"]
