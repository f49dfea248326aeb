"""`vidcore chat --model DIR VIDEO "question"`: decode a real video with the PyAV reader and let
a saved ST-LLM or MiniGPT4-Video (save_pretrained + its processor, as vidcore.train writes them)
answer. Import-light: the model code loads only when the command runs."""
from __future__ import annotations

import argparse
import json
import os

__all__ = ["add_arguments", "run", "answer"]

_MODELS = {  # config model_type -> (module, model class, processor class)
    "vidcore_stllm": ("vidcore.models.stllm", "STLLMForVideoQA", "STLLMProcessor"),
    "vidcore_minigpt4_video": ("vidcore.models.minigpt4_video", "MiniGPT4VideoForVideoQA",
                               "MiniGPT4VideoProcessor"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="a video file (anything FFmpeg decodes)")
    parser.add_argument("question")
    parser.add_argument("--model", required=True, help="a directory saved by vidcore.train or "
                        "save_pretrained (with the processor saved beside it)")
    parser.add_argument("--num-frames", type=int, default=None,
                        help="frames to sample (default: the processor's; MiniGPT4-Video: the "
                             "seed's every-N-th frame up to its frame budget)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-kernels", action="store_true", help="the seed's reference path")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")


def answer(model_dir: str | os.PathLike, video: str | os.PathLike, question: str, *,
           num_frames: int | None = None, max_new_tokens: int = 32, do_sample: bool = False,
           temperature: float = 1.0, use_kernels: bool = True, device: str | None = None) -> str:
    """The model's answer to `question` about `video` (decoded with vidcore.data.video)."""
    import importlib

    import torch

    from vidcore.data.video import read_video, video_info

    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"vidcore chat: {model_dir!r} holds no config.json (a directory "
                                f"written by save_pretrained)")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in _MODELS:
        raise ValueError(f"vidcore chat: {model_dir!r} is a {model_type!r} model; chat knows "
                         f"{', '.join(_MODELS)}")
    module_name, model_name, processor_name = _MODELS[model_type]
    module = importlib.import_module(module_name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = getattr(module, model_name).from_pretrained(model_dir, use_kernels=use_kernels)
    model.to(device).eval()
    processor = getattr(module, processor_name).from_pretrained(model_dir)
    size = processor.image_size
    num_frames = num_frames or processor.options.get("num_frames")
    if num_frames is None and model_type == "vidcore_minigpt4_video":
        indices = module.frame_indices(video_info(video).num_frames, model.config.max_frames)
        frames = read_video(video, indices=indices, size=size)
    else:
        frames = read_video(video, num_frames=num_frames or 16, size=size)
    inputs = processor([frames], [question])
    inputs.pop("sequence_layout")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {
        "do_sample": False}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:])[0].strip()


def run(args: argparse.Namespace) -> int:
    print(answer(args.model, args.video, args.question, num_frames=args.num_frames,
                 max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                 temperature=args.temperature, use_kernels=not args.no_kernels,
                 device=args.device))
    return 0
