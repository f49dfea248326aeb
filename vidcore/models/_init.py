"""Initialisation the seeds ask for, inside transformers' weight initialisation.

transformers (5.x) initialises a model by calling `_init_weights` on the modules that hold
parameters themselves (the Linear layers, not the adapter around them), and skips weights loaded
from a checkpoint. So a layer that must start at zero or with xavier weights carries a mark, set
where it is built, that the model's `_init_weights` applies after the default init.
"""
from __future__ import annotations

from torch import nn
from transformers import initialization as init

__all__ = ["mark_init", "apply_marked_init"]

_SCHEMES = ("zeros", "xavier")


def mark_init(linear: nn.Linear, scheme: str) -> nn.Linear:
    """Initialise `linear` with `scheme` ("zeros": weight and bias 0; "xavier": xavier-uniform
    weight, zero bias), now and whenever the model initialises its weights."""
    if scheme not in _SCHEMES:
        raise ValueError(f"mark_init: scheme must be one of {_SCHEMES}, got {scheme!r}")
    linear.vidcore_init = scheme
    apply_marked_init(linear)
    return linear


def apply_marked_init(module: nn.Module) -> None:
    """Apply a module's mark (if any); weights loaded from a checkpoint stay as they are."""
    scheme = getattr(module, "vidcore_init", None)
    if scheme is None:
        return
    if scheme == "zeros":
        init.zeros_(module.weight)
    else:
        init.xavier_uniform_(module.weight)
    if module.bias is not None:
        init.zeros_(module.bias)
