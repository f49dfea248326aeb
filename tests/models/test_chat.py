"""`vidcore chat`: a saved model answers a question about a video file, end to end."""
from __future__ import annotations

import pytest
import torch

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "square.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(12):
            image = torch.zeros(32, 32, 3, dtype=torch.uint8)
            image[10:16, 2 * t:2 * t + 6] = torch.tensor([220, 40, 40], dtype=torch.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image.numpy(), format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("name", ["stllm", "minigpt4_video"])
def test_stllm_and_minigpt4_video_chat_cli(vqa, tmp_path, video_file, capsys, name):
    import importlib

    from vidcore.profiler.cli import main

    module = importlib.import_module(f"vidcore.models.{name}")
    processor_class = module.STLLMProcessor if name == "stllm" else module.MiniGPT4VideoProcessor
    config_fn = module.tiny_stllm_config if name == "stllm" else \
        module.tiny_minigpt4_video_config
    model, processor = vqa.tiny_setup(module, processor_class, config_fn)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert main(["chat", "--model", str(tmp_path), str(video_file),
                 "What colour are the moving shapes?", "--num-frames", "4",
                 "--max-new-tokens", "3"]) == 0
    answer = capsys.readouterr().out.strip()
    # the same question asked by hand: decode 4 frames, build the prompt, greedy-generate
    from vidcore.data.video import read_video

    inputs = processor([read_video(video_file, num_frames=4, size=processor.image_size)],
                       ["What colour are the moving shapes?"])
    inputs.pop("sequence_layout")
    model.eval()
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert answer == processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])[0].strip()
