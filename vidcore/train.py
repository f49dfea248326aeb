"""One training loop for every vidcore model:

    python -m vidcore.train stllm --data synthetic --steps 200
    torchrun --nproc-per-node 2 -m vidcore.train minigpt4_video --steps 200 --parallel fsdp

A task (TASKS: name -> module, imported lazily) exposes `TRAIN_TASK: TrainTask`: a tiny default
model, its data and its evaluation. The loop runs single-process or under torchrun (DDP, or FSDP2
via `torch.distributed.fsdp.fully_shard`) with no change to the task, shows a rich progress bar,
logs loss and evaluation metrics, saves checkpoints with save_pretrained (plus the task's
processor), and plots the loss curve to a PNG. Everything lands in --out.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["TrainTask", "TASKS", "main", "to_device"]

TASKS: dict[str, str] = {
    "stllm": "vidcore.models.stllm",
    "minigpt4_video": "vidcore.models.minigpt4_video",
    "actionllm": "vidcore.models.actionllm_task",
    "task_adapter": "vidcore.models.task_adapter_task",
}


@dataclass
class TrainTask:
    """What a model contributes to the loop.

    build_processor (optional): runs first; the loop stores its result as `args.processor` (so
    build_model / build_data can use it) and saves it with every checkpoint (save_pretrained).
    build_model: the model (tiny default config); `model(**batch).loss` is the loss.
    build_data: (train, eval) iterables of batches; the loop cycles the training one. Under
    torchrun, shard by `args.rank` / `args.world_size`.
    evaluate: metrics of the (unwrapped) model on the eval batches, e.g. {"accuracy": ...}.
    """

    name: str
    build_model: Callable[[argparse.Namespace], nn.Module]
    build_data: Callable[[argparse.Namespace], tuple[Iterable, Iterable]]
    evaluate: Callable[[nn.Module, Iterable], dict[str, float]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    build_processor: Callable[[argparse.Namespace], Any] | None = None


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors to `device`; everything else (strings, host-side plans) stays as it is."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _parser(task: TrainTask) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m vidcore.train {task.name}",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic", choices=["synthetic"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help=f"default: runs/{task.name}")
    parser.add_argument("--eval-every", type=int, default=0, help="0: only at the end")
    parser.add_argument("--save-every", type=int, default=0, help="0: only at the end")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--no-kernels", action="store_true",
                        help="run the seed's reference path (use_kernels=False)")
    parser.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"],
                        help="how to wrap the model under torchrun")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead")
    if task.add_arguments is not None:
        task.add_arguments(parser)
    return parser


def load_task(name: str) -> TrainTask:
    if name not in TASKS:
        raise KeyError(name)
    return importlib.import_module(TASKS[name]).TRAIN_TASK


def _setup_distributed(args: argparse.Namespace) -> torch.device:
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args.rank = int(os.environ.get("RANK", "0"))
    use_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if args.world_size > 1:
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(args.device or "cpu")


def _wrap(model: nn.Module, args: argparse.Namespace, device: torch.device) -> nn.Module:
    if args.world_size == 1:
        return model
    if args.parallel == "ddp":
        # find_unused_parameters: vision towers keep pooler-only weights (CLIP's post_layernorm
        # normalises just the pooled CLS) that video tokens never reach
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):  # one shard group per transformer layer, then the rest
        if type(module).__name__.endswith(("DecoderLayer", "EncoderLayer", "QFormerLayer")):
            fully_shard(module)
    return fully_shard(model)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _cycle(batches: Iterable) -> Iterator:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("the task's training data is empty")


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _save(model: nn.Module, processor: Any, directory: str, args: argparse.Namespace) -> None:
    state = None
    if args.world_size > 1 and args.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                     cpu_offload=True))
    if args.rank == 0:
        _unwrap(model).save_pretrained(directory, state_dict=state)
        if processor is not None:
            processor.save_pretrained(directory)


def _plot(history: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = zip(*history["loss"], strict=True) if history["loss"] else ((), ())
    ax.plot(steps, losses, lw=0.8, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if history["eval"]:
        other = ax.twinx()
        other.plot([e["step"] for e in history["eval"]], [e.get("accuracy", float("nan"))
                   for e in history["eval"]], "o-", color="tab:orange", label="accuracy")
        other.set_ylabel("answer accuracy")
        other.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(task: TrainTask, args: argparse.Namespace) -> dict:
    """Run the loop; returns the history (loss per step, evaluations, wall time)."""
    device = _setup_distributed(args)
    args.out = args.out or os.path.join("runs", task.name)
    torch.manual_seed(args.seed)  # the same initial weights on every rank (FSDP does not sync)
    args.processor = task.build_processor(args) if task.build_processor else None
    model = task.build_model(args)
    if args.no_kernels:
        model.use_kernels = False
    model.to(device)
    train_data, eval_data = task.build_data(args)
    wrapped = _wrap(model, args, device)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    warmup = max(1, int(args.warmup * args.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _schedule(s, args.steps, warmup))
    history: dict = {"task": task.name, "args": _jsonable(args), "loss": [], "eval": []}
    batches = _cycle(train_data)
    lead = args.rank == 0
    start = time.perf_counter()
    with _progress(lead and not args.no_progress) as progress:
        bar = progress.add_task(task.name, total=args.steps, loss=float("nan"))
        for step in range(args.steps):
            wrapped.train()
            out = wrapped(**to_device(next(batches), device))
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
            loss = float(out.loss.detach())
            history["loss"].append((step + 1, loss))
            progress.update(bar, advance=1, loss=loss)
            if lead and args.no_progress:
                print(f"step {step + 1}/{args.steps} loss {loss:.4f}", flush=True)
            last = step + 1 == args.steps
            if last or (args.eval_every and (step + 1) % args.eval_every == 0):
                _unwrap(wrapped).eval()
                with torch.no_grad():
                    metrics = task.evaluate(_unwrap(wrapped), (to_device(b, device)
                                                               for b in eval_data))
                history["eval"].append({"step": step + 1, **metrics})
                if lead:
                    progress.console.print(f"step {step + 1}: loss {loss:.4f} " + " ".join(
                        f"{k} {v:.3f}" for k, v in metrics.items()))
            if last or (args.save_every and (step + 1) % args.save_every == 0):
                _save(wrapped, args.processor, os.path.join(args.out, "checkpoint"), args)
    history["seconds"] = time.perf_counter() - start
    if lead:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "history.json"), "w") as f:
            json.dump(history, f, indent=1)
        _plot(history, os.path.join(args.out, "loss.png"), f"vidcore.train {task.name}")
    if args.world_size > 1:
        torch.distributed.destroy_process_group()
    return history


class _progress:
    """A rich progress bar (or nothing) as a context manager."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return _NoProgress()
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                            TimeElapsedColumn(), TimeRemainingColumn())
        return self.bar.__enter__()

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc) if self.enabled else False


class _NoProgress:
    class console:
        @staticmethod
        def print(*args) -> None:
            print(*args, flush=True)

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


def _jsonable(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(f"usage: python -m vidcore.train {{{','.join(TASKS)}}} [options]  (--help after a "
              f"task name lists its options)", file=sys.stderr)
        return 2
    try:
        task = load_task(argv[0])
    except KeyError:
        print(f"vidcore.train: unknown task {argv[0]!r} (choose from {', '.join(TASKS)})",
              file=sys.stderr)
        return 2
    train(task, _parser(task).parse_args(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
