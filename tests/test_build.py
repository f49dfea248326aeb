"""The build: each .cu compiles with bare nvcc, the dispatch keys match how _C was built, and the
size limits of the style guide hold."""
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import vidcore
from vidcore import _backends
from vidcore.ops import FAST_KERNELS

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def test_there_are_cuda_sources():
    assert CUDA_SOURCES, "csrc/cuda/*.cu not found"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_with_bare_nvcc(source, tmp_path):
    # Kernels are torch-free, so nvcc alone must compile them (about 1 s each).
    cmd = ["nvcc", "-c", "-O3", "-std=c++17", "-arch=sm_90", f"-I{ROOT / 'csrc' / 'include'}",
           str(source), "-o", str(tmp_path / "kernel.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_extension_loaded():
    assert _backends.EXTENSION is not None, _backends.EXTENSION_MISSING


def test_dispatch_keys_match_the_build():
    with_cuda = vidcore.info()["extension"]["WITH_CUDA"]
    for op, fast in FAST_KERNELS.items():
        for device, (_, provider) in fast.items():
            key = {"cpu": "CPU", "cuda": "CUDA"}[device]
            expected = provider == "triton" or device == "cpu" or with_cuda
            has = torch._C._dispatch_has_kernel_for_dispatch_key(f"vidcore::{op}", key)
            assert has == expected, f"vidcore::{op} on {key}: registered={has}, expected={expected}"


def test_build_compiled_cuda_when_toolkit_present():
    # CI builds with torch cu130 + nvcc: a CUDA compile error must fail the build, not be skipped.
    if torch.version.cuda and shutil.which("nvcc"):
        assert vidcore.info()["extension"]["WITH_CUDA"] is True


LIMITS = [("kernels", "*.py", 300), ("csrc", "**/*.cu", 400), ("vidcore", "**/*.py", 400),
          ("tests", "**/*.py", 400), ("bench", "*.py", 400), (".", "setup.py", 80)]


@pytest.mark.parametrize("folder, pattern, limit", LIMITS, ids=lambda x: str(x))
def test_file_size_limits(folder, pattern, limit):
    too_long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).glob(pattern)
                if (n := len(p.read_text().splitlines())) > limit}
    assert not too_long, f"files over {limit} lines: {too_long}"


def test_no_top_level_kernels_import():
    offenders = [str(p.relative_to(ROOT)) for folder in ("vidcore", "kernels", "tests", "bench")
                 for p in (ROOT / folder).rglob("*.py")
                 if any(line.startswith(("import kernels", "from kernels"))
                        for line in p.read_text().splitlines())]
    assert not offenders, f"import vidcore.kernels instead of kernels in {offenders}"
