"""Public vidcore ops. Each function validates its arguments once and calls one
`torch.ops.vidcore.*` op; `FAST_KERNELS` records which device has which fast kernel."""
from vidcore._backends import EXTENSION  # noqa: F401  loading _C registers its C++/CUDA kernels
from vidcore.ops.attention import attention
from vidcore.ops.axis_attention import axis_attention
from vidcore.ops.cosine_consistency_loss import cosine_consistency_loss
from vidcore.ops.frame_ranges import interleave_ranges, stage_ranges, window_ranges
from vidcore.ops.interleave_pack import (
    InterleavedBatch,
    InterleavePlan,
    interleave_pack,
    plan_interleave,
)
from vidcore.ops.merge_attention_states import merge_attention_states
from vidcore.ops.multi_source_attention import multi_source_attention
from vidcore.ops.pool import PooledTokens, merge_tokens, pool
from vidcore.ops.pool_cache import pool_cache
from vidcore.ops.pool_presets import (
    llava_next_video,
    minigpt4_video,
    slowfast,
    st_llm_global_local,
    video_chatgpt,
)
from vidcore.ops.pool_views import Adaptive, Linspace, SegmentCentres, Stride, Uniform, View
from vidcore.ops.token_mask import PositionIds, TokenMask, draw_ratios, make_mask
from vidcore.ops.token_pack import mask_and_pack, pack, unpack
from vidcore.ops.unit_keys import unit_keys

__all__ = [
    "attention",
    "stage_ranges",
    "window_ranges",
    "interleave_ranges",
    "merge_attention_states",
    "pool",
    "PooledTokens",
    "View",
    "Uniform",
    "Linspace",
    "SegmentCentres",
    "Stride",
    "Adaptive",
    "merge_tokens",
    "pool_cache",
    "st_llm_global_local",
    "slowfast",
    "video_chatgpt",
    "llava_next_video",
    "minigpt4_video",
    "unit_keys",
    "TokenMask",
    "PositionIds",
    "make_mask",
    "draw_ratios",
    "pack",
    "unpack",
    "mask_and_pack",
    "interleave_pack",
    "plan_interleave",
    "InterleavedBatch",
    "InterleavePlan",
    "cosine_consistency_loss",
    "multi_source_attention",
    "axis_attention",
    "FAST_KERNELS",
]

# op name -> {device type: (implementation, what provides it)}; every other device runs the
# reference. The backward ops listed here are registered by their forward's module.
FAST_KERNELS: dict[str, dict[str, tuple[str, str]]] = {
    "unit_keys": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "attention": {"cpu": ("aten flash (CPU)", "torch"), "cuda": ("Triton", "triton")},
    "attention_backward": {"cpu": ("aten flash (CPU)", "torch"), "cuda": ("Triton", "triton")},
    "merge_attention_states": {"cpu": ("torch, fused passes", "torch"),
                               "cuda": ("Triton", "triton")},
    "merge_attention_states_backward": {"cpu": ("torch, fused passes", "torch"),
                                        "cuda": ("Triton", "triton")},
    "make_mask": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "pack": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "unpack": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "unpack_fill_grad": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "mask_and_pack": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "pool": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "pool_backward": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "interleave_pack": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "interleave_pack_backward": {"cpu": ("C++", "extension"), "cuda": ("CUDA C++", "extension")},
    "cosine_consistency_loss": {"cpu": ("row reductions", "torch"), "cuda": ("Triton", "triton")},
    "cosine_consistency_loss_backward": {"cpu": ("row reductions", "torch"),
                                         "cuda": ("Triton", "triton")},
    "multi_source_attention": {"cpu": ("aten flash per pair", "torch"),
                               "cuda": ("Triton", "triton")},
    "multi_source_attention_backward": {"cpu": ("aten flash per pair", "torch"),
                                        "cuda": ("Triton", "triton")},
    "axis_attention": {"cpu": ("aten flash (CPU)", "torch"), "cuda": ("Triton", "triton")},
    "axis_attention_backward": {"cpu": ("aten flash (CPU)", "torch"),
                                "cuda": ("Triton", "triton")},
}
