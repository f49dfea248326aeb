"""Registers, spills and launch bounds of the CUDA C++ kernels (csrc/cuda/*.cu), from
`nvcc -Xptxas -v` (and the PTX it keeps: `.maxntid` / `.minnctapersm` are the launch bounds).
The sources are torch-free, so bare nvcc compiles them in a few seconds each."""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REGISTERS_PER_SM", "CudaKernel", "cuda_kernels"]

REGISTERS_PER_SM = 65536  # sm_80 and sm_90 alike
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")


@dataclass
class CudaKernel:
    """One compiled __global__ function."""

    source: str
    kernel: str  # demangled where c++filt is available
    arch: str
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    max_threads: int | None  # __launch_bounds__ (None: not declared)
    min_blocks: int | None

    @property
    def occupancy_registers(self) -> int:
        """The most registers a thread may use for the declared launch bounds to be met (for a
        kernel without bounds: any block up to 1024 threads)."""
        threads = self.max_threads or 1024
        return min(255, REGISTERS_PER_SM // (threads * (self.min_blocks or 1)))


def _launch_bounds(ptx: str) -> dict[str, tuple[int | None, int | None]]:
    bounds = {}
    for entry in re.split(r"\n(?=\.visible \.entry|\.entry|\.weak \.entry)", ptx):
        name = re.search(r"\.entry (\w+)\(", entry)
        if name:
            threads = re.search(r"\.maxntid (\d+), (\d+), (\d+)", entry)
            blocks = re.search(r"\.minnctapersm (\d+)", entry)
            bounds[name[1]] = (
                int(threads[1]) * int(threads[2]) * int(threads[3]) if threads else None,
                int(blocks[1]) if blocks else None)
    return bounds


def _demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names
    return out if len(out) == len(names) else names


def cuda_kernels(source: Path, arch: str, include: Path, nvcc: str = "nvcc",
                 defines: tuple[str, ...] = ()) -> list[CudaKernel]:
    """Every kernel of `source` compiled for `arch` (e.g. "sm_90"), with `-D` for each of
    `defines` (e.g. "VIDCORE_NO_KERNEL_ASSERT")."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [nvcc, "-c", "-O3", "-std=c++17", f"-arch={arch}", "-Xptxas", "-v", "-keep",
             "-keep-dir", tmp, f"-I{include}", *(f"-D{d}" for d in defines), str(source),
             "-o", str(Path(tmp) / "k.o")],
            capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"nvcc failed on {source.name} for {arch}:\n{result.stderr}")
        bounds = _launch_bounds("".join(p.read_text() for p in Path(tmp).glob("*.ptx")))
    kernels = []
    for block in result.stderr.split("Compiling entry function")[1:]:
        block = "Compiling entry function" + block
        name, kernel_arch = _ENTRY.search(block).groups()
        frame, used = _FRAME.search(block), _USED.search(block)
        kernels.append(CudaKernel(source.name, name, kernel_arch, int(used[1]), int(frame[1]),
                                  int(frame[2]), int(frame[3]), *bounds.get(name, (None, None))))
    for kernel, readable in zip(kernels, _demangle([k.kernel for k in kernels]), strict=True):
        kernel.kernel = readable
    return kernels
