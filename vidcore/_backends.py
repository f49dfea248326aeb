"""Which compiled pieces are present, and why not when they are missing.

`_C` that was never built is allowed (the reference runs everywhere); a `_C` that exists but
fails to load raises, because a silently missing kernel would hide a broken build.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch  # noqa: F401  _C links against libtorch, which importing torch loads

__all__ = ["EXTENSION", "EXTENSION_MISSING", "TRITON", "TRITON_MISSING", "build_info"]


def _load_extension() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("vidcore._C"), None
    except ModuleNotFoundError as e:
        if e.name != "vidcore._C":
            raise
        return None, "vidcore._C was not built (pip install --no-build-isolation -e .)"


def _load_triton() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("triton"), None
    except ImportError as e:
        return None, f"Triton is not installed ({e})"


EXTENSION, EXTENSION_MISSING = _load_extension()
TRITON, TRITON_MISSING = _load_triton()


def build_info() -> dict[str, object]:
    """How vidcore._C was built (written by setup.py), or {} when it was not built."""
    if EXTENSION is None:
        return {}
    from vidcore import _build_info

    return {k: v for k, v in vars(_build_info).items() if k.isupper()}
