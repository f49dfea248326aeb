"""Reference of spatio-temporal token masking and packing (DESIGN.md op 1; ST-LLM dynamic
masking, VideoMAE tube masking).

Video b has T_b frames of H x W tokens, stored in raster order (t, h, w) starting at flat row
`token_offset_b` of `x.reshape(-1, D)`. Its tokens are grouped into units by `pattern`; unit u
gets the key `unit_keys(seed, b, u)`, and the `m_b` units smallest in (key, u) are masked.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from vidcore.reference.unit_keys import unit_keys

__all__ = ["PATTERNS", "COUNT_RULES", "num_units", "masked_count", "unit_of_token",
           "check_video_meta", "make_mask", "mask_and_pack", "pack", "unpack", "unpack_fill_grad"]

PATTERNS = ("random", "tube", "frame", "block")
COUNT_RULES = ("round", "trunc")
MAX_UNITS = 2**32 - 1  # unit indices are hashed as 32-bit values: (key, u) must be unique


def num_units(pattern: str, frames: int, height: int, width: int, block: tuple[int, ...]) -> int:
    """U_b: tokens (random), spatial positions (tube), frames (frame) or kt x kh x kw blocks."""
    kt, kh, kw = block
    return {"random": frames * height * width, "tube": height * width, "frame": frames,
            "block": (frames // kt) * (height // kh) * (width // kw)}[pattern]


def masked_count(ratio: float, units: int, count_rule: str = "round") -> int:
    """m_b, the units a video masks, in float64: floor(ratio * U + 0.5) ("round", vidcore's
    default) or int(ratio * U) ("trunc", ST-LLM's stllm/models/utils.py rule)."""
    return math.floor(ratio * units + 0.5) if count_rule == "round" else int(ratio * units)


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


def check_video_meta(op: str, rows: list[list[int]], height: int, width: int, pattern: str,
                     block: tuple[int, ...], total_kept: int, max_frames: int,
                     num_tokens: int | None = None) -> list[int]:
    """The contract of video_meta rows (token_offset, T_b, m_b masked units, out_offset), the same
    the C++ twins and CUDA kernels check: videos follow each other from offset 0, each keeps
    its exact count, and the last ends at total_kept (and within num_tokens rows, if given).
    Returns kept_b per video."""
    kept, token_end, out_end = [], 0, 0
    for b, (token_offset, frames, masked, out_offset) in enumerate(rows):
        if not 0 <= frames <= max_frames or (pattern == "block" and frames % block[0]):
            raise ValueError(f"{op}: video_meta row {b}: T_b = {frames} must be in [0, "
                             f"max_frames={max_frames}] (and a multiple of kt for blocks)")
        units = num_units(pattern, frames, height, width, block)
        tokens = frames * height * width
        if units > MAX_UNITS or not 0 <= masked <= units:
            raise ValueError(f"{op}: video_meta row {b}: masked = {masked} must be in [0, "
                             f"U_b={units}] with U_b < 2^32")
        kept.append(0 if masked >= units or tokens == 0 else (units - masked) * (tokens // units))
        if token_offset != token_end or out_offset != out_end:
            raise ValueError(f"{op}: video_meta row {b}: offsets ({token_offset}, {out_offset}) "
                             f"must continue the previous videos at ({token_end}, {out_end})")
        token_end, out_end = token_end + tokens, out_end + kept[-1]
    if out_end != total_kept or (num_tokens is not None and token_end > num_tokens):
        raise ValueError(f"{op}: video_meta keeps {out_end} tokens of {token_end}; total_kept is "
                         f"{total_kept}" + ("" if num_tokens is None else f", x has {num_tokens}"))
    return kept


def make_mask(video_meta: Tensor, height: int, width: int, pattern: str, block: list[int],
              seed: int, total_kept: int, max_frames: int) -> Tensor:
    """Kept token indices of a batch of videos.

    Args:
        video_meta: [B, 4] int64 rows (token_offset, T_b, m_b masked units, out_offset), read on
            the host (the fast kernels read it on the device); see check_video_meta.
        height, width: tokens per frame H x W. pattern: one of PATTERNS. block: (kt, kh, kw).
        seed: low 32 bits of the seed. total_kept: the sum of kept tokens (host-known).
        max_frames: an upper bound of every T_b (the CUDA kernels size their launch by it).
    Returns:
        keep_idx [total_kept] int64: flat rows of x.reshape(-1, D), ascending within each video
        (and overall, since videos are laid out in order).
    """
    return _kept_indices("make_mask", video_meta, height, width, pattern, tuple(block), seed,
                         total_kept, max_frames, None)


def mask_and_pack(x: Tensor, video_meta: Tensor, height: int, width: int, pattern: str,
                  block: list[int], seed: int, total_kept: int,
                  max_frames: int) -> tuple[Tensor, Tensor]:
    """make_mask, then pack: x [num_tokens, D] rows -> (packed [total_kept, D], keep_idx)."""
    keep_idx = _kept_indices("mask_and_pack", video_meta, height, width, pattern, tuple(block),
                             seed, total_kept, max_frames, x.shape[0])
    return pack(x, keep_idx), keep_idx


def _kept_indices(op: str, video_meta: Tensor, height: int, width: int, pattern: str,
                  block: tuple[int, ...], seed: int, total_kept: int, max_frames: int,
                  num_tokens: int | None) -> Tensor:
    if pattern not in PATTERNS or min(height, width) < 0 or height * width >= 2**31:
        raise ValueError(f"{op}: pattern must be one of {PATTERNS} and H * W in [0, 2^31), got "
                         f"{pattern!r}, {height} x {width}")
    if len(block) != 3 or min(block) < 1 or (pattern == "block" and (height % block[1] or
                                                                    width % block[2])):
        raise ValueError(f"{op}: block {block} must be 3 sizes >= 1 (kh | H, kw | W for blocks)")
    if not 0 <= seed < 2**32:
        raise ValueError(f"{op}: seed must be in [0, 2^32), got {seed}")
    rows = video_meta.tolist()
    check_video_meta(op, rows, height, width, pattern, block, total_kept, max_frames, num_tokens)
    pieces = [torch.empty(0, dtype=torch.int64)]
    for b, (token_offset, frames, masked, _) in enumerate(rows):
        units = num_units(pattern, frames, height, width, block)
        keys = unit_keys(torch.tensor([b]), seed, units)[0]
        masked_units = torch.argsort(keys, stable=True)[:masked]  # stable: ties broken by u
        keep_unit = torch.ones(units, dtype=torch.bool).index_fill_(0, masked_units, False)
        keep_token = keep_unit[unit_of_token(pattern, frames, height, width, block)]
        pieces.append(torch.nonzero(keep_token).flatten() + token_offset)
    return torch.cat(pieces).to(video_meta.device)


def pack(x: Tensor, keep_idx: Tensor) -> Tensor:
    """[N, D] rows -> [K, D]: the kept rows, in keep_idx order (index_select rejects indices
    outside [0, N))."""
    return x.index_select(0, keep_idx)


def _check_ordered(op: str, keep_idx: Tensor, num_rows: int) -> None:
    """unpack's contract: keep_idx strictly ascending within [0, num_rows). Checked without a
    host sync (a device-side assert on GPUs), like the kernels do."""
    if keep_idx.shape[0] > num_rows:
        raise ValueError(f"{op}: keep_idx has {keep_idx.shape[0]} entries, more than the "
                         f"{num_rows} rows it indexes")
    if keep_idx.numel():
        ordered = (keep_idx[0] >= 0) & (keep_idx[-1] < num_rows) & (
            keep_idx[1:] > keep_idx[:-1]).all()
        torch._assert_async(ordered, f"{op}: keep_idx must be strictly ascending within "
                                     f"[0, {num_rows})")


def unpack(packed: Tensor, keep_idx: Tensor, fill: Tensor, num_rows: int) -> Tensor:
    """[K, D] kept rows -> [num_rows, D]: row keep_idx[j] = packed[j], every other row = fill.
    keep_idx must be strictly ascending within [0, num_rows)."""
    if keep_idx.shape[0] != packed.shape[0]:
        raise ValueError(f"unpack: keep_idx must have one entry per packed row "
                         f"({packed.shape[0]}), got {keep_idx.shape[0]}")
    _check_ordered("unpack", keep_idx, num_rows)
    out = fill.expand(num_rows, fill.shape[0]).clone()
    return out.index_copy_(0, keep_idx, packed)


def unpack_fill_grad(grad_out: Tensor, keep_idx: Tensor) -> Tensor:
    """Gradient of unpack with respect to fill: the sum of grad_out over the masked rows.

    The sum has one fixed order, so that every backend gives the same bits for any thread count:
    rows in order (kept rows as +0) are added pairwise, even + odd, level by level, an odd last
    row passing to the next level unchanged; in float32 (float64 for float64 grad_out).
    """
    num_rows, channels = grad_out.shape
    _check_ordered("unpack_fill_grad", keep_idx, num_rows)
    acc_dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    masked = torch.ones(num_rows, dtype=torch.bool, device=grad_out.device)
    masked = masked.index_fill_(0, keep_idx, False)
    level = torch.where(masked[:, None], grad_out.to(acc_dtype), 0.0)
    while level.shape[0] > 1:
        pairs = level.shape[0] // 2
        summed = level[0:2 * pairs:2] + level[1:2 * pairs:2]
        level = torch.cat([summed, level[2 * pairs:]])
    total = level[0] if num_rows else level.new_zeros(channels)
    return total.to(grad_out.dtype)
