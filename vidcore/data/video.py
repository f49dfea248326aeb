"""Video reading on PyAV: frames sampled uniformly (segment midpoints), at a frame rate, or by
explicit indices, decoded in one sequential pass and handed out in chunks (a long video never
sits in memory whole), resized by libswscale to what the vision tower takes.

    frames = read_video("clip.mp4", num_frames=16, size=224)    # uint8 [16, 3, 224, 224]
    for chunk in iter_frames("long.mp4", fps=1, size=224):      # uint8 [<= 64, 3, 224, 224]
        ...
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VideoReadError", "VideoInfo", "video_info", "read_video", "iter_frames",
           "uniform_indices"]


class VideoReadError(ValueError):
    """A video file is missing, cannot be decoded, or has no frames."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


def uniform_indices(total: int, num_frames: int) -> list[int]:
    """Midpoints of `num_frames` equal segments of `total` frames: floor((2i + 1) total / 2n)
    (Video-ChatGPT's and SlowFast-LLaVA's sampling). Fewer frames than asked repeat."""
    return [(2 * i + 1) * total // (2 * num_frames) for i in range(num_frames)]


def _open(path: str | os.PathLike):
    import av

    if not os.path.isfile(path):
        raise VideoReadError(f"read_video: no such file: {os.fspath(path)!r}")
    try:
        container = av.open(os.fspath(path))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(f"read_video: cannot open {os.fspath(path)!r} as a video: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"read_video: {os.fspath(path)!r} has no video stream")
    return container


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame count (counted from the packets when the container does not store it), frame rate
    and frame size, without decoding."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        count = stream.frames
        if count <= 0:
            try:
                count = sum(1 for packet in container.demux(stream) if packet.size)
            except av.error.FFmpegError as e:
                raise VideoReadError(f"read_video: cannot demux {os.fspath(path)!r}: {e}") from e
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        return VideoInfo(count, rate, stream.codec_context.height, stream.codec_context.width)


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"read_video: size must be positive, got {size!r}")
    return int(height), int(width)


def iter_frames(path: str | os.PathLike, *, num_frames: int | None = None,
                fps: float | None = None, size: int | Sequence[int] | None = None,
                indices: Sequence[int] | None = None, chunk: int = 64) -> Iterator[Tensor]:
    """Decoded frames as uint8 [t, 3, H, W] chunks of at most `chunk` frames, in order.

    Sampling (at most one): `num_frames` uniform (segment midpoints), `fps` (the first frame at
    or after each multiple of 1/fps seconds), `indices` (frame numbers; repeats allowed,
    ascending); none = every frame. `size`: S (S x S, as the seeds' 224 x 224) or (H, W).
    Raises VideoReadError for a missing, undecodable or empty file (or indices past its end).
    """

    if sum(x is not None for x in (num_frames, fps, indices)) > 1:
        raise ValueError("read_video: pass at most one of num_frames, fps, indices")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"read_video: num_frames must be >= 1, got {num_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"read_video: fps must be > 0, got {fps}")
    if chunk < 1:
        raise ValueError(f"read_video: chunk must be >= 1, got {chunk}")
    out_size = _size(size)
    if num_frames is not None:
        total = video_info(path).num_frames
        if total == 0:
            raise VideoReadError(f"read_video: {os.fspath(path)!r} has no frames")
        indices = uniform_indices(total, num_frames)
    wanted = None if indices is None else sorted(int(i) for i in indices)
    _open(path).close()  # fail now, not at the first next(), on a missing or unreadable file
    return _decode(path, fps, wanted, out_size, chunk)


def _decode(path, fps: float | None, wanted: list[int] | None, out_size, chunk: int
            ) -> Iterator[Tensor]:
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        buffer: list[Tensor] = []
        produced, cursor, next_time = 0, 0, 0.0
        try:
            for number, frame in enumerate(container.decode(stream)):
                if fps is not None:
                    time = float(frame.time) if frame.time is not None else number / (
                        float(stream.average_rate or 1))
                    if time + 1e-9 < next_time:
                        continue
                    next_time = (math.floor(time * fps + 1e-9) + 1) / fps
                    copies = 1
                elif wanted is not None:
                    copies = 0
                    while cursor < len(wanted) and wanted[cursor] == number:
                        copies, cursor = copies + 1, cursor + 1
                    if not copies:
                        if cursor == len(wanted):
                            break
                        continue
                else:
                    copies = 1
                image = _to_tensor(frame, out_size)
                buffer.extend([image] * copies)
                produced += copies
                while len(buffer) >= chunk:
                    yield torch.stack(buffer[:chunk])
                    buffer = buffer[chunk:]
        except av.error.FFmpegError as e:
            raise VideoReadError(f"read_video: cannot decode {os.fspath(path)!r}: {e}") from e
        if buffer:
            yield torch.stack(buffer)
    if produced == 0:
        raise VideoReadError(f"read_video: {os.fspath(path)!r} has no frames")
    if wanted is not None and cursor < len(wanted):
        raise VideoReadError(f"read_video: {os.fspath(path)!r} has no frame {wanted[cursor]} "
                             f"(it ends before)")


def _to_tensor(frame, size: tuple[int, int] | None) -> Tensor:
    if size is not None:
        frame = frame.reformat(width=size[1], height=size[0], format="rgb24",
                               interpolation="BILINEAR")
        array = frame.to_ndarray()
    else:
        array = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(array).permute(2, 0, 1)


def read_video(path: str | os.PathLike, *, num_frames: int | None = None,
               fps: float | None = None, size: int | Sequence[int] | None = None,
               indices: Sequence[int] | None = None) -> Tensor:
    """All sampled frames as one uint8 tensor [T, 3, H, W]; arguments as `iter_frames`."""
    return torch.cat(list(iter_frames(path, num_frames=num_frames, fps=fps, size=size,
                                      indices=indices)))
