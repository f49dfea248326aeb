"""Ahead-of-time compilation of vidcore's Triton kernels for GPUs this machine does not have.

A launcher is run on small CPU tensors inside `record_launches` (vidcore.kernels._launch), so
every kernel it would launch is captured with the exact arguments and meta-parameters of a real
call. Each captured launch is then compiled through Triton's own JIT path (`warmup`) with a
stand-in driver that reports the target GPU, once per autotune config that survives the
kernel's own pruning, so the specialisation (alignment, constexprs, num_warps, num_stages) is
the one a GPU would compile. From each binary: shared memory (Triton's metadata), registers and
stack frame (spills) from `cuobjdump --dump-resource-usage` on the cubin, and from the PTX the
async copies (cp.async / TMA) and the tensor-core instructions.

Must run without TRITON_INTERPRET (kernels defined under the interpreter cannot be compiled):
tests and scripts call it in a subprocess, `python -m vidcore.kernels._aot`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner
from vidcore.kernels._launch import Launch, record_launches
from vidcore.kernels._target import TARGETS, Target, compile_target

__all__ = ["KernelResources", "compile_case", "main"]

_CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@dataclass
class KernelResources:
    """One compiled kernel binary and what it costs."""

    kernel: str
    case: str
    target: str
    config: str  # block sizes, warps, stages
    programs: int  # grid size of the recorded call (with this config's block sizes)
    shared: int  # dynamic shared memory, bytes
    max_shared: int  # the target's limit per block
    registers: int
    stack: int  # stack frame bytes per thread: register spills (Triton kernels have no arrays)
    async_copies: int  # cp.async / cp.async.bulk (TMA) instructions in the PTX
    tensor_cores: str  # wgmma, mma or none
    ordered_adds: bool  # acquire-spin, atomic adds, release: the backward's dQ turn-taking
    compile_s: float


class _TargetDriver:
    """Stands in for the CUDA driver while compiling: reports `target` as the current GPU (the
    compute capability doubles as the device id, so each target gets its own kernel cache)."""

    def __init__(self, target: Target):
        self.target = target

    def get_current_device(self) -> int:
        return self.target.arch

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.target.arch, 32)

    def get_device_capability(self, device: int) -> tuple[int, int]:
        return divmod(self.target.arch, 10)


@contextlib.contextmanager
def _targeting(target: Target) -> Iterator[None]:
    saved = driver._active
    driver.set_active(_TargetDriver(target))
    try:
        with compile_target(target):
            yield
    finally:
        driver._active = saved


def _configs(launch: Launch, largest_only: bool) -> tuple[object, list]:
    """The JIT function and the configs the autotuner would try (after the kernel's pruning),
    or only the largest of them (tile area, then stages: the likeliest to run out of shared
    memory or registers)."""
    kernel = launch.kernel
    if not isinstance(kernel, Autotuner):
        return kernel, [None]
    kernel.nargs = dict(zip(kernel.arg_names, launch.args, strict=False))
    try:
        configs = kernel.prune_configs(dict(launch.kwargs))
    finally:
        kernel.nargs = None
    if largest_only:
        configs = [max(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"],
                                               c.num_stages))]
    return kernel.fn, configs


def _cubin_usage(cubin: bytes) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(_CUOBJDUMP), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
    return int(usage[1]), int(usage[2]) + int(usage[3])


def _ptx_features(ptx: str) -> tuple[int, str, bool]:
    copies = len(re.findall(r"^\s*(?:@%p\d+\s+)?cp\.async\.(?:ca|cg|bulk)", ptx, re.M))
    cores = "wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "none"
    ordered = all(re.search(pattern, ptx) for pattern in (
        r"ld\.acquire\.gpu\.global", r"atom\.global\.gpu\.relaxed\.add\.(?:v\d\.)?f32", r"bar\.sync 0;",
        r"atom\.global\.gpu\.release\.exch"))
    return copies, cores, ordered


def _describe(config) -> str:
    if config is None:
        return "fixed"
    blocks = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks},w{config.num_warps},s{config.num_stages}"


def compile_launches(launches: list[Launch], case: str, target_name: str,
                     largest_only: bool = False) -> list[KernelResources]:
    """Compiles every recorded launch for the target, once per surviving autotune config."""
    target = TARGETS[target_name]
    rows = []
    with _targeting(target):
        for launch in launches:
            jit, configs = _configs(launch, largest_only)
            for config in configs:
                meta = {**launch.kwargs, **(config.all_kwargs() if config else {})}
                start = time.perf_counter()
                compiled = jit.warmup(*launch.args, grid=(1,), **meta)
                seconds = time.perf_counter() - start
                registers, stack = _cubin_usage(compiled.asm["cubin"])
                copies, cores, ordered = _ptx_features(compiled.asm["ptx"])
                grid = launch.grid_for({**dict(zip(jit.arg_names, launch.args, strict=False)),
                                        **meta})
                programs = 1
                for size in grid:
                    programs *= size
                rows.append(KernelResources(
                    jit.fn.__name__, case, target_name, _describe(config), programs,
                    compiled.metadata.shared, target.max_shared, registers, stack, copies, cores,
                    ordered, round(seconds, 2)))
    return rows


def compile_case(case, target_name: str, largest_only: bool = False) -> list[KernelResources]:
    """Runs the case's launcher under `record_launches` (planning for the target) and compiles
    what it launched."""
    with compile_target(TARGETS[target_name]), record_launches() as launches:
        case.run()
    return compile_launches(launches, case.name, target_name, largest_only)


def main(argv: list[str] | None = None) -> int:
    from vidcore.kernels._aot_cases import select_cases

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--matrix", choices=("ci", "full"), default="ci")
    parser.add_argument("--match", default="", help="only cases whose name contains this")
    parser.add_argument("--largest-only", action="store_true",
                        help="compile only the largest surviving config of each kernel")
    parser.add_argument("--json", type=Path, help="write the rows here (default: stdout)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    rows = []
    for target_name in args.targets.split(","):
        for case in select_cases(args.matrix, args.match):
            rows += [asdict(r) for r in compile_case(case, target_name, args.largest_only)]
    text = json.dumps(rows, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
