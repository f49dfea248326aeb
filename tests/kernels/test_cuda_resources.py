"""Every CUDA C++ kernel (csrc/cuda/*.cu, whichever exist) compiled with `nvcc -Xptxas -v` for
sm_80 and sm_90: no register spills, and registers within what its launch bounds declare
(kernels without __launch_bounds__ must fit a 1024-thread block)."""
import shutil
from pathlib import Path

import pytest
from vidcore.kernels._nvcc import cuda_kernels

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_kernels_fit_their_launch_bounds_without_spills(source, arch):
    kernels = cuda_kernels(source, arch, ROOT / "csrc" / "include")
    assert kernels, f"no kernels compiled from {source.name}"
    spilling = [(k.kernel, k.stack, k.spill_stores) for k in kernels
                if k.stack or k.spill_stores or k.spill_loads]
    assert not spilling, f"{source.name} {arch}: (kernel, stack bytes, spill stores) {spilling}"
    over = [(k.kernel, k.registers, k.occupancy_registers) for k in kernels
            if k.registers > k.occupancy_registers]
    assert not over, f"{source.name} {arch}: (kernel, registers, allowed) {over}"
