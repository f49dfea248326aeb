"""Host-side planning shared by make_mask and mask_and_pack: argument checks, per-video counts,
and the per-video metadata the kernels read, placed on the device.

Every size is a host value, so nothing here waits on a device. On a GPU the metadata tensors are
cached per batch layout: the first call copies them from pinned memory (asynchronously), later
calls with the same layout reuse them, so a CUDA graph captured after a warm-up call holds no
host-to-device copy (a copy inside capture would replay from a host buffer the graph does not
own); a layout first seen during capture is refused with a message.
"""
from __future__ import annotations

import numbers
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._validation import check_int
from vidcore.reference.token_mask import MAX_UNITS

__all__ = ["MaskPlan", "plan_mask", "clear_metadata_cache"]

MAX_FRAME_TOKENS = 2**31 - 1  # H * W: keeps T_b * H * W (T_b < 2^31) far from int64 overflow
MAX_TOTAL_KEPT = 2**31 - 1  # cu_seqlens is int32 (FlashAttention's varlen convention)


@dataclass(frozen=True)
class MaskPlan:
    video_meta: Tensor  # [B, 4] int64 (token_offset, T_b, m_b, out_offset) on the device
    cu_seqlens: Tensor  # [B + 1] int32 on the device, a tensor of this call's own
    frames: tuple[int, ...]
    frame_size: tuple[int, int]
    kept: tuple[int, ...]
    pattern: str
    block: tuple[int, int, int]
    seed: int
    ratios: tuple[float, ...]
    count_rule: str

    @property
    def op_args(self) -> tuple:
        """The arguments after video_meta of vidcore::make_mask / vidcore::mask_and_pack."""
        height, width = self.frame_size
        return (height, width, self.pattern, list(self.block), self.seed & 0xFFFFFFFF,
                sum(self.kept), max(self.frames, default=0))


