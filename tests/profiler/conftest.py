"""Small videos written with PyAV (real encoders vidcore does not control) for the profiler."""
from __future__ import annotations

import pytest
import torch

FRAMES, RATE, HEIGHT, WIDTH = 24, 12, 48, 64


def write_video(path, codec: str, frames: int = FRAMES, options: dict | None = None) -> None:
    """`frames` frames of seeded noise, encoded by `codec` at RATE fps."""
    import av

    generator = torch.Generator().manual_seed(0)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for _ in range(frames):
            image = torch.randint(0, 256, (HEIGHT, WIDTH, 3), dtype=torch.uint8,
                                  generator=generator).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """name -> path: mpeg4 and H.264 mp4s, and broken files made from them."""
    pytest.importorskip("av")
    folder = tmp_path_factory.mktemp("videos")
    paths = {name: folder / f"{name}.mp4" for name in ("mpeg4", "h264", "faststart")}
    write_video(paths["mpeg4"], "mpeg4")
    write_video(paths["h264"], "libx264")
    write_video(paths["faststart"], "mpeg4", options={"movflags": "faststart"})
    for name in ("mpeg4", "faststart"):  # the index at the end is cut off / the frames are
        data = paths[name].read_bytes()
        paths[f"truncated_{name}"] = folder / f"truncated_{name}.mp4"
        paths[f"truncated_{name}"].write_bytes(data[: len(data) // 2])
    paths["garbage"] = folder / "garbage.mp4"
    paths["garbage"].write_bytes(b"this is not a video\n" * 64)
    paths["empty"] = folder / "empty.mp4"
    paths["empty"].write_bytes(b"")
    return paths


@pytest.fixture
def tiny() -> dict:
    """profile() options that keep a run to a fraction of a second: 4 x 4 tokens of width 32 per
    frame (16 x 16 pixel frames), chunks of 4 frames, one timed call per stage."""
    return dict(grid=(4, 4), patch=4, dim=32, head_dim=16, chunk=4, repeats=1, text_tokens=8,
                threads=1)


@pytest.fixture
def tiny_args() -> list[str]:
    """The same as `vidcore profile` arguments."""
    return ["--grid", "4x4", "--patch", "4", "--dim", "32", "--head-dim", "16", "--chunk", "4",
            "--repeats", "1", "--text-tokens", "8", "--threads", "1"]
