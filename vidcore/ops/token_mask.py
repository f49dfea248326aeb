"""Spatio-temporal token masking (DESIGN.md op 1): ST-LLM dynamic masking, VideoMAE tube
masking, frame and block masking, as kept-token indices ready for packing and varlen attention."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple

import torch
from torch import Tensor

from vidcore import reference
from vidcore.ops._mask_plan import MaskPlan, plan_mask
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

    A mask is immutable and trusted only as vidcore made it. `make_mask` / `mask_and_pack`
    masks are right by construction. A TokenMask built by hand (or by `dataclasses.replace`) has
    its host fields checked at once and its tensors checked on the host the first time an op
    uses it (a device sync for GPU tensors): keep_idx ascending within each video's token range,
    cu_seqlens its running count. Editing keep_idx or cu_seqlens in place afterwards is caught
    (tensor version counters) and refused by every op that takes the mask.
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
    count_rule: str = "round"
    # None: not yet checked (made by hand); (): made by vidcore, versions not yet recorded
    _versions: tuple[int, ...] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_mask_fields(self)

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

    def checked(self, op: str) -> TokenMask:
        """The mask, after making sure it is one vidcore can trust (see the class docstring);
        raises ValueError naming `op` otherwise. Inside torch.compile this Python-level check is
        skipped (version counters are not traceable); the ops' own index checks still run."""
        if torch.compiler.is_compiling():
            return self
        versions = (self.keep_idx._version, self.cu_seqlens._version)
        if self._versions is None:  # made by hand: check the values once
            _check_mask_values(op, self)
        elif self._versions and versions != self._versions:
            raise ValueError(f"{op}: mask.keep_idx or mask.cu_seqlens was modified in place after "
                             f"the mask was made; a TokenMask is immutable: make a new one")
        if self._versions != versions:
            object.__setattr__(self, "_versions", versions)
        return self

    def position_ids(self) -> PositionIds:
        """(t, h, w, pos) int64 [total_kept] each, computed on keep_idx's device, sync-free."""
        self.checked("position_ids")
        height, width = self.frame_size
        device = self.keep_idx.device
        token_offsets = [0, *accumulate(t * height * width for t in self.num_frames[:-1])]
        video = torch.repeat_interleave(
            torch.arange(self.batch_size, device=device),
            torch.tensor(self.kept_per_video, dtype=torch.int64, device=device),
            output_size=self.total_kept)
        local = self.keep_idx - torch.tensor(token_offsets, dtype=torch.int64, device=device)[video]
        pos = torch.arange(self.total_kept, device=device) - self.cu_seqlens.long()[video]
        frame_size = max(height * width, 1)  # no tokens when a frame has none: any divisor works
        return PositionIds(local // frame_size, (local // max(width, 1)) % max(height, 1),
                           local % max(width, 1), pos)


def _check_mask_fields(mask: TokenMask) -> None:
    """Host-side consistency of a TokenMask (cheap: no tensor data is read)."""
    op = "TokenMask"
    if not (isinstance(mask.keep_idx, Tensor) and mask.keep_idx.dtype == torch.int64
            and mask.keep_idx.dim() == 1):
        raise TypeError(f"{op}: keep_idx must be a 1-D int64 tensor")
    if not (isinstance(mask.cu_seqlens, Tensor) and mask.cu_seqlens.dtype == torch.int32
            and mask.cu_seqlens.device == mask.keep_idx.device):
        raise TypeError(f"{op}: cu_seqlens must be an int32 tensor on keep_idx's device")
    for name in ("num_frames", "kept_per_video"):
        values = getattr(mask, name)
        if not isinstance(values, tuple):
            raise TypeError(f"{op}: {name} must be a tuple of ints")
        for v in values:
            check_int(op, name, v, minimum=0)
    if not (isinstance(mask.frame_size, tuple) and len(mask.frame_size) == 2):
        raise TypeError(f"{op}: frame_size must be a tuple (H, W)")
    for size in mask.frame_size:
        check_int(op, "frame_size", size, minimum=0)
    frame = mask.frame_size[0] * mask.frame_size[1]
    kept, frames = mask.kept_per_video, mask.num_frames
    if len(kept) != len(frames) or any(k > t * frame for k, t in zip(kept, frames, strict=True)):
        raise ValueError(f"{op}: kept_per_video {list(kept)} must give one count per video, each "
                         f"at most the video's T_b * H * W tokens")
    if mask.keep_idx.shape[0] != sum(kept) or tuple(mask.cu_seqlens.shape) != (len(kept) + 1,):
        raise ValueError(f"{op}: keep_idx must have sum(kept_per_video) = {sum(kept)} entries "
                         f"and cu_seqlens B + 1 = {len(kept) + 1}; got "
                         f"{tuple(mask.keep_idx.shape)} and {tuple(mask.cu_seqlens.shape)}")
    if mask.max_seqlen != max(kept, default=0):
        raise ValueError(f"{op}: max_seqlen must be max(kept_per_video) = {max(kept, default=0)}")


