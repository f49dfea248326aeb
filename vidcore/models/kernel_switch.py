"""The `use_kernels` switch of vidcore's models: vidcore's ops and attention (True) or the
seeds' plain-torch path (False), stored in the config, restored by from_pretrained.

transformers' PreTrainedModel has its own `use_kernels` (Hugging Face hub kernels), which
from_pretrained resets to False after loading; the mixin overrides it and puts the saved choice
back afterwards.
"""
from __future__ import annotations

from collections.abc import Iterator

from transformers import PreTrainedModel

__all__ = ["KernelSwitchMixin", "KERNEL_ATTENTION", "REFERENCE_ATTENTION"]

KERNEL_ATTENTION = "vidcore"
REFERENCE_ATTENTION = "sdpa"


class KernelSwitchMixin:
    """Mix into a PreTrainedModel whose config has `use_kernels`; `_attention_towers()` yields
    the transformers sub-models whose attention follows the switch."""

    @staticmethod
    def attention_name(use_kernels: bool) -> str:
        return KERNEL_ATTENTION if use_kernels else REFERENCE_ATTENTION

    def _attention_towers(self) -> Iterator[PreTrainedModel]:
        raise NotImplementedError

    def _remember_use_kernels(self) -> None:
        """Call at the end of __init__: from_pretrained restores this value."""
        self._configured_use_kernels = bool(self.config.use_kernels)

    @property
    def use_kernels(self) -> bool:
        """True: vidcore ops and attention; False: the seed's plain torch path (SDPA)."""
        return bool(self.config.use_kernels)

    @use_kernels.setter
    def use_kernels(self, value: bool) -> None:
        self.set_use_kernels(value)

    def set_use_kernels(self, use_kernels: bool, kernel_config=None, mode=None) -> None:
        """vidcore's switch (replaces transformers' hub-kernel `kernelize`)."""
        if kernel_config is not None:
            raise ValueError(f"{type(self).__name__}: kernel_config (hub kernels) is not "
                             "supported; use_kernels switches between vidcore's ops and the "
                             "reference path")
        self.config.use_kernels = bool(use_kernels)
        for tower in self._attention_towers():
            tower.set_attn_implementation(self.attention_name(bool(use_kernels)))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args,
                        use_kernels: bool | None = None, **kwargs):
        """transformers' from_pretrained (local directories); `use_kernels` overrides the saved
        configuration's choice."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model.set_use_kernels(model._configured_use_kernels if use_kernels is None
                              else use_kernels)
        return model
