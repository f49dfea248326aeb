"""What ST-LLM and MiniGPT4-Video share: a vision tower (any transformers vision model) with the
seeds' `ln_vision`, a causal LM (any transformers decoder: Llama, Qwen2, ...), the switch between
vidcore's kernels and the seeds' reference path, and the LlavaNextVideo-style inference forward
that `generate()` drives.

Two forms of `forward`:
- with `labels` (training, evaluation): kernels -> one packed sequence per batch
  (vidcore.ops.interleave_pack, varlen attention, logits [1, total, V]); reference -> the seeds'
  padded batch built sample by sample, SDPA, logits [B, L_max, V]. Both return `cu_seqlens`
  (the packed offsets of each sample's sequence) so the two layouts compare row for row.
- without `labels` (inference, `generate()`): the placeholders of `input_ids` are replaced by
  the video tokens (there must be exactly as many), then the LM runs on the padded batch with its
  KV cache; attention is vidcore's (varlen over the valid tokens) or SDPA.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

import vidcore.integrations.transformers  # noqa: F401  registers attn_implementation="vidcore"
from vidcore.models.kernel_switch import KERNEL_ATTENTION, REFERENCE_ATTENTION, KernelSwitchMixin
from vidcore.models.sequence import SequenceLayout, sequence_layout

__all__ = ["VideoQAOutput", "VideoLLMPreTrainedModel", "KERNEL_ATTENTION", "REFERENCE_ATTENTION",
           "CLIP_VIT_L_14"]

# The default vision tower: CLIP ViT-L/14 at 224 px (16 x 16 patches + CLS, 1024 wide); the seeds'
# EVA-CLIP-g/14 is hidden_size=1408, intermediate_size=6144, 40 layers, 16 heads.
CLIP_VIT_L_14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768)


@dataclass
class VideoQAOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast + the parts of the loss and the layout of `logits`.

    cu_seqlens: [B + 1] int32 offsets of each sample's assembled sequence (training form);
        logits are packed [1, total, V] with kernels, padded [B, L_max, V] without.
    lm_loss / mvm_loss: the answer cross entropy and (ST-LLM) the masked-video-modelling loss.
    """

    lm_loss: Tensor | None = None
    mvm_loss: Tensor | None = None
    cu_seqlens: Tensor | None = None


