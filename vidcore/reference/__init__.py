"""Plain-PyTorch reference of every vidcore op: the specification, the test oracle, the CPU
fallback and the benchmark baseline. Written for clarity, not speed; shapes in docstrings.
One module per op; this package re-exports every reference function.
"""
from vidcore.reference.attention import attention, attention_backward, key_intervals
from vidcore.reference.axis_attention import axis_attention, axis_attention_backward
from vidcore.reference.cosine_consistency_loss import (
    cosine_consistency_loss,
    cosine_consistency_loss_backward,
)
from vidcore.reference.interleave_pack import interleave_pack, interleave_pack_backward
from vidcore.reference.merge_attention_states import (
    merge_attention_states,
    merge_attention_states_backward,
)
from vidcore.reference.multi_source_attention import (
    multi_source_attention,
    multi_source_attention_backward,
)
from vidcore.reference.pool import pool, pool_backward, pool_view
from vidcore.reference.token_mask import (
    COUNT_RULES,
    PATTERNS,
    make_mask,
    mask_and_pack,
    masked_count,
    num_units,
    pack,
    unit_of_token,
    unpack,
    unpack_fill_grad,
)
from vidcore.reference.unit_keys import lowbias32, unit_keys

__all__ = [
    "attention",
    "attention_backward",
    "key_intervals",
    "lowbias32",
    "unit_keys",
    "merge_attention_states",
    "merge_attention_states_backward",
    "pool",
    "pool_backward",
    "pool_view",
    "PATTERNS",
    "COUNT_RULES",
    "num_units",
    "masked_count",
    "unit_of_token",
    "make_mask",
    "mask_and_pack",
    "pack",
    "unpack",
    "unpack_fill_grad",
    "interleave_pack",
    "interleave_pack_backward",
    "cosine_consistency_loss",
    "cosine_consistency_loss_backward",
    "multi_source_attention",
    "multi_source_attention_backward",
    "axis_attention",
    "axis_attention_backward",
]
