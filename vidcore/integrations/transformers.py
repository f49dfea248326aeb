"""`attn_implementation="vidcore"` for Hugging Face transformers models.

Importing this module registers vidcore.ops.attention under the name "vidcore" in transformers'
AttentionInterface (and FlashAttention's 2-D padding mask under the same name in
AttentionMaskInterface), so decoder LLMs (Llama, Qwen2, ...) run on packed sequences with no
padding compute:

    import vidcore.integrations.transformers  # noqa: F401  (registers "vidcore")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="vidcore")
    model(input_ids=packed_ids, position_ids=positions_restarting_per_sequence)

Packing is read, in this order, from FlashAttention kwargs (`cu_seq_lens_q/k`,
`max_length_q/k`, as DataCollatorWithFlattening produces), a 2-D padding mask, or position_ids
that restart at 0 within one row. Reading the last two derives offsets on the host, as
transformers' own FlashAttention path does.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from vidcore.ops import attention

__all__ = ["vidcore_attention_forward", "register"]


def _offsets(lengths: Tensor) -> Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def _restart_offsets(position_ids: Tensor) -> Tensor:
    """cu_seqlens of one packed row whose positions restart at 0 for each sequence."""
    starts = torch.nonzero(position_ids[0] == 0).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    return _offsets(torch.diff(torch.cat([starts, starts.new_tensor([position_ids.shape[1]])])))


def vidcore_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, dropout: float = 0.0,
                              scaling: float | None = None, sliding_window: int | None = None,
                              softcap: float | None = None, is_causal: bool | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers attention function: query [B, Hq, Lq, d], key/value [B, Hk, Lk, d] ->
    ([B, Lq, Hq, d], None)."""
    if dropout > 0.0 or sliding_window is not None or softcap is not None:
        raise ValueError("vidcore attention: attention dropout, sliding windows and softcapping "
                         "are not supported; use another attn_implementation for this model")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    batch, _, len_q, _ = query.shape
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, L, H, d]
    position_ids = kwargs.get("position_ids")
    if kwargs.get("cu_seq_lens_q") is not None:
        cu_q, cu_k = kwargs["cu_seq_lens_q"].int(), kwargs["cu_seq_lens_k"].int()
        packed = [t.flatten(0, 1).contiguous() for t in (q, k, v)]
        out = attention(*packed, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal,
                        scale=scaling, max_seqlen_q=int(kwargs["max_length_q"]),
                        max_seqlen_k=int(kwargs["max_length_k"]))
        return out.view(batch, len_q, *out.shape[1:]), None
    if attention_mask is not None:  # padding: attend over each row's valid tokens only
        keys_valid = attention_mask.bool()
        queries_valid = keys_valid[:, -len_q:]
        cu_q, cu_k = (_offsets(m.sum(1)) for m in (queries_valid, keys_valid))
        out = attention(q[queries_valid].contiguous(), k[keys_valid].contiguous(),
                        v[keys_valid].contiguous(), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                        causal=causal, scale=scaling, max_seqlen_q=len_q, max_seqlen_k=k.shape[1])
        full = out.new_zeros(batch, len_q, *out.shape[1:])
        full[queries_valid] = out
        return full, None
    if batch == 1 and position_ids is not None and len_q == k.shape[1]:
        cu = _restart_offsets(position_ids).to(q.device)
        out = attention(q[0].contiguous(), k[0].contiguous(), v[0].contiguous(), cu_seqlens_q=cu,
                        cu_seqlens_k=cu, causal=causal, scale=scaling, max_seqlen_q=len_q,
                        max_seqlen_k=len_q)
        return out[None], None
    out = attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=causal, scale=scaling)
    return out, None


def register(name: str = "vidcore") -> None:
    """Register vidcore attention (and the padding-mask format it reads) under `name`."""
    AttentionInterface.register(name, vidcore_attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)


register()
