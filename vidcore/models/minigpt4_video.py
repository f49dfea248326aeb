"""MiniGPT4-Video (arXiv 2404.03413; Vision-CAIR/MiniGPT4-video) on vidcore ops.

Frames -> vision tower + ln_vision, CLS dropped -> 4 consecutive raster tokens concatenated
along channels (`minigpt4_video`: 256 x 1408 -> 64 x 5632 for EVA-CLIP-g) -> Linear (`llama_proj`)
-> one run of tokens per frame, interleaved with text as the seed builds its prompt:
`[INST] <Img>{frame 1}<Cap>{subtitle 1}<Img>{frame 2}...\n{instruction}[/INST]` + answer
(minigpt4_video_inference.py:78-135) -> the LM with plain causal attention over the whole
interleaved sequence (as the seed), packed with `interleave_pack` on the kernels path.

Frame budget: the seed hard-codes 45 frames for Llama-2 (4096-token context) and 90 for Mistral
(8192): 45 x 64 = 2880 video tokens, 2880/4096 of the context; `frame_budget` keeps that share
for any context length and tokens per frame. Frames are sampled every int(N / budget)-th frame
(`frame_indices`, at least every frame), and training pads short videos by repeating the last
frame up to the budget (video_datasets.py:181-226).

The reference path (use_kernels=False) pads every prompt to `max_context_len` (the seed: 3600 for
Llama-2, 7200 for Mistral) when set, like the seed; it does not truncate longer prompts (the
seed silently cuts them, answers included).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from vidcore.models.processing import VideoQAProcessor
from vidcore.models.sequence import pack_sequence, packed_lm_loss, pad_sequence_like_seed, padded_lm_loss
from vidcore.models.video_llm import CLIP_VIT_L_14, VideoLLMPreTrainedModel, VideoQAOutput
from vidcore.models.video_qa_task import video_qa_task
from vidcore.ops import minigpt4_video

__all__ = ["MiniGPT4VideoConfig", "MiniGPT4VideoForVideoQA", "MiniGPT4VideoProcessor",
           "frame_budget", "frame_indices", "tiny_minigpt4_video_config", "TRAIN_TASK"]

MERGE = 4  # tokens concatenated into one


def frame_budget(context_length: int, tokens_per_frame: int = 64) -> int:
    """Frames that fit the seed's video share of a context: 45 for 4096 tokens at 64 per frame,
    90 for 8192 (the seed's Llama-2 and Mistral settings)."""
    return max(1, context_length * 2880 // (4096 * tokens_per_frame))


def frame_indices(total_frames: int, budget: int) -> list[int]:
    """The seed's sampling: every max(1, int(N / budget))-th frame from 0, at most `budget`."""
    step = max(1, int(total_frames / budget))
    return list(range(0, total_frames, step))[:budget]


class MiniGPT4VideoConfig(PreTrainedConfig):
    """MiniGPT4-Video: vision_config (default CLIP ViT; EVA-CLIP-g: 1408 wide, 16 x 16 patches),
    text_config (default Llama). `context_length` (default the LM's max_position_embeddings)
    sets the frame budget unless `max_frames` is given. LoRA on the LM (`lora_r` > 0, through
    peft, optional) freezes the LM's own weights, as the seed's r=64 / alpha=16 training."""

    model_type = "vidcore_minigpt4_video"
    sub_configs_defaults: ClassVar = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model",
                                       init_kwargs=CLIP_VIT_L_14),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    context_length: int | None = None
    max_frames: int | None = None
    max_subtitle_words: int = 400
    max_context_len: int | None = None
    video_token_index: int = 0
    vision_feature_layer: int = -1
    freeze_vision: bool = True
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    use_kernels: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        if patches % MERGE:
            raise ValueError(f"MiniGPT4VideoConfig: {patches} patches per frame do not merge in "
                             f"groups of {MERGE}")
        if self.context_length is None:
            self.context_length = self.text_config.max_position_embeddings
        if self.max_frames is None:
            self.max_frames = frame_budget(self.context_length, self.tokens_per_frame)
        if self.lora_target_modules is None:
            self.lora_target_modules = ["q_proj", "v_proj"]

    @property
    def tokens_per_frame(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2 // MERGE


class MiniGPT4VideoForVideoQA(VideoLLMPreTrainedModel, GenerationMixin):
    """MiniGPT4-Video with the LlavaNextVideo interface: forward(input_ids, pixel_values_videos,
    attention_mask, labels) -> VideoQAOutput; generate() for answers."""

    config_class = MiniGPT4VideoConfig

    def __init__(self, config: MiniGPT4VideoConfig):
        super().__init__(config)
        self._build_towers(config)
        self.projector = nn.Linear(MERGE * config.vision_config.hidden_size,
                                   config.text_config.hidden_size)
        self.post_init()
        self._freeze()
        if config.lora_r > 0:
            self._add_lora(config)

    def _add_lora(self, config: MiniGPT4VideoConfig) -> None:
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as e:
            raise ImportError("MiniGPT4VideoConfig(lora_r > 0) needs peft: pip install peft") from e
        self.language_model.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                           lora_dropout=config.lora_dropout,
                                           target_modules=list(config.lora_target_modules)),
                                self.language_model)

    def frame_tokens(self, features: Tensor) -> Tensor:
        """ln_vision features [B, T, 1 + P, Dv] -> [B, T, P / 4, D]."""
        tokens = features[:, :, 1:]
        if self.use_kernels:
            merged = minigpt4_video(tokens.contiguous())
        else:  # the seed's view (B*F, 64, 5632)
            merged = tokens.reshape(*tokens.shape[:2], -1, MERGE * tokens.shape[-1])
        return self.projector(merged)

    def video_tokens_for_prompt(self, features: Tensor) -> Tensor:
        return self.frame_tokens(features).flatten(1, 2)

    def _training_forward(self, input_ids, labels, layout, features, mask_seed):
        """One placeholder run per frame, in frame order; no masking (mask_seed unused)."""
        tokens = self.frame_tokens(features)
        _, frames, per_frame, width = tokens.shape
        if layout.visual_runs_per_sample.ne(frames).any() or layout.visual_lengths().ne(
                per_frame).any():
            raise ValueError(f"MiniGPT4-Video prompts need {frames} runs of {per_frame} video "
                             f"placeholders each; use MiniGPT4VideoProcessor")
        embed = self.get_input_embeddings()
        if self.use_kernels:
            seq = pack_sequence(embed, input_ids, labels, layout, tokens.reshape(-1, width))
            hidden = self.decode_packed(seq.embeds, seq.position_ids, seq.cu_seqlens,
                                        seq.max_seqlen)
            logits = self.get_output_embeddings()(hidden)
            loss = packed_lm_loss(logits, seq.labels, seq.cu_seqlens)
            return VideoQAOutput(loss=loss, logits=logits[None], lm_loss=loss,
                                 cu_seqlens=seq.cu_seqlens)
        seq = pad_sequence_like_seed(embed, input_ids, labels, layout,
                                     list(tokens.flatten(0, 1).unbind(0)))
        embeds, mask, targets = seq.embeds, seq.attention_mask, seq.labels
        if self.config.max_context_len and embeds.shape[1] < self.config.max_context_len:
            extra = self.config.max_context_len - embeds.shape[1]  # the seed's fixed padding
            embeds = nn.functional.pad(embeds, (0, 0, 0, extra))
            mask = nn.functional.pad(mask, (0, extra))
            targets = nn.functional.pad(targets, (0, extra), value=-100)
        hidden = self.decode_padded(embeds, mask)
        logits = self.get_output_embeddings()(hidden)
        loss = padded_lm_loss(logits, targets)
        cu_seqlens = nn.functional.pad(seq.attention_mask.sum(1).cumsum(0), (1, 0)).int()
        return VideoQAOutput(loss=loss, logits=logits, lm_loss=loss, cu_seqlens=cu_seqlens)