def plan_mask(op: str, num_frames: object, frame_size: object, ratio: object, *,
              batch_size: int | None, pattern: str, block: object, seed: int, count_rule: str,
              device: torch.device | str | None) -> MaskPlan:
    """Checks make_mask's arguments (errors name `op` and the argument) and computes the plan."""
    check_int(op, "seed", seed)
    if isinstance(num_frames, int) and not isinstance(num_frames, bool):
        check_int(op, "batch_size", batch_size, minimum=0)
        num_frames = [num_frames] * batch_size
    frames = _host_ints(op, "num_frames", num_frames)
    if not (isinstance(frame_size, Sequence) and len(frame_size) == 2):
        raise ValueError(f"{op}: frame_size must be (H, W), got {frame_size!r}")
    height, width = frame_size
    check_int(op, "frame_size", height, minimum=0)
    check_int(op, "frame_size", width, minimum=0)
    if height * width > MAX_FRAME_TOKENS:
        raise ValueError(f"{op}: frame_size {height} x {width} has more than 2^31 - 1 tokens")
    if pattern not in reference.PATTERNS:
        raise ValueError(f"{op}: pattern must be one of {reference.PATTERNS}, got {pattern!r}")
    if count_rule not in reference.COUNT_RULES:
        raise ValueError(f"{op}: count_rule must be one of {reference.COUNT_RULES}, got "
                         f"{count_rule!r}")
    block = _check_block(op, block, pattern, frames, height, width)
    ratios = _host_ratios(op, ratio, len(frames))

    rows, kept, out_offset, token_offset = [], [], 0, 0
    for t, r in zip(frames, ratios, strict=True):
        units = reference.num_units(pattern, t, height, width, block)
        if units > MAX_UNITS:
            raise ValueError(f"{op}: a video has {units} units; at most 2^32 - 1 are supported")
        masked = reference.masked_count(r, units, count_rule)
        kept.append((units - masked) * (t * height * width // units) if units else 0)
        rows.append((token_offset, t, masked, out_offset))
        out_offset += kept[-1]
        token_offset += t * height * width
    if out_offset > MAX_TOTAL_KEPT:
        raise ValueError(f"{op}: the batch keeps {out_offset} tokens; cu_seqlens is int32, so at "
                         f"most 2^31 - 1 kept tokens are supported (split the batch)")
    video_meta, cu_seqlens = _on_device(rows, [0, *accumulate(kept)], device)
    return MaskPlan(video_meta, cu_seqlens, tuple(frames), (height, width), tuple(kept), pattern,
                    block, seed, tuple(ratios), count_rule)


def _host_ints(op: str, name: str, values: object) -> list[int]:
    if isinstance(values, Tensor):
        if values.device.type != "cpu":
            raise ValueError(f"{op}: {name} must be held on the host (a CPU tensor or a sequence "
                             f"of ints), got a tensor on {values.device}: sizes must be host values")
        if values.dtype.is_floating_point or values.dtype.is_complex or values.dim() != 1:
            raise TypeError(f"{op}: {name} must be a 1-D integer tensor, got {values.dtype} "
                            f"{tuple(values.shape)}")
        values = values.tolist()
    if not isinstance(values, Sequence):
        raise TypeError(f"{op}: {name} must be an int or a sequence of ints")
    for v in values:
        check_int(op, name, v, minimum=0)
    return list(values)


def _host_ratios(op: str, ratio: object, batch_size: int) -> list[float]:
    if isinstance(ratio, Tensor):
        if ratio.device.type != "cpu" or ratio.dim() > 1:
            raise ValueError(f"{op}: a ratio tensor must be a 0-D or 1-D CPU tensor (ratios are "
                             f"host values), got {tuple(ratio.shape)} on {ratio.device}")
        ratio = ratio.tolist()
    if isinstance(ratio, numbers.Real):  # float, int, numpy scalars
        ratio = [ratio] * batch_size
    if not hasattr(ratio, "__len__") or isinstance(ratio, (str, bytes)):
        raise TypeError(f"{op}: ratio must be a float or one float per video, got "
                        f"{type(ratio).__name__}")
    ratios = list(ratio)
    if len(ratios) != batch_size:
        raise ValueError(f"{op}: ratio must be a float or have one value per video "
                         f"({batch_size}), got {len(ratios)}")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 <= r <= 1.0:
            raise ValueError(f"{op}: ratio must be in [0, 1], got {r!r}")
    return [float(r) for r in ratios]


def _check_block(op: str, block: object, pattern: str, frames: list[int], height: int,
                 width: int) -> tuple[int, int, int]:
    if not (isinstance(block, Sequence) and len(block) == 3):
        raise ValueError(f"{op}: block must be (kt, kh, kw), got {block!r}")
    for size in block:
        check_int(op, "block", size, minimum=1)
    kt, kh, kw = block
    if pattern == "block" and (height % kh or width % kw or any(t % kt for t in frames)):
        raise ValueError(f"{op}: block {tuple(block)} must divide every T_b {frames} and the "
                         f"frame size {(height, width)}")
    return (kt, kh, kw)


# (device, rows, cu_seqlens) -> (video_meta, cu_seqlens, used during a capture) on that device.
_METADATA: OrderedDict[tuple, tuple[Tensor, Tensor, bool]] = OrderedDict()
_METADATA_LIMIT = 256  # layouts kept (a few KB each); layouts a graph captured are never evicted
_METADATA_LOCK = threading.Lock()


def clear_metadata_cache() -> None:
    """Forget the cached per-layout metadata (tensors a captured CUDA graph reads are kept)."""
    with _METADATA_LOCK:
        for key in [k for k, entry in _METADATA.items() if not entry[2]]:
            del _METADATA[key]


def _upload(host: Tensor, device: torch.device) -> Tensor:
    """Host -> device through pinned memory, asynchronously: no sync (the pinned block is kept
    until the copy has run)."""
    return host.pin_memory().to(device, non_blocking=True)


def _on_device(rows: list[tuple[int, ...]], cu: list[int],
               device: torch.device | str | None) -> tuple[Tensor, Tensor]:
    device = torch.device("cpu" if device is None else device)
    if device.type != "cuda" or torch.compiler.is_compiling():
        # (compiled graphs hold these as constants)
        return (torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, 4),
                torch.tensor(cu, dtype=torch.int32, device=device))
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (device, tuple(v for row in rows for v in row), tuple(cu))
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    with _METADATA_LOCK:
        entry = _METADATA.get(key)
        if entry is None:
            if capturing:
                raise RuntimeError(
                    "make_mask: this batch layout was first seen inside CUDA graph capture; run "
                    "the same call once before capturing (a warm-up), so that its metadata is "
                    "already on the device and the graph captures no host-to-device copy")
            host_meta = torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)
            entry = (_upload(host_meta, device),
                     _upload(torch.tensor(cu, dtype=torch.int32), device), False)
        _METADATA[key] = (entry[0], entry[1], entry[2] or capturing)
        _METADATA.move_to_end(key)
        while len(_METADATA) > _METADATA_LIMIT:
            evictable = next((k for k, e in _METADATA.items() if not e[2]), None)
            if evictable is None:
                break
            del _METADATA[evictable]
    return entry[0], entry[1].clone()  # the mask's own cu_seqlens: callers may keep or edit it
