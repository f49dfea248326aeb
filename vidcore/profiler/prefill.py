"""The LLM prefill stage: a compact language model saved with save_pretrained (one of vidcore's
video LLMs, whose language model is used, or any transformers causal LM) runs its prompt
forward over the profiled video tokens, once with attn_implementation="vidcore"
(vidcore.ops.attention) and once with "sdpa" (the seeds' path), on the same weights."""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["PrefillModel", "load_prefill_model"]


class PrefillModel:
    """A causal LM and how to feed it: `embed(tokens)` maps the profiler's [L, D] tokens to the
    LM's width (a fixed seeded projection stands in for the model's projector when the widths
    differ) and `providers(embeds)` gives the two prefill calls."""

    def __init__(self, lm: nn.Module, label: str, seed: int = 0):
        self.lm, self.label, self.seed = lm, label, seed
        self.hidden = int(lm.config.hidden_size)

    def embed(self, tokens: Tensor) -> Tensor:
        if tokens.shape[1] == self.hidden:
            return tokens
        generator = torch.Generator().manual_seed(self.seed)
        proj = torch.randn(tokens.shape[1], self.hidden, generator=generator) / tokens.shape[1] ** 0.5
        return tokens @ proj.to(tokens)

    def _prefill(self, embeds: Tensor, attention: str) -> Tensor:
        self.lm.set_attn_implementation(attention)
        out = self.lm(inputs_embeds=embeds[None], use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]

    def providers(self, embeds: Tensor) -> dict[str, Callable[[], Tensor]]:
        return {"vidcore": lambda: self._prefill(embeds, "vidcore"),
                "reference": lambda: self._prefill(embeds, "sdpa")}


def load_prefill_model(model_dir: str | os.PathLike, *, device: str, dtype: torch.dtype,
                       seed: int = 0) -> PrefillModel:
    """The language model of a directory written by save_pretrained: a vidcore video LLM
    (ST-LLM, MiniGPT4-Video) or a plain causal LM. ValueError when it is neither."""
    import importlib

    from transformers import AutoModelForCausalLM

    import vidcore.integrations.transformers  # noqa: F401  registers attn_implementation="vidcore"
    from vidcore.models.chat import _MODELS as VIDEO_MODELS

    path = os.fspath(model_dir)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"--model {path!r} holds no config.json (a directory written by "
                         "save_pretrained)")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    try:
        if model_type in VIDEO_MODELS:
            module_name, class_name, _ = VIDEO_MODELS[model_type]
            model_class = getattr(importlib.import_module(module_name), class_name)
            lm = model_class.from_pretrained(path).language_model
        else:
            lm = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--model {path!r}: cannot load a {model_type!r} model: {e}") from e
    label = f"{type(lm).__name__} from {os.path.basename(os.path.normpath(path))}"
    return PrefillModel(lm.to(device=device, dtype=dtype).eval(), label, seed)
