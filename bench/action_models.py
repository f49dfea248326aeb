"""The action models of bench_models.py: a model and one training batch of ActionLLM and of
Task-Adapter++ per size (transformers is imported only when a case is built)."""
from __future__ import annotations

import torch

__all__ = ["ACTIONLLM_SIZES", "TASK_ADAPTER_SIZES", "actionllm_step_inputs",
           "task_adapter_step_inputs"]

# size -> (LM width, LM layers, LM heads, feature dim, batch, longest observed frames, classes)
# The CMIB is the seed's (width 128, head dim 4) from small on; 8 future queries (Breakfast).
ACTIONLLM_SIZES = {
    "tiny": (64, 1, 4, 64, 2, 8, 6),
    "small": (512, 2, 8, 2048, 4, 128, 48),
    "full": (4096, 2, 32, 2048, 4, 480, 48),
}
# size -> (ViT width, heads, layers, image size, text width, text layers, shots): patch 16 (tiny 8),
# 8 frames, 5-way with one query per class; adapters in every ViT layer (the seed: last 6 of 12)
TASK_ADAPTER_SIZES = {
    "tiny": (32, 2, 1, 16, 32, 1, 1),
    "small": (768, 12, 2, 112, 512, 2, 1),
    "full": (768, 12, 4, 224, 512, 2, 5),
}


def actionllm_step_inputs(size: str, device: str, dtype: torch.dtype):
    """(model in train mode, batch with labels): observed prefixes of unequal length (the
    longest, 3/4 of it, ...), so the kernel path packs and the reference pads."""
    from vidcore.models.actionllm import ActionLLMConfig, ActionLLMForAnticipation

    width, layers, heads, features, batch, frames, classes = ACTIONLLM_SIZES[size]
    interaction = 128 if size != "tiny" else 32
    config = ActionLLMConfig(
        text_config=dict(model_type="llama", vocab_size=1000, hidden_size=width,
                         intermediate_size=width * 11 // 4, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096),
        num_classes=classes, feature_dim=features, interaction_size=interaction,
        interaction_heads=interaction // 4, interaction_ffn_size=4 * interaction,
        num_future_queries=8, class_name_token_ids=[[5 + c, 900 - c] for c in range(classes)])
    model = ActionLLMForAnticipation(config).to(device, dtype).train()
    generator = torch.Generator().manual_seed(0)
    lengths = [max(1, frames - frames * b // (2 * batch)) for b in range(batch)]
    mask = (torch.arange(frames)[None] < torch.tensor(lengths)[:, None]).long()
    segmentation = torch.randint(classes, (batch, frames), generator=generator)
    durations = torch.rand(batch, 8, generator=generator)
    inputs = {
        "video_features": torch.randn(batch, frames, features, generator=generator),
        "clue_labels": torch.randint(classes, (batch, frames), generator=generator),
        "attention_mask": mask,
        "segmentation_labels": segmentation.masked_fill(mask == 0, -100),
        "action_labels": torch.randint(classes + 1, (batch, 8), generator=generator),
        "duration_labels": durations / durations.sum(-1, keepdim=True),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["video_features"] = inputs["video_features"].to(dtype)
    inputs["observed_lengths"] = lengths
    return model, inputs


def task_adapter_step_inputs(size: str, device: str, dtype: torch.dtype):
    """(model in train mode, one 5-way K-shot episode with labels)."""
    from vidcore.models.task_adapter import TaskAdapterConfig, TaskAdapterForFewShot

    width, heads, layers, image, text_width, text_layers, shots = TASK_ADAPTER_SIZES[size]
    config = TaskAdapterConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=width,
                           intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image,
                           patch_size=16 if size != "tiny" else 8),
        text_config=dict(model_type="clip_text_model", vocab_size=1000, hidden_size=text_width,
                         intermediate_size=4 * text_width, num_hidden_layers=text_layers,
                         num_attention_heads=max(1, text_width // 64),
                         max_position_embeddings=77, pad_token_id=0, bos_token_id=1,
                         eos_token_id=3),
        projection_dim=text_width, adapter_layers=layers, text_adapter_layers=text_layers)
    model = TaskAdapterForFewShot(config).to(device, dtype).train()
    generator = torch.Generator().manual_seed(0)
    ways, frames, words = 5, 8, 16
    ids = torch.randint(4, 1000, (ways, 3, words), generator=generator)
    ids[..., 0], ids[..., -1] = 1, 3  # BOS ... EOS
    inputs = {
        "support_videos": torch.randn(ways * shots, frames, 3, image, image, generator=generator),
        "query_videos": torch.randn(ways, frames, 3, image, image, generator=generator),
        "support_labels": torch.arange(ways).repeat_interleave(shots),
        "class_input_ids": ids, "labels": torch.arange(ways),
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    for key in ("support_videos", "query_videos"):
        inputs[key] = inputs[key].to(dtype)
    return model, inputs
