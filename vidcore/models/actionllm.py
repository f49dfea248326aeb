"""ActionLLM (arXiv 2501.00795; 2tianyao1/ActionLLM) on vidcore ops: long-term action
anticipation with a frozen LLM.

Per observed frame: a feature (I3D-like, 2048-d) -> FeatureProjection -> a video token, and a
text clue = the mean of the LLM's token embeddings of the action name a frame classifier
predicted for that frame. `num_future_queries` future tokens (the projection of a constant
input, as in the seed). The three streams go through the Cross-Modality Interaction Block (in a
shared bottleneck: down, CMIB, up, residual), then [text | video | future] through the LLM with
bidirectional attention and a rank-4 action-tuning adapter on the input of every attention
layer. Heads: an action class (C + NONE) and a duration per future token, a segmentation class
per observed frame from its text and its video token. Loss (the seed's):
CE(actions) + duration error + CE(text segmentation) + CE(video segmentation).

use_kernels=True: CMIB by vidcore.ops.multi_source_attention, samples of equal length batched;
the LLM on one packed sequence per batch with vidcore's varlen non-causal attention.
use_kernels=False (the reference path): the seed's nine explicit softmaxes sample by sample,
and a right-padded batch through SDPA with a padding mask.

Fixed where the seed's code is wrong (seeds.md 2a), each with a config flag for the original:
- `position_encoding_over_batch=False`: the CMIB's sinusoidal encoding is indexed by token
  position; the seed indexes it by batch (pe[:x.size(0)] on [B, S, D]), adding one vector to
  every token;
- `train_heads=True`: the action and segmentation heads are trained; the seed freezes them at
  their random initialisation (only names containing "adapter" train).
Also: the duration error is summed over queries and averaged over the batch (the seed sums both;
its batch size is 1), and attention dropout on the nine maps (the seed: 0.1) is available on the
reference path only (`interaction_attention_dropout`, default 0).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

import vidcore.integrations.transformers  # noqa: F401  registers attn_implementation="vidcore"
from vidcore.models._init import apply_marked_init
from vidcore.models.actionllm_blocks import (
    ActionTuningAdapter,
    CrossModalityInteraction,
    FeatureProjection,
)
from vidcore.models.anticipation import IGNORE_INDEX, normalize_durations
from vidcore.models.kernel_switch import KernelSwitchMixin

__all__ = ["ActionLLMConfig", "ActionLLMForAnticipation", "ActionLLMOutput"]


class ActionLLMConfig(PreTrainedConfig):
    """ActionLLM: text_config (the LLM; default Llama, the seed's LLaMA-7B is hidden 4096, 32
    layers, 32 heads), `num_classes` actions (+ NONE for the future heads), per-frame features
    of `feature_dim`, `num_future_queries` future tokens.

    feature_hidden_size: the FeatureProjection's hidden width (the seed's hidden_proj, 128).
    interaction_size / interaction_heads / interaction_ffn_size: the CMIB bottleneck width
        (128), its heads (default: the LLM's heads, 32 in the seed: head dim 4) and SwiGLU width
        (default 512, LLaMA's rule for 4 x 128).
    adapter_rank / adapter_groups: the action-tuning adapters (4 and 2).
    class_name_token_ids: per class, the LLM token ids of its name (text clues average their
        embeddings); without them, pass `clue_embeds` to forward.
    freeze_language_model: the LLM (and so the clue embeddings) stays frozen, as in the seed.
    position_encoding_over_batch / train_heads: see the module docstring (seed: True / False).
    """

    model_type = "vidcore_actionllm"
    sub_configs_defaults: ClassVar = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    text_config: dict | PreTrainedConfig | None = None
    num_classes: int = 48
    feature_dim: int = 2048
    feature_hidden_size: int = 128
    num_future_queries: int = 8
    interaction_size: int = 128
    interaction_heads: int | None = None
    interaction_ffn_size: int = 512
    interaction_attention_dropout: float = 0.0
    adapter_rank: int = 4
    adapter_groups: int = 2
    dropout: float = 0.1
    norm_eps: float = 1e-5
    class_name_token_ids: list | None = None
    freeze_language_model: bool = True
    position_encoding_over_batch: bool = False
    train_heads: bool = True
    use_kernels: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.interaction_heads is None:
            self.interaction_heads = self.text_config.num_attention_heads
        if self.num_classes < 1 or self.num_future_queries < 1:
            raise ValueError("ActionLLMConfig: num_classes and num_future_queries must be >= 1")
        names = self.class_name_token_ids
        if names is not None and (len(names) != self.num_classes or not all(names)):
            raise ValueError(f"ActionLLMConfig: class_name_token_ids needs one non-empty list of "
                             f"token ids per class ({self.num_classes}), got {len(names)}")
        self.text_config.is_causal = False  # transformers builds bidirectional masks from this


@dataclass
class ActionLLMOutput(ModelOutput):
    """loss (with labels); action_logits [B, Q, C + 1] (class C = NONE); duration_logits [B, Q]
    (normalize_durations gives each query's share of the future); segmentation_logits and
    text_segmentation_logits [B, S, C] per observed frame (zeros at padding); the loss parts."""

    loss: Tensor | None = None
    action_logits: Tensor | None = None
    duration_logits: Tensor | None = None
    segmentation_logits: Tensor | None = None
    text_segmentation_logits: Tensor | None = None
    action_loss: Tensor | None = None
    duration_loss: Tensor | None = None
    segmentation_loss: Tensor | None = None


class ActionLLMForAnticipation(KernelSwitchMixin, PreTrainedModel):
    """See the module docstring. forward(video_features, clue_labels, attention_mask, ...)."""

    config_class = ActionLLMConfig
    base_model_prefix = ""
    main_input_name = "video_features"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: ActionLLMConfig):
        super().__init__(config)
        self.language_model = AutoModel.from_config(
            config.text_config, attn_implementation=self.attention_name(config.use_kernels))
        width = config.text_config.hidden_size
        self.feature_projection = FeatureProjection(config.feature_dim,
                                                    config.feature_hidden_size, width)
        self.interaction_down = nn.Linear(width, config.interaction_size, bias=False)
        self.interaction_up = nn.Linear(config.interaction_size, width, bias=False)
        self.interaction = CrossModalityInteraction(
            config.interaction_size, config.interaction_heads, config.interaction_ffn_size,
            config.dropout, config.interaction_attention_dropout, config.norm_eps,
            config.position_encoding_over_batch)
        layers = _attention_layers(self.language_model)
        self.action_adapters = nn.ModuleList(
            ActionTuningAdapter(width, config.adapter_rank, config.adapter_groups, config.dropout)
            for _ in layers)
        self.text_segmentation_head = nn.Linear(width, config.num_classes, bias=False)
        self.segmentation_head = nn.Linear(width, config.num_classes, bias=False)
        self.action_head = nn.Linear(width, config.num_classes + 1, bias=False)
        self.duration_head = nn.Linear(width, 1, bias=False)
        self.post_init()
        for layer, adapter in zip(layers, self.action_adapters, strict=True):
            layer.self_attn.is_causal = False
            # A(RMSNorm(x)) feeds the attention: the adapter rewrites the norm's output
            layer.input_layernorm.register_forward_hook(_adapt_output(adapter))
        if config.freeze_language_model:
            self.language_model.requires_grad_(False)
        if not config.train_heads:
            for head in (self.text_segmentation_head, self.segmentation_head, self.action_head):
                head.requires_grad_(False)
        self._remember_use_kernels()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        apply_marked_init(module)
        if isinstance(module, ActionTuningAdapter):
            module.reset_parameters()

    def _attention_towers(self) -> Iterator[PreTrainedModel]:
        yield self.language_model

    @classmethod
    def from_parts(cls, *, language_model: str | os.PathLike | PreTrainedModel,
                   **config_kwargs) -> ActionLLMForAnticipation:
        """A model whose LLM comes from a local checkpoint directory (or a loaded model); the
        adapters, CMIB and heads are initialised from the config."""
        llm = language_model if isinstance(language_model, PreTrainedModel) else (
            AutoModel.from_pretrained(language_model))
        model = cls(ActionLLMConfig(text_config=llm.config.to_dict(), **config_kwargs))
        model.language_model.load_state_dict(llm.state_dict())
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def clue_embeddings(self) -> Tensor:
        """[C, D]: the mean token embedding of every class name (the text clue of a frame whose
        predicted action is that class)."""
        names = self.config.class_name_token_ids
        if names is None:
            raise ValueError("ActionLLM: the config has no class_name_token_ids; pass "
                             "clue_embeds [B, S, D] instead of clue_labels")
        embed = self.get_input_embeddings()
        device = embed.weight.device
        ids = nn.utils.rnn.pad_sequence([torch.tensor(n, device=device) for n in names],
                                        batch_first=True)
        valid = nn.utils.rnn.pad_sequence([torch.ones(len(n), device=device) for n in names],
                                          batch_first=True)
        return (embed(ids) * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, video_features: Tensor, clue_labels: Tensor | None = None,
                attention_mask: Tensor | None = None, *, clue_embeds: Tensor | None = None,
                segmentation_labels: Tensor | None = None, action_labels: Tensor | None = None,
                duration_labels: Tensor | None = None,
                observed_lengths: Sequence[int] | None = None, **kwargs) -> ActionLLMOutput:
        """Args:
            video_features: [B, S, F] observed frames' features, right-padded.
            clue_labels: [B, S] int64 predicted class of each frame (or clue_embeds [B, S, D]).
            attention_mask: [B, S] 1 on observed frames (default: all); `observed_lengths`
                (host ints) give the same without reading the mask back from the device.
            segmentation_labels [B, S] (IGNORE_INDEX at padding), action_labels [B, Q] and
                duration_labels [B, Q] (anticipation_targets): with all three, the loss.
        """
        batch, frames, _ = video_features.shape
        lengths = _lengths(attention_mask, observed_lengths, batch, frames)
        if clue_embeds is None:
            if clue_labels is None:
                raise ValueError("ActionLLM: pass clue_labels [B, S] or clue_embeds [B, S, D]")
            clue_embeds = self.clue_embeddings()[clue_labels.clamp(min=0)]
        dtype = self.feature_projection.down.weight.dtype
        text = clue_embeds.to(dtype)
        video = self.feature_projection(video_features.to(dtype))
        queries = video_features.new_ones(1, self.config.num_future_queries,
                                          self.config.feature_dim, dtype=dtype)
        future = self.feature_projection(queries).expand(batch, -1, -1)
        text, video, future = self._interact(text, video, future, lengths)
        decode = self._decode_packed if self.use_kernels else self._decode_padded
        hidden_text, hidden_video, hidden_future = decode(text, video, future, lengths)
        out = ActionLLMOutput(
            action_logits=self.action_head(hidden_future),
            duration_logits=self.duration_head(hidden_future).squeeze(-1),
            segmentation_logits=self.segmentation_head(hidden_video),
            text_segmentation_logits=self.text_segmentation_head(hidden_text))
        if action_labels is not None and segmentation_labels is not None:
            self._losses(out, segmentation_labels, action_labels, duration_labels)
        return out

    def _interact(self, text: Tensor, video: Tensor, future: Tensor, lengths: list[int]
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """The CMIB in the shared bottleneck, on each sample's observed frames only: samples of
        one length together (kernels) or one by one (the seed's batch of one)."""
        streams = [self.interaction_down(x) for x in (text, video, future)]
        groups = _groups(lengths, by_length=self.use_kernels)
        if len(groups) == 1 and lengths[0] == text.shape[1]:
            index = torch.arange(len(lengths), device=text.device)
            mixed = self.interaction(tuple(streams), index, self.use_kernels)
        else:
            mixed = [torch.zeros_like(x) for x in streams]
            for length, members in groups:
                index = torch.tensor(members, device=text.device)
                parts = (streams[0][index, :length], streams[1][index, :length],
                         streams[2][index])
                results = self.interaction(parts, index, self.use_kernels)
                pad = (0, 0, 0, text.shape[1] - length)  # observed streams back to S frames
                mixed = [m.index_copy(0, index, F.pad(r, pad) if i < 2 else r)
                         for i, (m, r) in enumerate(zip(mixed, results, strict=True))]
        return tuple(x + self.interaction_up(m) for x, m in zip((text, video, future), mixed,
                                                                 strict=True))

    def _decode_packed(self, text: Tensor, video: Tensor, future: Tensor, lengths: list[int]):
        """[text_b | video_b | future_b] of every sample packed into one sequence; the LLM with
        varlen bidirectional attention; outputs scattered back to the padded layout."""
        batch, frames, width = text.shape
        queries = future.shape[1]
        rows, positions, cu_seqlens = _packed_layout(lengths, frames, queries)
        rows = rows.to(text.device, non_blocking=True)
        source = torch.cat([text.flatten(0, 1), video.flatten(0, 1), future.flatten(0, 1)])
        embeds = source.index_select(0, rows)
        hidden = self.language_model(
            inputs_embeds=embeds[None], position_ids=positions.to(text.device)[None],
            cu_seq_lens_q=cu_seqlens.to(text.device), cu_seq_lens_k=cu_seqlens.to(text.device),
            max_length_q=2 * max(lengths) + queries, max_length_k=2 * max(lengths) + queries,
            use_cache=False).last_hidden_state[0]
        full = hidden.new_zeros(source.shape).index_copy(0, rows, hidden)
        return (full[:batch * frames].view(batch, frames, width),
                full[batch * frames:2 * batch * frames].view(batch, frames, width),
                full[2 * batch * frames:].view(batch, queries, width))

    def _decode_padded(self, text: Tensor, video: Tensor, future: Tensor, lengths: list[int]):
        """The seed's way: one [text | video | future] sequence per sample, right-padded to the
        longest, a padding mask, SDPA; outputs sliced back sample by sample."""
        frames = text.shape[1]
        sequences = [torch.cat([text[b, :n], video[b, :n], future[b]])
                     for b, n in enumerate(lengths)]
        embeds = nn.utils.rnn.pad_sequence(sequences, batch_first=True)
        mask = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        for b, sequence in enumerate(sequences):
            mask[b, :len(sequence)] = 1
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask,
                                     use_cache=False).last_hidden_state
        pad = [(0, 0, 0, frames - n) for n in lengths]
        return (torch.stack([F.pad(hidden[b, :n], pad[b]) for b, n in enumerate(lengths)]),
                torch.stack([F.pad(hidden[b, n:2 * n], pad[b]) for b, n in enumerate(lengths)]),
                torch.stack([hidden[b, 2 * n:2 * n + future.shape[1]]
                             for b, n in enumerate(lengths)]))

    def _losses(self, out: ActionLLMOutput, segmentation_labels: Tensor, action_labels: Tensor,
                duration_labels: Tensor | None) -> None:
        classes = self.config.num_classes
        out.action_loss = F.cross_entropy(out.action_logits.flatten(0, 1).float(),
                                          action_labels.flatten(), ignore_index=IGNORE_INDEX)
        out.segmentation_loss = sum(
            F.cross_entropy(logits.flatten(0, 1).float(), segmentation_labels.flatten(),
                            ignore_index=IGNORE_INDEX)
            for logits in (out.text_segmentation_logits, out.segmentation_logits))
        loss = out.action_loss + out.segmentation_loss
        if duration_labels is not None:
            real = ((action_labels >= 0) & (action_labels < classes)).to(out.duration_logits.dtype)
            shares = normalize_durations(out.duration_logits.float(), real)
            out.duration_loss = ((shares - duration_labels * real) ** 2).sum(-1).mean()
            loss = loss + out.duration_loss
        out.loss = loss


def _attention_layers(language_model: nn.Module) -> list[nn.Module]:
    """The decoder layers (modules with an input_layernorm feeding a self_attn)."""
    layers = [m for m in language_model.modules()
              if hasattr(m, "input_layernorm") and hasattr(m, "self_attn")]
    if not layers:
        raise ValueError(f"ActionLLM: {type(language_model).__name__} has no decoder layers with "
                         "input_layernorm and self_attn (Llama, Qwen2, Mistral, ... do)")
    return layers


def _adapt_output(adapter: ActionTuningAdapter):
    def hook(module: nn.Module, args, output: Tensor) -> Tensor:
        return adapter(output)
    return hook


def _lengths(attention_mask: Tensor | None, observed_lengths: Sequence[int] | None, batch: int,
             frames: int) -> list[int]:
    if observed_lengths is not None:
        lengths = [int(n) for n in observed_lengths]
    elif attention_mask is not None:
        lengths = attention_mask.sum(1).tolist()  # one host copy; collate passes the lengths
    else:
        lengths = [frames] * batch
    if len(lengths) != batch or not all(1 <= n <= frames for n in lengths):
        raise ValueError(f"ActionLLM: observed lengths must be {batch} values in [1, {frames}], "
                         f"got {lengths}")
    return lengths


def _groups(lengths: list[int], by_length: bool) -> list[tuple[int, list[int]]]:
    """(length, sample indices) groups: samples of one length together, or one per sample."""
    if not by_length:
        return [(n, [b]) for b, n in enumerate(lengths)]
    groups: dict[int, list[int]] = {}
    for b, n in enumerate(lengths):
        groups.setdefault(n, []).append(b)
    return list(groups.items())


def _packed_layout(lengths: list[int], frames: int, queries: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Host plan of the packed sequence: for every packed row, its row in
    cat([text, video, future]) (flattened), the position ids, and cu_seqlens."""
    batch = len(lengths)
    rows, positions = [], []
    for b, n in enumerate(lengths):
        observed = torch.arange(n)
        rows += [b * frames + observed, batch * frames + b * frames + observed,
                 2 * batch * frames + b * queries + torch.arange(queries)]
        positions.append(torch.arange(2 * n + queries))
    sizes = torch.tensor([2 * n + queries for n in lengths])
    cu_seqlens = F.pad(sizes.cumsum(0), (1, 0)).to(torch.int32)
    return torch.cat(rows), torch.cat(positions), cu_seqlens


AutoConfig.register(ActionLLMConfig.model_type, ActionLLMConfig, exist_ok=True)