def _check_mask_values(op: str, mask: TokenMask) -> None:
    """A hand-made mask's tensors, read on the host once: keep_idx strictly ascending within each
    video's token range, cu_seqlens the running count of kept_per_video."""
    keep = mask.keep_idx.cpu()
    kept = mask.kept_per_video
    expected_cu = torch.tensor([0, *accumulate(kept)], dtype=torch.int64)
    if not torch.equal(mask.cu_seqlens.cpu().long(), expected_cu):
        raise ValueError(f"{op}: mask.cu_seqlens must be {expected_cu.tolist()} "
                         f"(the running count of kept_per_video)")
    frame = mask.frame_size[0] * mask.frame_size[1]
    tokens = torch.tensor([t * frame for t in mask.num_frames], dtype=torch.int64)
    starts = torch.cumsum(tokens, 0) - tokens
    video = torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(kept, dtype=torch.int64))
    outside = (keep < starts[video]) | (keep >= (starts + tokens)[video])
    same_video = video[1:] == video[:-1]
    unordered = torch.cat([torch.zeros(1, dtype=torch.bool), same_video & (keep[1:] <= keep[:-1])])
    bad = torch.nonzero(outside | unordered[:keep.shape[0]]).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"{op}: mask.keep_idx[{i}] = {int(keep[i])} must lie in video "
                         f"{int(video[i])}'s token rows and above the entry before it (keep_idx "
                         f"is ascending within each video)")


def draw_ratios(batch_size: int, seed: int, *, mean: float = 0.5, std: float = 0.1,
                low: float = 0.1, high: float = 0.7) -> list[float]:
    """Per-video mask ratios ~ clip(N(mean, std), low, high), deterministic in `seed`.

    Defaults are ST-LLM's code (one N(0.5, 0.1) draw clipped to [0.1, 0.7]); here each video
    gets its own draw. Needs 0 <= low <= high <= 1, std >= 0 and a finite mean."""
    op = "draw_ratios"
    check_int(op, "batch_size", batch_size, minimum=0)
    check_int(op, "seed", seed)
    for name, value in (("mean", mean), ("std", std), ("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
                not math.isfinite(value):
            raise ValueError(f"{op}: {name} must be a finite number, got {value!r}")
    if std < 0 or not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{op}: need std >= 0 and 0 <= low <= high <= 1, got std={std}, "
                         f"low={low}, high={high}")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(batch_size, generator=generator, dtype=torch.float64) * std + mean
    return draws.clamp(float(low), float(high)).tolist()


def make_mask(
    num_frames: int | Sequence[int] | Tensor,
    frame_size: tuple[int, int],
    ratio: float | Sequence[float] | Tensor,
    *,
    batch_size: int | None = None,
    pattern: str = "random",
    block: tuple[int, int, int] = (1, 2, 2),
    seed: int = 0,
    count_rule: str = "round",
    device: torch.device | str | None = None,
    backend: str = "auto",
) -> TokenMask:
    """Choose which tokens each video keeps.

    Video b masks m_b of its U_b units: `floor(ratio_b * U_b + 0.5)` (count_rule="round") or
    `int(ratio_b * U_b)` (count_rule="trunc", ST-LLM's rule), in float64; the ones smallest in
    (key, u), key = unit_keys(seed, b, u). The same inputs give the same mask, bit for bit, on
    every backend. No host round trip: every size is computed here from host values, and on a
    GPU the per-video metadata is copied once per distinct batch layout (a CUDA graph captures
    no host-to-device copy once the layout has been seen before capture).

    Args:
        num_frames: T for all videos (then pass `batch_size`), or B per-video counts T_b
            (a sequence or CPU int tensor: a ragged batch).
        frame_size: (H, W) tokens per frame (0 allowed: empty frames).
        ratio: mask ratio in [0, 1], one for all or one per video (see `draw_ratios`); floats,
            numpy scalars or a CPU tensor.
        pattern: "random" (unit = token), "tube" (spatial position through all frames),
            "frame" (whole frame) or "block" (`block` = (kt, kh, kw), must divide T_b, H, W).
        seed: any int; its low 32 bits are used.
        count_rule: "round" (default) or "trunc" (ST-LLM).
        device: where keep_idx and cu_seqlens live (default CPU).
        backend: "auto" (the device's fast kernel) or "torch" (the reference).
    Returns:
        TokenMask. Backends: CPU -> csrc/cpu/token_mask.cpp; CUDA -> csrc/cuda/token_mask.cu.
    """
    check_backend(_OP, backend)
    plan = plan_mask(_OP, num_frames, frame_size, ratio, batch_size=batch_size, pattern=pattern,
                     block=block, seed=seed, count_rule=count_rule, device=device)
    fn = reference.make_mask if backend == "torch" else _make_mask
    keep_idx = fn(plan.video_meta, *plan.op_args)
    return mask_of(plan, keep_idx)


def mask_of(plan: MaskPlan, keep_idx: Tensor) -> TokenMask:
    """The TokenMask of a plan and the keep_idx a kernel made for it: trusted as built."""
    mask = TokenMask(keep_idx, plan.cu_seqlens, max(plan.kept, default=0), plan.frames,
                     plan.frame_size, plan.kept, plan.pattern, plan.block, plan.seed,
                     plan.ratios, plan.count_rule)
    trusted = () if torch.compiler.is_compiling() else (keep_idx._version,
                                                        plan.cu_seqlens._version)
    object.__setattr__(mask, "_versions", trusted)
    return mask


@torch.library.custom_op("vidcore::make_mask", mutates_args=())
def _make_mask(video_meta: Tensor, height: int, width: int, pattern: str, block: list[int],
               seed: int, total_kept: int, max_frames: int) -> Tensor:
    return reference.make_mask(video_meta, height, width, pattern, block, seed, total_kept,
                               max_frames)


@_make_mask.register_fake
def _(video_meta, height, width, pattern, block, seed, total_kept, max_frames):
    return video_meta.new_empty(total_kept)
