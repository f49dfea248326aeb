"""Task-Adapter++ (arXiv 2505.06002; Jaulin-Bage/Task-Adapter-pp) on vidcore ops: few-shot
action recognition with a frozen CLIP.

Videos (T frames) -> CLIP ViT (+ a learned temporal embedding) whose last M blocks reuse their
frozen attention along frames, within frames and across the videos of the episode (support and
query sets encoded separately, as in the seed), each with an adapter -> per-frame CLS features.
Class texts: per class S sub-action sentences ("A video of action about {class}: {sub-action}")
through the CLIP text encoder whose last N blocks also attend across the class's S sentences
(semantic-order adapters) -> S stage embeddings per class. Scores:
- semantic: the frame-to-next-frame attention over the query videos gives T - 1 transition
  features; stage s is compared (cosine) with the transitions of its window (0-2, 2-4, 4-6 for
  T = 8), summed and divided by 9;
- visual: cosine of the frame-averaged query and the frame-averaged class prototype;
- logits = 64 * semantic * visual; cross entropy over the N ways.

use_kernels=True: the three axis attentions by vidcore.ops.axis_attention on strided views of
one QKV projection, CLIP's own attention on vidcore's; False: the seed's rearranges (copies) and
explicit softmax, SDPA.

The seed multiplies its semantic scores, laid out [class, query], elementwise with its visual
scores, laid out [query, class] (models.py:103-111, run.py:51), which only runs when there are
as many queries as classes, and then scores query q against class c with the semantic score of
query c and class q. `transposed_scores=False` (the default) aligns the two; True reproduces
the seed.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.masking_utils import create_causal_mask
from transformers.utils import ModelOutput

import vidcore.integrations.transformers  # noqa: F401  registers attn_implementation="vidcore"
from vidcore.models._init import apply_marked_init
from vidcore.models.kernel_switch import KernelSwitchMixin
from vidcore.models.task_adapter_blocks import (
    SemanticOrderTextLayer,
    TaskAdaptedVisionLayer,
    cosine_matrix,
    frame_transitions,
)

__all__ = ["TaskAdapterConfig", "TaskAdapterForFewShot", "FewShotOutput", "CLIP_VIT_B_16",
           "CLIP_TEXT_B"]

# The seed's backbone: CLIP ViT-B/16 at 224 px and its 512-wide text transformer.
CLIP_VIT_B_16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, image_size=224, patch_size=16, projection_dim=512)
CLIP_TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                   num_attention_heads=8, max_position_embeddings=77, projection_dim=512)


class TaskAdapterConfig(PreTrainedConfig):
    """Task-Adapter++: vision_config / text_config (CLIP; default ViT-B/16 and its text model),
    `num_frames` per video, adapters in the last `adapter_layers` ViT blocks (M: 6 for SSv2,
    2 for Kinetics / HMDB / UCF) and the last `text_adapter_layers` text blocks (N: 2 / 8),
    adapter width = `adapter_ratio` x the block width. `stage_windows`: per sub-action sentence,
    the frame transitions it is compared with (the seed's for 8 frames and 3 sentences).
    `alignment_layernorm`: LayerNorm on the transition attention (the seed: SSv2-Full only).
    `transposed_scores`: the seed's [class, query] x [query, class] product (module docstring).
    """

    model_type = "vidcore_task_adapter"
    sub_configs_defaults: ClassVar = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model",
                                       init_kwargs=CLIP_VIT_B_16),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_text_model",
                                     init_kwargs=CLIP_TEXT_B),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    num_frames: int = 8
    adapter_layers: int = 6
    text_adapter_layers: int = 2
    adapter_ratio: float = 0.25
    stage_windows: list | None = None
    logit_scale: float = 64.0
    alignment_layernorm: bool = False
    transposed_scores: bool = False
    freeze_backbone: bool = True
    use_kernels: bool = True
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.stage_windows is None:
            self.stage_windows = [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
        transitions = self.num_frames - 1
        if not self.stage_windows or any(not w or not all(0 <= f < transitions for f in w)
                                         for w in self.stage_windows):
            raise ValueError(f"TaskAdapterConfig: stage_windows must list, per stage, frame "
                             f"transitions in [0, {transitions}), got {self.stage_windows}")
        for name, layers, config in (("adapter_layers", self.adapter_layers, self.vision_config),
                                     ("text_adapter_layers", self.text_adapter_layers,
                                      self.text_config)):
            if not 0 <= layers <= config.num_hidden_layers:
                raise ValueError(f"TaskAdapterConfig: {name} must be in [0, "
                                 f"{config.num_hidden_layers}], got {layers}")


@dataclass
class FewShotOutput(ModelOutput):
    """loss (with labels); logits [Nq, n_way] = logit_scale * semantic * visual;
    semantic_scores and visual_scores [Nq, n_way] (semantic laid out [n_way, Nq] with
    transposed_scores, as the seed)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    semantic_scores: Tensor | None = None
    visual_scores: Tensor | None = None


class TaskAdapterForFewShot(KernelSwitchMixin, PreTrainedModel):
    """See the module docstring. forward(support_videos, query_videos, support_labels,
    class_input_ids, labels=None) -> FewShotOutput."""

    config_class = TaskAdapterConfig
    base_model_prefix = ""
    main_input_name = "query_videos"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: TaskAdapterConfig):
        super().__init__(config)
        attention = self.attention_name(config.use_kernels)
        self.vision_model = CLIPVisionModel._from_config(config.vision_config,
                                                         attn_implementation=attention)
        self.text_model = CLIPTextModel._from_config(config.text_config,
                                                     attn_implementation=attention)
        vision_width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
        self.visual_projection = nn.Linear(vision_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_width, config.projection_dim, bias=False)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, config.num_frames, vision_width))
        self.vision_adapters = nn.ModuleList(
            TaskAdaptedVisionLayer(vision_width, config.adapter_ratio)
            for _ in range(config.adapter_layers))
        self.text_adapters = nn.ModuleList(
            SemanticOrderTextLayer(text_width, config.adapter_ratio)
            for _ in range(config.text_adapter_layers))
        self.alignment_norm = (nn.LayerNorm(config.projection_dim) if config.alignment_layernorm
                               else nn.Identity())
        self.post_init()
        if config.freeze_backbone:  # the seed trains the adapters and the temporal embedding
            for module in (self.vision_model, self.text_model, self.visual_projection,
                           self.text_projection):
                module.requires_grad_(False)
        self._remember_use_kernels()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        apply_marked_init(module)
        if module is self:
            nn.init.zeros_(self.temporal_embedding)

    def _attention_towers(self) -> Iterator[PreTrainedModel]:
        yield self.vision_model
        yield self.text_model

    @classmethod
    def from_clip(cls, clip: str | os.PathLike | CLIPModel, **config_kwargs
                  ) -> TaskAdapterForFewShot:
        """A model on a CLIP checkpoint (a local directory of a CLIPModel, or a loaded one):
        its towers and projections; adapters and the temporal embedding from the config."""
        clip = clip if isinstance(clip, CLIPModel) else CLIPModel.from_pretrained(clip)
        model = cls(TaskAdapterConfig(vision_config=clip.config.vision_config.to_dict(),
                                      text_config=clip.config.text_config.to_dict(),
                                      projection_dim=clip.config.projection_dim, **config_kwargs))
        for name in ("vision_model", "text_model", "visual_projection", "text_projection"):
            getattr(model, name).load_state_dict(getattr(clip, name).state_dict())
        return model

    # ---- encoders ----------------------------------------------------------------------------
    def encode_videos(self, videos: Tensor) -> Tensor:
        """[N, T, 3, H, W] pixel values -> per-frame features [N, T, projection_dim]; the task
        attention mixes the N videos of this call."""
        count, frames = videos.shape[:2]
        if frames != self.config.num_frames:
            raise ValueError(f"TaskAdapter: videos must have {self.config.num_frames} frames, "
                             f"got {frames}")
        vision = self.vision_model
        x = vision.embeddings(videos.flatten(0, 1).to(self.temporal_embedding.dtype))
        x = (x.view(count, frames, *x.shape[1:]) + self.temporal_embedding[:, :, None]).flatten(0, 1)
        x = vision.pre_layrnorm(x)
        layers = vision.encoder.layers
        first_adapted = len(layers) - len(self.vision_adapters)
        for i, layer in enumerate(layers):
            if i < first_adapted:
                x = layer(x, None)
            else:
                x = self.vision_adapters[i - first_adapted](layer, x, count, self.use_kernels)
        cls_tokens = vision.post_layernorm(x[:, 0])
        return self.visual_projection(cls_tokens).view(count, frames, -1)

    def encode_class_texts(self, input_ids: Tensor) -> Tensor:
        """[C, S, L] token ids (S sub-action sentences per class, each ending with the EOS token)
        -> stage embeddings [C, S, projection_dim]."""
        classes, sentences = input_ids.shape[:2]
        text = self.text_model
        ids = input_ids.flatten(0, 1)
        x = text.embeddings(input_ids=ids)
        mask = create_causal_mask(config=text.config, inputs_embeds=x, attention_mask=None,
                                  past_key_values=None)
        layers = text.encoder.layers
        first_adapted = len(layers) - len(self.text_adapters)
        for i, layer in enumerate(layers):
            if i < first_adapted:
                x = layer(x, mask, is_causal=True)
            else:
                x = self.text_adapters[i - first_adapted](layer, x, mask, classes,
                                                          self.use_kernels)
        x = text.final_layer_norm(x)
        pooled = x[torch.arange(len(ids), device=x.device), _eos_positions(ids, text.config)]
        return self.text_projection(pooled).view(classes, sentences, -1)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, support_videos: Tensor, query_videos: Tensor, support_labels: Tensor,
                class_input_ids: Tensor, labels: Tensor | None = None, **kwargs
                ) -> FewShotOutput:
        """Args:
            support_videos [Ns, T, 3, H, W], support_labels [Ns] int64 in [0, n_way);
            query_videos [Nq, T, 3, H, W]; class_input_ids [n_way, S, L] (the class texts);
            labels [Nq] int64: with them, the loss.
        """
        ways, stages = class_input_ids.shape[:2]
        if stages != len(self.config.stage_windows):
            raise ValueError(f"TaskAdapter: class_input_ids must hold one sentence per stage "
                             f"({len(self.config.stage_windows)}), got {stages}")
        support = self.encode_videos(support_videos)
        query = self.encode_videos(query_videos)
        counts = torch.bincount(support_labels, minlength=ways).clamp(min=1)
        prototypes = support.new_zeros(ways, *support.shape[1:]).index_add(
            0, support_labels, support) / counts[:, None, None].to(support.dtype)
        stage_embeddings = self.encode_class_texts(class_input_ids)  # [n_way, S, D]
        transitions = frame_transitions(query, self.alignment_norm)  # [T - 1, Nq, D]
        semantic = 0
        for stage, window in enumerate(self.config.stage_windows):
            for f in window:
                semantic = semantic + cosine_matrix(stage_embeddings[:, stage], transitions[f])
        semantic = semantic / sum(len(w) for w in self.config.stage_windows)  # [n_way, Nq]
        visual = cosine_matrix(query.mean(1), prototypes.mean(1))  # [Nq, n_way]
        if self.config.transposed_scores:
            if semantic.shape != visual.shape:
                raise ValueError("TaskAdapter: transposed_scores (the seed's product) needs as "
                                 f"many queries as classes, got {visual.shape[0]} queries and "
                                 f"{ways} classes")
            scores = semantic * visual
        else:
            semantic = semantic.T
            scores = semantic * visual
        logits = self.config.logit_scale * scores
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return FewShotOutput(loss=loss, logits=logits, semantic_scores=semantic,
                             visual_scores=visual)


def _eos_positions(ids: Tensor, config) -> Tensor:
    """Where CLIPTextModel pools: the highest id when eos_token_id == 2 (the original CLIP
    tokenizer), else the first EOS token."""
    if config.eos_token_id == 2:
        return ids.argmax(-1)
    return (ids == config.eos_token_id).int().argmax(-1)


AutoConfig.register(TaskAdapterConfig.model_type, TaskAdapterConfig, exist_ok=True)
