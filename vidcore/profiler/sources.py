"""Where the profiler's frames and per-frame tokens come from.

Frames: a video file, decoded in chunks by vidcore.data.video (PyAV) or, with
decoder="torchcodec", by torchcodec when it is installed (it needs the system's FFmpeg; on a GPU
it decodes with NVDEC); or synthetic frames (seeded noise), drawn chunk by chunk. Either way a
video's decoded frames never sit in memory together.

Tokens: a vision model given as a Hugging Face config or local checkpoint directory (random
weights when the directory holds only config.json), or a fast stand-in: one patch embedding
(Conv2d with stride = kernel = patch), ViT's first layer, so token counts and widths are a
ViT's at a fraction of the cost.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SourceError", "VideoSource", "open_source", "PatchEmbedding", "HFVision",
           "vision_model"]


class SourceError(ValueError):
    """A video or vision model the profiler cannot use (missing, unreadable, no frames)."""


@dataclass
class VideoSource:
    """Frames to profile: a file (`path`) or synthetic noise (`path` None). `total_frames` and
    `fps` describe the file; `frames(n, size, chunk)` yields n frames in uint8 [t, 3, S, S]
    chunks (n uniformly sampled frames of the file, repeating frames when n exceeds them)."""

    path: str | None
    total_frames: int
    fps: float
    decoder: str = "pyav"
    device: str = "cpu"
    seed: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.path else "synthetic"

    def indices(self, num_frames: int | None = None, fps: float | None = None) -> list[int]:
        """The file's frame numbers to decode: `num_frames` uniform (segment midpoints), every
        frame at or after each multiple of 1 / fps seconds (constant frame rate assumed), or
        every frame."""
        from vidcore.data.video import uniform_indices

        if num_frames is not None:
            return uniform_indices(self.total_frames, num_frames)
        if fps is not None:
            if not self.fps > 0:
                raise SourceError(f"{self.name} states no frame rate: sample it with --frames")
            step = self.fps / fps  # source frames per sample
            count = math.ceil(self.total_frames / step - 1e-9)
            return sorted({min(self.total_frames - 1, math.ceil(k * step - 1e-9))
                           for k in range(count)})
        return list(range(self.total_frames))

    def frames(self, indices: list[int], size: int, chunk: int) -> Iterator[Tensor]:
        if self.path is None:
            generator = torch.Generator().manual_seed(self.seed)
            for start in range(0, len(indices), chunk):
                count = min(chunk, len(indices) - start)
                yield torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8,
                                    generator=generator)
            return
        if self.decoder == "torchcodec":
            yield from _torchcodec_frames(self.path, indices, size, chunk, self.device)
            return
        from vidcore.data.video import VideoReadError, iter_frames

        try:
            yield from iter_frames(self.path, indices=indices, size=size, chunk=chunk)
        except VideoReadError as e:
            raise SourceError(str(e)) from e


def open_source(path: str | os.PathLike | None, *, decoder: str = "pyav", device: str = "cpu",
                synthetic_frames: int | None = None, seed: int = 0) -> VideoSource:
    """The file's frame count and rate (read without decoding), or a synthetic source."""
    if path is None:
        return VideoSource(None, synthetic_frames or 0, 0.0, seed=seed)
    if decoder not in ("pyav", "torchcodec"):
        raise SourceError(f"decoder must be pyav or torchcodec, got {decoder!r}")
    if decoder == "torchcodec":
        decoder_cls = _torchcodec()
        if not os.path.isfile(path):
            raise SourceError(f"no such file: {os.fspath(path)!r}")
        try:
            metadata = decoder_cls(os.fspath(path)).metadata
        except (RuntimeError, ValueError) as e:
            raise SourceError(f"torchcodec cannot open {os.fspath(path)!r}: {e}") from e
        total, rate = metadata.num_frames or 0, float(metadata.average_fps or 0)
    else:
        from vidcore.data.video import VideoReadError, video_info

        try:
            about = video_info(path)
        except VideoReadError as e:
            raise SourceError(str(e)) from e
        total, rate = about.num_frames, about.fps
    if total <= 0:
        raise SourceError(f"{os.fspath(path)!r} has no frames")
    return VideoSource(os.fspath(path), total, rate, decoder=decoder, device=device)


