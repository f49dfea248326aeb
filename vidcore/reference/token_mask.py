"""Reference of spatio-temporal token masking and packing (DESIGN.md op 1; ST-LLM dynamic
masking, VideoMAE tube masking).

Video b has T_b frames of H x W tokens, stored in raster order (t, h, w) starting at flat row
`token_offset_b` of `x.reshape(-1, D)`. Its tokens are grouped into units by `pattern`; unit u
gets the key `unit_keys(seed, b, u)`, and the `m_b` units smallest in (key, u) are masked.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidcore.reference.unit_keys import unit_keys

__all__ = ["PATTERNS", "num_units", "unit_of_token", "make_mask", "pack", "unpack",
           "unpack_fill_grad"]

PATTERNS = ("random", "tube", "frame", "block")


def num_units(pattern: str, frames: int, height: int, width: int, block: tuple[int, ...]) -> int:
    """U_b: tokens (random), spatial positions (tube), frames (frame) or kt x kh x kw blocks."""
    kt, kh, kw = block
    return {"random": frames * height * width, "tube": height * width, "frame": frames,
            "block": (frames // kt) * (height // kh) * (width // kw)}[pattern]


def unit_of_token(pattern: str, frames: int, height: int, width: int,
                  block: tuple[int, ...]) -> Tensor:
    """[T*H*W] int64: the unit index of every token of a video, in token raster order."""
    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width),
                             indexing="ij")
    kt, kh, kw = block
    units = {
        "random": (t * height + h) * width + w,
        "tube": h * width + w,
        "frame": t,
        "block": ((t // kt) * (height // kh) + h // kh) * (width // kw) + w // kw,
    }[pattern]
    return units.flatten()


def make_mask(video_meta: Tensor, height: int, width: int, pattern: str, block: list[int],
              seed: int, total_kept: int) -> Tensor:
    """Kept token indices of a batch of videos.

    Args:
        video_meta: [B, 4] int64 rows (token_offset, T_b, m_b masked units, out_offset), read on
            the host (the fast kernels read it on the device).
        height, width: tokens per frame H x W. pattern: one of PATTERNS. block: (kt, kh, kw).
        seed: low 32 bits of the seed. total_kept: the sum of kept tokens (host-known).
    Returns:
        keep_idx [total_kept] int64: flat rows of x.reshape(-1, D), ascending within each video
        (and overall, since videos are laid out in order).
    """
    pieces = []
    for b, (token_offset, frames, masked, _) in enumerate(video_meta.tolist()):
        units = num_units(pattern, frames, height, width, tuple(block))
        keys = unit_keys(torch.tensor([b]), seed, units)[0]
        masked_units = torch.argsort(keys, stable=True)[:masked]  # stable: ties broken by u
        keep_unit = torch.ones(units, dtype=torch.bool).index_fill_(0, masked_units, False)
        keep_token = keep_unit[unit_of_token(pattern, frames, height, width, tuple(block))]
        pieces.append(torch.nonzero(keep_token).flatten() + token_offset)
    keep_idx = torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int64)
    assert keep_idx.numel() == total_kept, "total_kept does not match the masks"
    return keep_idx.to(video_meta.device)


def pack(x: Tensor, keep_idx: Tensor) -> Tensor:
    """[N, D] rows -> [K, D]: the kept rows, in keep_idx order."""
    return x.index_select(0, keep_idx)


def unpack(packed: Tensor, keep_idx: Tensor, fill: Tensor, num_rows: int) -> Tensor:
    """[K, D] kept rows -> [num_rows, D]: row keep_idx[j] = packed[j], every other row = fill."""
    out = fill.expand(num_rows, fill.shape[0]).clone()
    return out.index_copy_(0, keep_idx, packed)


def unpack_fill_grad(grad_out: Tensor, keep_idx: Tensor) -> Tensor:
    """Gradient of unpack with respect to fill: the sum of grad_out over the masked rows."""
    masked = torch.ones(grad_out.shape[0], dtype=grad_out.dtype, device=grad_out.device)
    masked = masked.index_fill_(0, keep_idx, 0)
    return (grad_out * masked[:, None]).sum(0)