class VideoLLMPreTrainedModel(KernelSwitchMixin, PreTrainedModel):
    """Base of the vidcore video-QA models (not used on its own)."""

    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _skip_keys_device_placement: ClassVar = ["past_key_values"]

    # ---- construction -------------------------------------------------------------------
    def _build_towers(self, config) -> None:
        """vision_tower + vision_norm (the seeds' ln_vision) and language_model from configs."""
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.vision_norm = nn.LayerNorm(config.vision_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(
            config.text_config, attn_implementation=self.attention_name(config.use_kernels))
        self._remember_use_kernels()

    def _freeze(self) -> None:
        if self.config.freeze_vision:
            self.vision_tower.requires_grad_(False)
            self.vision_norm.requires_grad_(False)

    @classmethod
    def from_parts(cls, *, vision_model: str | os.PathLike | PreTrainedModel,
                   language_model: str | os.PathLike | PreTrainedModel, **config_kwargs):
        """A model whose vision tower and LM come from local checkpoints (directories) or
        loaded models (a CLIP / SigLIP dual encoder gives its vision half); the rest
        (projector, Q-Former, ...) is initialised from the config."""
        vision = _vision_tower(_load(AutoModel, vision_model))
        text = _load(AutoModelForCausalLM, language_model)
        config = cls.config_class(vision_config=vision.config.to_dict(),
                                  text_config=text.config.to_dict(), **config_kwargs)
        model = cls(config)
        model.vision_tower.load_state_dict(vision.state_dict())
        model.language_model.load_state_dict(text.state_dict())
        return model

    # ---- vidcore kernels vs the seeds' reference path: KernelSwitchMixin -------------------
    def _attention_towers(self):
        yield self.language_model

    # ---- embeddings (for generate and resizing) --------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # ---- shared pieces of the forward ------------------------------------------------------
    def encode_frames(self, pixel_values_videos: Tensor | None,
                      video_features: Tensor | None = None) -> Tensor:
        """[B, T, 3, H, W] frames (or the vision tower's outputs [B, T, P, Dv], precomputed)
        -> ln_vision(tokens) [B, T, P, Dv]."""
        if video_features is None:
            if pixel_values_videos is None or pixel_values_videos.dim() != 5:
                raise ValueError("pixel_values_videos must be [B, T, 3, H, W] (or pass "
                                 "video_features [B, T, P, D])")
            batch, frames = pixel_values_videos.shape[:2]
            layer = self.config.vision_feature_layer
            dtype = self.vision_norm.weight.dtype
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
                out = self.vision_tower(pixel_values=pixel_values_videos.flatten(0, 1).to(dtype),
                                        output_hidden_states=layer != -1)
                tokens = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
            video_features = tokens.unflatten(0, (batch, frames))
        if video_features.dim() != 4:
            raise ValueError(f"video_features must be [B, T, P, D], got {tuple(video_features.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
            return self.vision_norm(video_features)

    def decode_packed(self, embeds: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
                      max_seqlen: int) -> Tensor:
        """The LM's last hidden state (after its final norm) on a packed batch [total, D]."""
        out = self.get_decoder()(inputs_embeds=embeds[None], position_ids=position_ids[None],
                                 cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                                 max_length_q=max_seqlen, max_length_k=max_seqlen, use_cache=False)
        return out.last_hidden_state[0]

    def decode_padded(self, embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """The seeds' LM call: a padded batch with output_hidden_states=True (all layers kept, as
        the seeds do), of which the last is used. -> [B, L, D]."""
        out = self.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                 output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1]

    def layout_for(self, input_ids: Tensor, attention_mask: Tensor | None,
                   layout: SequenceLayout | None) -> SequenceLayout:
        return layout if layout is not None else sequence_layout(
            input_ids, attention_mask, self.config.video_token_index)

    def video_tokens_for_prompt(self, features: Tensor) -> Tensor:
        """Video tokens [B, tokens, D] in the order the prompt's placeholders take them, with
        no masking (inference). Implemented by each model."""
        raise NotImplementedError

    def _training_forward(self, input_ids: Tensor, labels: Tensor, layout: SequenceLayout,
                          features: Tensor, mask_seed: int | None) -> VideoQAOutput:
        """The forward with labels (see the module docstring). Implemented by each model."""
        raise NotImplementedError

    def forward(self, input_ids: Tensor | None = None, pixel_values_videos: Tensor | None = None,
                attention_mask: Tensor | None = None, labels: Tensor | None = None, *,
                video_features: Tensor | None = None,
                sequence_layout: SequenceLayout | None = None, mask_seed: int | None = None,
                position_ids: Tensor | None = None, past_key_values=None,
                inputs_embeds: Tensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | Tensor = 0, **kwargs) -> VideoQAOutput:
        """LlavaNextVideo's interface. `video_features`: the vision tower's outputs [B, T, P, Dv]
        instead of frames; `sequence_layout`: the collate function's host-side plan (else derived
        from input_ids); `mask_seed`: fixes a training forward's dynamic mask (ST-LLM; default:
        torch's RNG)."""
        has_video = pixel_values_videos is not None or video_features is not None
        features = self.encode_frames(pixel_values_videos, video_features) if has_video else None
        if labels is None:
            return self._inference_forward(input_ids, features, attention_mask, position_ids,
                                           past_key_values, inputs_embeds, use_cache,
                                           logits_to_keep, **kwargs)
        if features is None or input_ids is None:
            raise ValueError("a training forward (labels given) needs input_ids and a video")
        layout = self.layout_for(input_ids, attention_mask, sequence_layout)
        return self._training_forward(input_ids, labels, layout, features, mask_seed)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False,
                                      **kwargs):
        """transformers drops pixel_values_videos after the prefill; do the same for
        precomputed video_features (the video is in the KV cache by then)."""
        inputs = super().prepare_inputs_for_generation(
            *args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            inputs.pop("video_features", None)
        return inputs

    def _inference_forward(self, input_ids, features, attention_mask, position_ids,
                           past_key_values, inputs_embeds, use_cache, logits_to_keep, **kwargs):
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds)")
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if features is not None:
            if input_ids is None:
                raise ValueError("videos need input_ids holding the video placeholder tokens")
            visual = self.video_tokens_for_prompt(features).to(inputs_embeds.dtype)
            placeholders = (input_ids == self.config.video_token_index).unsqueeze(-1)
            expected = visual.shape[0] * visual.shape[1]
            if int(placeholders.sum()) != expected:  # one host sync per prompt, like LLaVA's check
                raise ValueError(f"input_ids hold {int(placeholders.sum())} video placeholders, "
                                 f"the videos give {expected} tokens; build inputs with the "
                                 f"model's processor")
            inputs_embeds = inputs_embeds.masked_scatter(placeholders, visual)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, past_key_values=past_key_values,
                                  use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        return VideoQAOutput(logits=out.logits, past_key_values=out.past_key_values)


def _vision_tower(model: PreTrainedModel) -> PreTrainedModel:
    """The vision half of a dual-encoder checkpoint (CLIPModel, SiglipModel: a `vision_model`
    beside a text model) as its own vision model; any other model as it is."""
    if not (hasattr(model.config, "vision_config") and hasattr(model, "vision_model")):
        return model
    tower = AutoModel.from_config(model.config.vision_config)
    tower.load_state_dict(model.vision_model.state_dict())
    return tower


def _load(auto_class, source):
    if isinstance(source, PreTrainedModel):
        return source
    return auto_class.from_pretrained(source)
