"""ST-LLM (arXiv 2404.00308; TencentARC/ST-LLM) on vidcore ops.

Video -> vision tower + ln_vision -> BLIP-2 Q-Former (32 queries; or no Q-Former: CLS dropped and
4 tokens merged, `minigpt4_video`) -> projector (`llama_proj`) -> video input mode:
`all` (T x 32 tokens), `mean` (the temporal mean, 32 tokens) or `residual` (global-local: R
frames at segment centres + MLP(temporal mean), `st_llm_global_local`) -> in training, dynamic
masking (a ratio ~ clip(N(0.5, 0.1), 0.1, 0.7), the masked tokens dropped; `mask_and_pack`) ->
the LM on the packed prompt; loss = next-token CE on the answers + MVM: mean(2 - 2 cos) between
a Linear+LayerNorm decoding of the masked run's last hidden states at the visible video tokens
and a no-grad run of the unmasked sequence at the same tokens (`cosine_consistency_loss`).

Deliberate fixes of the seed's code (seeds.md 1a), no flags (nobody wants the originals):
- residual frame indices are computed for each call's T (the seed caches them in a buffer on the
  first call and silently reuses stale indices when T changes, st_llm.py:434-445);
- masking happens only in training (the seed's forward masks whenever it runs; its chat path
  happens to bypass forward);
- the MVM loss finds the video tokens by explicit spans, not the hard-coded offset 0 / 8
  (st_llm.py:71) that breaks as soon as the prompt changes;
- the global-local bottleneck MLP runs once on the temporal mean, not on R identical copies
  (the reference path, use_kernels=False, keeps the seed's R copies: same values).
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    GenerationMixin,
    PreTrainedConfig,
)
from transformers.configuration_utils import SubConfigSpec

from vidcore.models.processing import VideoQAProcessor
from vidcore.models.sequence import (
    cosine_consistency_loss,
    cosine_consistency_reference,
    pack_sequence,
    packed_lm_loss,
    pad_sequence_like_seed,
    padded_lm_loss,
)
from vidcore.models.video_llm import CLIP_VIT_L_14, VideoLLMPreTrainedModel, VideoQAOutput
from vidcore.models.video_qa_task import video_qa_task
from vidcore.ops import draw_ratios, make_mask, mask_and_pack, minigpt4_video, pool, st_llm_global_local
from vidcore.ops.pool_views import View

__all__ = ["STLLMConfig", "STLLMForVideoQA", "STLLMProcessor", "VIDEO_INPUTS", "tiny_stllm_config",
           "TRAIN_TASK"]

VIDEO_INPUTS = ("all", "mean", "residual")


class STLLMConfig(PreTrainedConfig):
    """ST-LLM: vision_config (default CLIP ViT; EVA-CLIP-g is 1408 wide, 257 tokens), optional
    qformer_config (BLIP-2 Q-Former, `num_query_tokens` queries), text_config (default Llama).

    video_input: "all" | "mean" | "residual" (`residual_size` frames + global residual through
    a `residual_hidden_size` bottleneck, default text width / 4 as the seed's 4096 -> 1024).
    Dynamic masking (training): ratio ~ clip(N(mask_ratio_mean, mask_ratio_std), mask_ratio_min,
    mask_ratio_max), one draw per batch (the seed) or per sample (`mask_ratio_per_sample`).
    use_kernels: vidcore ops + packed sequences (True) or the seed's padded torch path.
    """

    model_type = "vidcore_stllm"
    sub_configs_defaults: ClassVar = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model",
                                       init_kwargs=CLIP_VIT_L_14),
        "qformer_config": SubConfigSpec(config_class=Blip2QFormerConfig, optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    use_qformer: bool = True
    num_query_tokens: int = 32
    video_input: str = "all"
    residual_size: int = 16
    residual_hidden_size: int | None = None
    use_mask: bool = True
    mask_ratio_mean: float = 0.5
    mask_ratio_std: float = 0.1
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.7
    mask_ratio_per_sample: bool = False
    use_mvm: bool = True
    mvm_decoder: bool = True
    mvm_weight: float = 1.0
    video_token_index: int = 0
    vision_feature_layer: int = -1
    freeze_vision: bool = True
    freeze_qformer: bool = True
    use_kernels: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.use_qformer and self.qformer_config is None:
            self.qformer_config = {}
        super().__post_init__(**kwargs)
        if self.video_input not in VIDEO_INPUTS:
            raise ValueError(f"STLLMConfig: video_input must be one of {VIDEO_INPUTS}, "
                             f"got {self.video_input!r}")
        if self.use_qformer:
            self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        elif self._merged_tokens() * 4 != self._patches():
            raise ValueError(f"STLLMConfig: without a Q-Former the {self._patches()} patches per "
                             f"frame merge in groups of 4, which must divide them")
        if self.residual_hidden_size is None:
            self.residual_hidden_size = max(1, self.text_config.hidden_size // 4)

    def video_tokens(self, num_frames: int) -> int:
        """Video tokens a prompt of `num_frames` frames holds (inference, no masking)."""
        per_frame = self.num_query_tokens if self.use_qformer else self._merged_tokens()
        frames = {"all": num_frames, "mean": 1, "residual": self.residual_size}[self.video_input]
        return frames * per_frame

    def _patches(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def _merged_tokens(self) -> int:
        return self._patches() // 4


class STLLMForVideoQA(VideoLLMPreTrainedModel, GenerationMixin):
    """ST-LLM with the LlavaNextVideo interface: forward(input_ids, pixel_values_videos,
    attention_mask, labels) -> VideoQAOutput; generate() for answers. See the module docstring."""

    config_class = STLLMConfig

    def __init__(self, config: STLLMConfig):
        super().__init__(config)
        self._build_towers(config)
        width = config.text_config.hidden_size
        if config.use_qformer:
            self.qformer = Blip2QFormerModel(config.qformer_config)
            self.query_tokens = nn.Parameter(
                torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
            projector_in = config.qformer_config.hidden_size
        else:
            projector_in = 4 * config.vision_config.hidden_size
        self.projector = nn.Linear(projector_in, width)
        if config.video_input == "residual":
            self.residual_down = nn.Linear(width, config.residual_hidden_size)
            self.residual_up = nn.Linear(config.residual_hidden_size, width)
        if config.use_mvm and config.mvm_decoder:
            self.mvm_decoder = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width))
        self.post_init()
        self._freeze()
        if config.use_qformer and config.freeze_qformer:
            self.qformer.requires_grad_(False)
            self.query_tokens.requires_grad_(False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            if self.config.use_qformer:
                nn.init.normal_(self.query_tokens, std=self.config.initializer_range)
        if module is getattr(self, "residual_up", None):  # the seed zero-inits the up projection
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- video tokens ------------------------------------------------------------------------
    def frame_tokens(self, features: Tensor) -> Tensor:
        """ln_vision features [B, T, P, Dv] -> projected tokens [B, T, N, D] (N = queries)."""
        batch, frames = features.shape[:2]
        flat = features.flatten(0, 1)
        if self.config.use_qformer:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_qformer):
                queries = self.query_tokens.expand(flat.shape[0], -1, -1)
                tokens = self.qformer(query_embeds=queries,
                                      encoder_hidden_states=flat).last_hidden_state
        elif self.use_kernels:
            tokens = minigpt4_video(flat[:, 1:])
        else:  # the seed's view: 4 consecutive tokens concatenated along channels
            tokens = flat[:, 1:].reshape(flat.shape[0], -1, 4 * flat.shape[-1])
        return self.projector(tokens).unflatten(0, (batch, frames))

    def video_tokens_for_prompt(self, features: Tensor) -> Tensor:
        """[B, T, P, Dv] -> the video tokens of each prompt [B, L, D] (no masking)."""
        tokens = self.frame_tokens(features)
        mode = self.config.video_input
        if mode == "all":
            return tokens.flatten(1, 2)
        if mode == "mean":
            if self.use_kernels:
                return pool(tokens.unsqueeze(2).contiguous(), [View(temporal="mean")]).tokens
            return tokens.mean(dim=1)
        return self._global_local(tokens)

    def _global_local(self, tokens: Tensor) -> Tensor:
        batch, frames, per_frame, width = tokens.shape
        size = self.config.residual_size
        if self.use_kernels:
            local, glob = st_llm_global_local(tokens.contiguous(), size)
            residual = self.residual_up(torch.relu(self.residual_down(glob)))  # once, [B, N, D]
            return (local.view(batch, size, per_frame, width) + residual[:, None]).flatten(1, 2)
        # the seed: segment-centre frames, and the bottleneck MLP on R copies of the mean
        segment = frames / size
        index = [int(segment / 2 + round(segment * i)) for i in range(size)]
        glob = tokens.mean(dim=1, keepdim=True).expand(batch, size, per_frame, width)
        residual = self.residual_up(torch.relu(self.residual_down(glob)))
        return (tokens[:, index] + residual).flatten(1, 2)

    def _mask_draw(self, batch: int, mask_seed: int | None) -> tuple[list[float], int]:
        """Mask ratios (one per video) and the mask seed of this forward."""
        config = self.config
        seed = int(torch.randint(0, 2**31 - 1, ())) if mask_seed is None else int(mask_seed)
        draws = draw_ratios(batch if config.mask_ratio_per_sample else 1, seed,
                            mean=config.mask_ratio_mean, std=config.mask_ratio_std,
                            low=config.mask_ratio_min, high=config.mask_ratio_max)
        return (draws if config.mask_ratio_per_sample else draws * batch), seed

    def _mvm_project(self, hidden: Tensor) -> Tensor:
        return self.mvm_decoder(hidden) if self.config.mvm_decoder else hidden

    # ---- forward -----------------------------------------------------------------------------
    def _training_forward(self, input_ids, labels, layout, features, mask_seed):
        """One run of L placeholders per prompt; in training, dynamic masking and the MVM loss."""
        video = self.video_tokens_for_prompt(features)
        batch, length, _ = video.shape
        if layout.visual_runs_per_sample.ne(1).any() or layout.visual_lengths().ne(length).any():
            raise ValueError(f"ST-LLM prompts need one run of {length} video placeholders each "
                             f"(got runs {layout.visual_lengths().tolist()}); use STLLMProcessor")
        masked = self.training and self.config.use_mask
        ratios, seed = self._mask_draw(batch, mask_seed) if masked else (None, 0)
        run = self._packed if self.use_kernels else self._padded
        logits, lm_loss, mvm_loss, cu_seqlens = run(input_ids, labels, layout, video, ratios, seed)
        loss = lm_loss if mvm_loss is None else lm_loss + self.config.mvm_weight * mvm_loss
        return VideoQAOutput(loss=loss, logits=logits, lm_loss=lm_loss, mvm_loss=mvm_loss,
                             cu_seqlens=cu_seqlens)

    def _packed(self, input_ids, labels, layout, video, ratios, seed):
        batch, length, width = video.shape
        embed = self.get_input_embeddings()
        if ratios is not None:
            visual, mask = mask_and_pack(video.reshape(batch, 1, 1, length, width).contiguous(),
                                         ratios, seed=seed, count_rule="trunc")
            kept = mask.kept_per_video
        else:
            visual, kept = video.reshape(batch * length, width), [length] * batch
        seq = pack_sequence(embed, input_ids, labels, layout, visual, kept)
        hidden = self.decode_packed(seq.embeds, seq.position_ids, seq.cu_seqlens, seq.max_seqlen)
        logits = self.get_output_embeddings()(hidden)
        lm_loss = packed_lm_loss(logits, seq.labels, seq.cu_seqlens)
        mvm_loss = None
        if ratios is not None and self.config.use_mvm:
            with torch.no_grad():  # the unmasked sequence: only its last hidden state is kept
                full = pack_sequence(embed, input_ids, None, layout,
                                     video.reshape(batch * length, width))
                target = self.decode_packed(full.embeds, full.position_ids, full.cu_seqlens,
                                            full.max_seqlen)
            # visual row b * L + l of the unmasked run is video token l of sample b, so the
            # kept tokens' flat indices pick their rows there; the masked run's video rows are
            # exactly the kept tokens, in the same order
            predicted = self._mvm_project(hidden[seq.visual_index])
            expected = target[full.visual_index[mask.keep_idx]]
            mvm_loss = cosine_consistency_loss(predicted, expected)
        return logits[None], lm_loss, mvm_loss, seq.cu_seqlens

    def _padded(self, input_ids, labels, layout, video, ratios, seed):
        """The seed's way: per-sample boolean gathers, padded prompts, output_hidden_states."""
        batch, length, _ = video.shape
        embed = self.get_input_embeddings()
        runs, keep = list(video.unbind(0)), None
        if ratios is not None:
            mask = make_mask(1, (1, length), ratios, batch_size=batch, seed=seed,
                             count_rule="trunc", device=video.device, backend="torch")
            keep = [mask.keep_idx[mask.cu_seqlens[b]:mask.cu_seqlens[b + 1]] - b * length
                    for b in range(batch)]
            runs = [video[b, keep[b]] for b in range(batch)]
        seq = pad_sequence_like_seed(embed, input_ids, labels, layout, runs)
        hidden = self.decode_padded(seq.embeds, seq.attention_mask)
        logits = self.get_output_embeddings()(hidden)
        lm_loss = padded_lm_loss(logits, seq.labels)
        mvm_loss = None
        if keep is not None and self.config.use_mvm:
            with torch.no_grad():
                full = pad_sequence_like_seed(embed, input_ids, None, layout, list(video.unbind(0)))
                target = self.decode_padded(full.embeds, full.attention_mask)
            predicted = torch.cat([hidden[b, s:e] for b, ((s, e),) in enumerate(seq.visual_spans)])
            expected = torch.cat([target[b, s:e][keep[b]]
                                  for b, ((s, e),) in enumerate(full.visual_spans)])
            mvm_loss = cosine_consistency_reference(self._mvm_project(predicted), expected)
        lengths = seq.attention_mask.sum(1)
        cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
        return logits, lm_loss, mvm_loss, cu_seqlens


class STLLMProcessor(VideoQAProcessor):
    """ST-LLM prompts: the seed's "simple" template, video first:
    `<video>###Human: {question}###Assistant: ` + answer + eos (image_video_itdatasets.py:228-249),
    the `<video>` run holding `STLLMConfig.video_tokens(T)` placeholders."""

    TEMPLATE = "<video>###Human: {question}###Assistant: "
    CORPUS = (TEMPLATE.format(question="?"),)  # its words, as a question ending in "?" meets them

    def __init__(self, tokenizer, *, video_input: str = "all", tokens_per_frame: int = 32,
                 residual_size: int = 16, template: str = TEMPLATE, **kwargs):
        super().__init__(tokenizer, video_input=video_input, tokens_per_frame=tokens_per_frame,
                         residual_size=residual_size, template=template, **kwargs)

    @classmethod
    def for_model(cls, tokenizer, config: STLLMConfig, **kwargs) -> STLLMProcessor:
        per_frame = config.video_tokens(1) if config.video_input == "all" else (
            config.num_query_tokens if config.use_qformer else config._merged_tokens())
        return cls(tokenizer, video_input=config.video_input, tokens_per_frame=per_frame,
                   residual_size=config.residual_size,
                   image_size=config.vision_config.image_size, **kwargs)

    def prompt(self, question: str, num_frames: int, subtitles=None) -> str:
        return self.options["template"].format(question=question)

    def video_tokens_per_run(self, num_frames: int) -> int:
        frames = {"all": num_frames, "mean": 1,
                  "residual": self.options["residual_size"]}[self.options["video_input"]]
        return frames * self.options["tokens_per_frame"]


def tiny_stllm_config(vocab_size: int, video_token_index: int, *, frame_size: int = 32,
                      width: int = 64, **overrides) -> STLLMConfig:
    """A few-layer ST-LLM for tests and CPU training: CLIP-style tower on 4 x 4 patches, a
    one-layer Q-Former with 8 queries, a 2-layer Llama; everything trainable, no dropout."""
    heads = max(1, width // 16)
    settings = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=width,
                           intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=heads, image_size=frame_size,
                           patch_size=frame_size // 4),
        qformer_config=dict(hidden_size=width, num_hidden_layers=1, num_attention_heads=heads,
                            intermediate_size=2 * width, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0),
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=width,
                         intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=2048, tie_word_embeddings=False),
        num_query_tokens=8, residual_size=4, video_token_index=video_token_index,
        freeze_vision=False, freeze_qformer=False)
    settings.update(overrides)
    return STLLMConfig(**settings)


# Trained from scratch on the synthetic set: the vision tower frozen (as the seed), and no
# Q-Former: a randomly initialised one maps every video to nearly the same 8 queries (per-video
# differences ~0.2% of the output scale), so nothing reaches the LM; ST-LLM's Q-Former needs its
# BLIP-2 weights. The seed's no-Q-Former variant (4-token merge + Linear) learns in minutes.
TRAIN_TASK = video_qa_task("stllm", STLLMForVideoQA, STLLMProcessor, tiny_stllm_config,
                           use_qformer=False, freeze_vision=True)

AutoConfig.register(STLLMConfig.model_type, STLLMConfig, exist_ok=True)
