"""Per-unit hash keys that decide spatio-temporal masks (DESIGN.md op 1)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_backend, check_int, check_tensor

__all__ = ["unit_keys"]

_OP = "unit_keys"
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def unit_keys(
    seed: int,
    video_index: int | Sequence[int] | Tensor,
    num_units: int,
    *,
    device: torch.device | str | None = None,
    backend: str = "auto",
) -> Tensor:
    """Mask keys `k = h(h(h(s ^ 0x9e3779b9) ^ b) ^ u)` (h = lowbias32) of every unit u of a video.

    The units with the smallest `(key, u)` are the masked ones; keys depend only on
    (seed, video index, unit index), so every backend draws the same mask bit for bit.

    Args:
        seed: any int; its low 32 bits are used.
        video_index: b, the video's index in its batch: an int, or a sequence / 1-D integer
            tensor of B indices (one launch for all of them). Low 32 bits are hashed.
        num_units: U >= 0, units per video (tokens, spatial positions, frames or blocks).
        device: where to compute when `video_index` is not a tensor (default CPU).
        backend: "auto" (the fast kernel of the device) or "torch" (the reference).
    Returns:
        int64 keys in [0, 2^32): [U] for an int `video_index`, else [B, U].
    Backends: CPU -> csrc/cpu/unit_keys.cpp; CUDA -> csrc/cuda/unit_keys.cu; else reference.
    """
    check_int(_OP, "seed", seed)
    check_int(_OP, "num_units", num_units, minimum=0, below=2**32)
    check_backend(_OP, backend)
    single = not isinstance(video_index, (Tensor, Sequence))
    if single:
        check_int(_OP, "video_index", video_index, minimum=0)
        video_index = [video_index]
    if not isinstance(video_index, Tensor):
        for b in video_index:
            check_int(_OP, "video_index", b, minimum=0)
        video_index = torch.tensor(video_index, dtype=torch.int64, device=device)
    check_tensor(_OP, "video_index", video_index, dims=(1,), dtypes=_INT_DTYPES)
    video_index = video_index.to(torch.int64).contiguous()
    fn = reference.unit_keys if backend == "torch" else _unit_keys
    keys = fn(video_index, seed & 0xFFFFFFFF, num_units)
    return keys[0] if single else keys


@torch.library.custom_op("vidcore::unit_keys", mutates_args=())
def _unit_keys(video_index: Tensor, seed: int, num_units: int) -> Tensor:
    # Devices without a compiled kernel (or a build without vidcore._C) run the reference.
    return reference.unit_keys(video_index, seed, num_units)


@_unit_keys.register_fake
def _(video_index: Tensor, seed: int, num_units: int) -> Tensor:
    return video_index.new_empty((video_index.shape[0], num_units))