class MiniGPT4VideoProcessor(VideoQAProcessor):
    """MiniGPT4-Video prompts: `[INST] ` + per frame `<Img><video>` (+ `<Cap>subtitle` while the
    subtitles' words stay under `max_subtitle_words`) + `\\n` + question + `[/INST]`, then the
    answer + eos; each `<video>` holds `tokens_per_frame` placeholders."""

    TEMPLATE = "[INST] {frames}\n{question}[/INST]"
    CORPUS = ("[INST] <Img><video><Cap>\n?[/INST]",)

    def __init__(self, tokenizer, *, tokens_per_frame: int = 64, max_subtitle_words: int = 400,
                 **kwargs):
        super().__init__(tokenizer, tokens_per_frame=tokens_per_frame,
                         max_subtitle_words=max_subtitle_words, **kwargs)

    @classmethod
    def for_model(cls, tokenizer, config: MiniGPT4VideoConfig, **kwargs) -> MiniGPT4VideoProcessor:
        return cls(tokenizer, tokens_per_frame=config.tokens_per_frame,
                   max_subtitle_words=config.max_subtitle_words,
                   image_size=config.vision_config.image_size, **kwargs)

    def prompt(self, question: str, num_frames: int,
               subtitles: Sequence[str | None] | None = None) -> str:
        parts, words = [], 0
        for t in range(num_frames):
            parts.append("<Img><video>")
            text = subtitles[t] if subtitles is not None and t < len(subtitles) else None
            if text and words < self.options["max_subtitle_words"]:
                parts.append(f"<Cap>{text}")
                words += len(text.split(" "))
        return self.TEMPLATE.format(frames="".join(parts), question=question)

    def video_tokens_per_run(self, num_frames: int) -> int:
        return self.options["tokens_per_frame"]


def tiny_minigpt4_video_config(vocab_size: int, video_token_index: int, *, frame_size: int = 32,
                               width: int = 64, **overrides) -> MiniGPT4VideoConfig:
    """A few-layer MiniGPT4-Video for tests and CPU training: 4 x 4 patches (4 tokens per frame
    after the merge), a 2-layer Llama; everything trainable."""
    heads = max(1, width // 16)
    settings = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=width,
                           intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=heads, image_size=frame_size,
                           patch_size=frame_size // 4),
        text_config=dict(model_type="llama", vocab_size=vocab_size, hidden_size=width,
                         intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=2048, tie_word_embeddings=False),
        video_token_index=video_token_index, freeze_vision=False)
    settings.update(overrides)
    return MiniGPT4VideoConfig(**settings)


# Trained from scratch on the synthetic set with the vision tower frozen, as the seed: a random
# tower trained at the LM's learning rate drifts faster than the LM can read it.
TRAIN_TASK = video_qa_task("minigpt4_video", MiniGPT4VideoForVideoQA, MiniGPT4VideoProcessor,
                           tiny_minigpt4_video_config, freeze_vision=True)

AutoConfig.register(MiniGPT4VideoConfig.model_type, MiniGPT4VideoConfig, exist_ok=True)
