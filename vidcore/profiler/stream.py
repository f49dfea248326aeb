"""A preset's pooling, one chunk of frames at a time, so that a long video's full-resolution
tokens never sit in memory together: only a chunk's tokens and the pooled output do.

Each view of the preset is split by chunk: the frames it selects inside the chunk, in the same
order, pooled by one vidcore.ops.pool call per chunk (all views in one launch). Views without
temporal pooling write their rows straight into the output; views that average over time
("mean") add each chunk's mean weighted by its frame count and divide at the end (max: the
running max). The result equals the preset's one-shot pooling: exactly, except for mean views,
whose sums are taken in another order (rounding only).
"""
from __future__ import annotations

import bisect

import torch
from torch import Tensor

from vidcore.ops import merge_tokens, pool
from vidcore.ops.pool_views import View, select_frames
from vidcore.profiler.presets import Preset, view_tokens

__all__ = ["StreamingPool"]


class StreamingPool:
    """Pools a video of `num_frames` frames ([t, H, W, D] chunks, in order) into the preset's
    tokens [L, D'] on `backend` ("auto": vidcore's kernel, "torch": the reference; for a merge
    preset, "torch" is the seed's reshape)."""

    def __init__(self, preset: Preset, num_frames: int, height: int, width: int, dim: int, *,
                 dtype: torch.dtype, device: torch.device | str, backend: str = "auto"):
        preset.check_grid(height, width)
        self.preset, self.num_frames, self.backend = preset, num_frames, backend
        self.height, self.width = height, width
        views = preset.views(height, width) if preset.views else []
        self._views, self._selected, self._offsets = [], [], []
        rows = 0
        for view in views:
            if view.temporal not in (None, "mean"):
                raise ValueError(f"streamed pooling takes temporal None or 'mean', got "
                                 f"{view.temporal!r}")
            selected = select_frames(view.frames, num_frames)
            if selected != sorted(selected) or any(not 0 <= f < num_frames for f in selected):
                raise ValueError(f"preset {preset.name}: frames {selected} of a {num_frames}-frame "
                                 f"video are not ascending frames of the video")
            self._views.append(view)
            self._selected.append(selected)
            self._offsets.append(rows)
            rows += view_tokens(view, num_frames, height, width)
        if preset.views is None:
            rows = num_frames * height * width // preset.merge
        self.tokens = rows
        accumulate = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self._out = torch.zeros(rows, preset.channels(dim), dtype=dtype, device=device)
        self._sums = {i: torch.zeros(view_tokens(v, num_frames, height, width), dim,
                                     dtype=accumulate, device=device)
                      for i, v in enumerate(self._views) if v.temporal == "mean"}
        for i in self._sums:
            if self._views[i].mode == "max":
                self._sums[i].fill_(-torch.inf)
        self._done = 0

    def add(self, tokens: Tensor) -> None:
        """Pool the next chunk: tokens [t, H, W, D] of frames done .. done + t - 1."""
        start, stop = self._done, self._done + tokens.shape[0]
        if stop > self.num_frames:
            raise ValueError(f"StreamingPool: {stop} frames given, the video has {self.num_frames}")
        self._done = stop
        if self.preset.views is None:
            per_frame = self.height * self.width // self.preset.merge
            flat = tokens.reshape(tokens.shape[0], self.height * self.width, -1)
            merged = (merge_tokens(flat, self.preset.merge) if self.backend == "auto" else
                      flat.reshape(tokens.shape[0], per_frame, -1))  # the seed's view
            self._out[start * per_frame: stop * per_frame] = merged.flatten(0, 1)
            return
        parts, targets = [], []
        for i, (view, selected) in enumerate(zip(self._views, self._selected, strict=True)):
            first = bisect.bisect_left(selected, start)
            last = bisect.bisect_left(selected, stop)
            if first == last:
                continue
            frames = "all" if view.frames == "all" else tuple(f - start for f in selected[first:last])
            parts.append(View(frames=frames, temporal=view.temporal, spatial=view.spatial,
                              mode=view.mode))
            targets.append((i, first, last))
        if not parts:
            return
        pooled = pool(tokens[None], parts, backend=self.backend).tokens[0]
        row = 0
        for (i, first, last), part in zip(targets, parts, strict=True):
            count = view_tokens(part, tokens.shape[0], self.height, self.width)
            chunk = pooled[row: row + count]
            row += count
            if i in self._sums:
                if self._views[i].mode == "max":
                    torch.maximum(self._sums[i], chunk, out=self._sums[i])
                else:
                    self._sums[i].add_(chunk, alpha=last - first)
            else:
                cells = count // (last - first)
                offset = self._offsets[i] + first * cells
                self._out[offset: offset + count] = chunk

    def result(self) -> Tensor:
        """The pooled tokens [L, D'] once every frame was added."""
        if self._done != self.num_frames:
            raise ValueError(f"StreamingPool: {self._done} of {self.num_frames} frames added")
        for i, total in self._sums.items():
            rows = total if self._views[i].mode == "max" else total / len(self._selected[i])
            offset = self._offsets[i]
            self._out[offset: offset + rows.shape[0]] = rows
        return self._out
