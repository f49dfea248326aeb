"""Reference of unit_keys: the mask RNG of DESIGN.md op 1 (lowbias32 hash keys)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lowbias32", "unit_keys"]

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow: c is split in 16-bit
    halves so that every partial product stays below 2^48."""
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (hi + x * (c & 0xFFFF)) & _MASK32


def lowbias32(x: Tensor) -> Tensor:
    """Chris Wellons' lowbias32 integer hash on uint32 values held in an int64 tensor."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def unit_keys(video_index: Tensor, seed: int, num_units: int) -> Tensor:
    """Mask keys of DESIGN.md op 1: `k = h(h(h(s ^ 0x9e3779b9) ^ b) ^ u)`, h = lowbias32.

    Args:
        video_index: [B] int64, each video's index b in its batch (low 32 bits are hashed).
        seed: the seed's low 32 bits, an int in [0, 2^32).
        num_units: U, units per video; u runs over 0..U-1 (low 32 bits are hashed).
    Returns:
        [B, U] int64 holding uint32 keys. The m units with the smallest (key, u) are masked.
    """
    seed_hash = lowbias32(torch.tensor(seed ^ 0x9E3779B9, dtype=torch.int64))
    video_base = lowbias32(seed_hash ^ (video_index.to(torch.int64) & _MASK32))  # [B]
    units = torch.arange(num_units, dtype=torch.int64, device=video_index.device) & _MASK32
    return lowbias32(video_base[:, None] ^ units[None, :])