def _torchcodec():
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as e:
        raise SourceError("decoder torchcodec is not usable here (pip install torchcodec; it "
                          f"needs the system's FFmpeg libraries): {e}") from e
    return VideoDecoder


def _torchcodec_frames(path: str, indices: list[int], size: int, chunk: int, device: str
                       ) -> Iterator[Tensor]:
    decoder = _torchcodec()(path, device=device)
    for start in range(0, len(indices), chunk):
        try:
            batch = decoder.get_frames_at(indices=indices[start: start + chunk]).data
        except (RuntimeError, IndexError, ValueError) as e:
            raise SourceError(f"torchcodec cannot decode {path!r}: {e}") from e
        resized = nn.functional.interpolate(batch.float(), size=(size, size), mode="bilinear",
                                            antialias=True, align_corners=False)
        yield resized.round_().clamp_(0, 255).to(torch.uint8)


class PatchEmbedding(nn.Module):
    """The stand-in vision model: frames uint8 [t, 3, S, S] -> tokens [t, S/p, S/p, dim]
    (pixels scaled to [-1, 1], one Conv2d with kernel = stride = p, seeded weights)."""

    def __init__(self, grid: tuple[int, int] = (16, 16), patch: int = 14, dim: int = 1024,
                 seed: int = 0):
        super().__init__()
        if grid[0] != grid[1]:
            raise ValueError(f"the stand-in vision model takes square grids, got {grid}")
        self.grid, self.patch, self.dim = grid, patch, dim
        self.frame_size = grid[0] * patch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    @property
    def label(self) -> str:
        return f"patch embedding stand-in (Conv2d 3->{self.dim}, {self.patch}x{self.patch})"

    def forward(self, frames: Tensor) -> Tensor:
        x = frames.to(self.proj.weight.dtype) / 127.5 - 1.0
        return self.proj(x).permute(0, 2, 3, 1)


class HFVision(nn.Module):
    """A transformers vision model: frames -> last hidden state without the CLS token, as a grid
    [t, h, w, hidden]. `attention` switches its attention implementation ("vidcore" runs
    vidcore.ops.attention, "sdpa" torch's), so both paths can be timed on one set of weights."""

    def __init__(self, model: nn.Module, label: str):
        super().__init__()
        config = model.config
        self.model, self.label = model, label
        self.frame_size = int(config.image_size)
        side = self.frame_size // int(config.patch_size)
        self.grid, self.dim = (side, side), int(config.hidden_size)

    def set_attention(self, name: str) -> None:
        self.model.set_attn_implementation(name)

    def forward(self, frames: Tensor) -> Tensor:
        x = frames.to(self.model.dtype) / 127.5 - 1.0
        hidden = self.model(pixel_values=x).last_hidden_state
        cells = self.grid[0] * self.grid[1]
        return hidden[:, hidden.shape[1] - cells:].unflatten(1, self.grid)


def vision_model(source: str | os.PathLike) -> HFVision:
    """A vision model from a local directory (config.json, with or without weights) or a config
    file."""
    from transformers import AutoConfig, AutoModel

    import vidcore.integrations.transformers  # noqa: F401  registers attn_implementation="vidcore"

    path = os.fspath(source)
    if not os.path.exists(path):
        raise SourceError(f"vision model: no such file or directory: {path!r}")
    try:
        config = AutoConfig.from_pretrained(path)
        config = getattr(config, "vision_config", config)  # a full CLIP/SigLIP config
        has_weights = os.path.isdir(path) and any(
            name.endswith((".safetensors", ".bin")) for name in os.listdir(path))
        model = (AutoModel.from_pretrained(path, attn_implementation="sdpa") if has_weights
                 else AutoModel.from_config(config, attn_implementation="sdpa"))
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(f"vision model {path!r}: {e}") from e
    if not hasattr(model.config, "patch_size"):
        raise SourceError(f"vision model {path!r} ({type(model).__name__}) is not a ViT with a "
                          "patch_size")
    weights = "weights" if has_weights else "random weights (config only)"
    return HFVision(model.eval(), f"{type(model).__name__} ({weights})")
