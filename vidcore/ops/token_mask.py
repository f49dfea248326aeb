"""Spatio-temporal token masking (DESIGN.md op 1): ST-LLM dynamic masking, VideoMAE tube
masking, frame and block masking, as kept-token indices ready for packing and varlen attention."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_backend, check_int

__all__ = ["TokenMask", "PositionIds", "make_mask", "draw_ratios"]

_OP = "make_mask"


class PositionIds(NamedTuple):
    """Per kept token: frame t, row h, column w (in its video) and its position in the packed
    sequence of its video (0 .. kept_b - 1), e.g. for (M-)RoPE."""

    t: Tensor
    h: Tensor
    w: Tensor
    pos: Tensor


@dataclass(frozen=True, eq=False)
class TokenMask:
    """The kept tokens of a batch of videos and everything the next stage needs.

    keep_idx: [total_kept] int64 rows of `x.reshape(-1, D)`, ascending within each video.
    cu_seqlens: [B + 1] int32 offsets of each video's kept tokens (FlashAttention varlen).
    """

    keep_idx: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    num_frames: tuple[int, ...]
    frame_size: tuple[int, int]
    kept_per_video: tuple[int, ...]
    pattern: str
    block: tuple[int, int, int]
    seed: int
    ratios: tuple[float, ...]

    @property
    def batch_size(self) -> int:
        return len(self.num_frames)

    @property
    def num_tokens(self) -> int:
        """Tokens of the unmasked batch: sum_b T_b * H * W."""
        return sum(self.num_frames) * self.frame_size[0] * self.frame_size[1]

    @property
    def total_kept(self) -> int:
        return sum(self.kept_per_video)

    def position_ids(self) -> PositionIds:
        """(t, h, w, pos) int64 [total_kept] each, computed on keep_idx's device, sync-free."""
        height, width = self.frame_size
        device = self.keep_idx.device
        token_offsets = [0]
        for frames in self.num_frames[:-1]:
            token_offsets.append(token_offsets[-1] + frames * height * width)
        video = torch.repeat_interleave(
            torch.arange(self.batch_size, device=device),
            torch.tensor(self.kept_per_video, device=device), output_size=self.total_kept)
        local = self.keep_idx - torch.tensor(token_offsets, device=device)[video]
        pos = torch.arange(self.total_kept, device=device) - self.cu_seqlens.long()[video]
        return PositionIds(local // (height * width), (local // width) % height, local % width, pos)


def _host_ints(name: str, values: object) -> list[int]:
    if isinstance(values, Tensor):
        if values.device.type != "cpu":
            raise ValueError(f"{_OP}: {name} must be held on the host (a CPU tensor or a sequence "
                             f"of ints), got a tensor on {values.device}: sizes must be host values")
        if values.dtype.is_floating_point or values.dim() != 1:
            raise TypeError(f"{_OP}: {name} must be a 1-D integer tensor, got {values.dtype} "
                            f"{tuple(values.shape)}")
        values = values.tolist()
    if not isinstance(values, Sequence):
        raise TypeError(f"{_OP}: {name} must be an int or a sequence of ints")
    for v in values:
        check_int(_OP, name, v, minimum=0)
    return list(values)


def _host_ratios(ratio: object, batch_size: int) -> list[float]:
    if isinstance(ratio, Tensor):
        ratio = ratio.tolist() if ratio.dim() else ratio.item()
    ratios = [ratio] * batch_size if isinstance(ratio, (int, float)) else list(ratio)
    if len(ratios) != batch_size:
        raise ValueError(f"{_OP}: ratio must be a float or have one value per video "
                         f"({batch_size}), got {len(ratios)}")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise ValueError(f"{_OP}: ratio must be in [0, 1], got {r}")
    return [float(r) for r in ratios]


def draw_ratios(batch_size: int, seed: int, *, mean: float = 0.5, std: float = 0.1,
                low: float = 0.1, high: float = 0.7) -> list[float]:
    """Per-video mask ratios ~ clip(N(mean, std), low, high), deterministic in `seed`.

    Defaults are ST-LLM's code (one N(0.5, 0.1) draw clipped to [0.1, 0.7]); here each video
    gets its own draw."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(batch_size, generator=generator, dtype=torch.float64) * std + mean
    return draws.clamp(low, high).tolist()


def make_mask(
    num_frames: int | Sequence[int] | Tensor,
    frame_size: tuple[int, int],
    ratio: float | Sequence[float] | Tensor,
    *,
    batch_size: int | None = None,
    pattern: str = "random",
    block: tuple[int, int, int] = (1, 2, 2),
    seed: int = 0,
    device: torch.device | str | None = None,
    backend: str = "auto",
) -> TokenMask:
    """Choose which tokens each video keeps.

    Video b masks `m_b = floor(ratio_b * U_b + 0.5)` of its U_b units: the ones smallest in
    (key, u), key = unit_keys(seed, b, u). The same inputs give the same mask, bit for bit, on
    every backend. No host round trip: every size is computed here from host values.

    Args:
        num_frames: T for all videos (then pass `batch_size`), or B per-video counts T_b
            (a sequence or CPU int tensor: a ragged batch).
        frame_size: (H, W) tokens per frame.
        ratio: mask ratio in [0, 1], one for all or one per video (see `draw_ratios`).
        pattern: "random" (unit = token), "tube" (spatial position through all frames),
            "frame" (whole frame) or "block" (`block` = (kt, kh, kw), must divide T_b, H, W).
        seed: any int; its low 32 bits are used.
        device: where keep_idx and cu_seqlens live (default CPU).
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        TokenMask. Backends: CPU -> csrc/cpu/token_mask.cpp; CUDA -> csrc/cuda/token_mask.cu.
    """
    check_backend(_OP, backend)
    check_int(_OP, "seed", seed)
    if isinstance(num_frames, int) and not isinstance(num_frames, bool):
        check_int(_OP, "batch_size", batch_size, minimum=0)
        num_frames = [num_frames] * batch_size
    frames = _host_ints("num_frames", num_frames)
    if not (isinstance(frame_size, Sequence) and len(frame_size) == 2):
        raise ValueError(f"{_OP}: frame_size must be (H, W), got {frame_size!r}")
    height, width = frame_size
    check_int(_OP, "frame_size", height, minimum=1)
    check_int(_OP, "frame_size", width, minimum=1)
    if pattern not in reference.PATTERNS:
        raise ValueError(f"{_OP}: pattern must be one of {reference.PATTERNS}, got {pattern!r}")
    block = _check_block(block, pattern, frames, height, width)
    ratios = _host_ratios(ratio, len(frames))

    meta, kept, out_offset, token_offset = [], [], 0, 0
    for t, r in zip(frames, ratios, strict=False):
        units = reference.num_units(pattern, t, height, width, block)
        if units >= 2**32:
            raise ValueError(f"{_OP}: a video has {units} units; at most 2^32 - 1 are supported")
        masked = math.floor(r * units + 0.5)
        kept.append((units - masked) * (t * height * width // units if units else 0))
        meta.append((token_offset, t, masked, out_offset))
        out_offset += kept[-1]
        token_offset += t * height * width
    video_meta = _to_device(torch.tensor(meta, dtype=torch.int64).reshape(-1, 4), device)
    cu_seqlens = _to_device(torch.tensor([0, *accumulate(kept)], dtype=torch.int32), device)
    fn = reference.make_mask if backend == "torch" else _make_mask
    keep_idx = fn(video_meta, height, width, pattern, list(block), seed & 0xFFFFFFFF, out_offset)
    return TokenMask(keep_idx, cu_seqlens, max(kept, default=0), tuple(frames), (height, width),
                     tuple(kept), pattern, block, seed, tuple(ratios))


def _to_device(host: Tensor, device: torch.device | str | None) -> Tensor:
    """Host metadata -> device. To CUDA through pinned memory, asynchronously: no sync, and the
    copy can be captured in a CUDA graph."""
    if device is None or torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _check_block(block: object, pattern: str, frames: list[int], height: int,
                 width: int) -> tuple[int, int, int]:
    if not (isinstance(block, Sequence) and len(block) == 3):
        raise ValueError(f"{_OP}: block must be (kt, kh, kw), got {block!r}")
    for size in block:
        check_int(_OP, "block", size, minimum=1)
    kt, kh, kw = block
    if pattern == "block" and (height % kh or width % kw or any(t % kt for t in frames)):
        raise ValueError(f"{_OP}: block {tuple(block)} must divide every T_b {frames} and the "
                         f"frame size {(height, width)}")
    return (kt, kh, kw)


@torch.library.custom_op("vidcore::make_mask", mutates_args=())
def _make_mask(video_meta: Tensor, height: int, width: int, pattern: str, block: list[int],
               seed: int, total_kept: int) -> Tensor:
    return reference.make_mask(video_meta, height, width, pattern, block, seed, total_kept)


@_make_mask.register_fake
def _(video_meta, height, width, pattern, block, seed, total_kept):
    return video_meta.new_empty(total_kept)
