"""Builds the one extension module vidcore._C; everything declarative is in pyproject.toml.

VIDCORE_BUILD_CUDA=auto|1|0 (default auto: build the CUDA half whenever torch is a CUDA build and
a toolkit is found; no GPU is needed). TORCH_CUDA_ARCH_LIST defaults to Ampere + Hopper.
DEBUG=1 compiles with -O0 -g.
"""
import os
import subprocess
from glob import glob
from pathlib import Path


def _probe_cuda_home() -> str | None:
    # `nvcc` on PATH may be a wrapper script, so ask nvcc for its real toolkit root.
    try:
        dry = subprocess.run(["nvcc", "-dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in dry.stderr.splitlines():
        if line.startswith("#$ TOP="):
            return str(Path(line[len("#$ TOP="):]).resolve())  # TOP is <toolkit>/bin/..
    return None


if "CUDA_HOME" not in os.environ and (home := _probe_cuda_home()):
    os.environ["CUDA_HOME"] = home  # must precede the import of torch.utils.cpp_extension
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

mode = os.environ.get("VIDCORE_BUILD_CUDA", "auto")
have_toolkit = torch.version.cuda is not None and CUDA_HOME is not None
if mode == "1" and not have_toolkit:
    raise RuntimeError(f"VIDCORE_BUILD_CUDA=1 but torch.version.cuda={torch.version.cuda}, "
                       f"CUDA_HOME={CUDA_HOME}: need a CUDA build of torch and a CUDA toolkit")
with_cuda = have_toolkit if mode == "auto" else mode == "1"

debug = os.environ.get("DEBUG") == "1"
opt = ["-O0", "-g"] if debug else ["-O3"]
sources = sorted(glob("csrc/*.cpp") + glob("csrc/cpu/*.cpp"))
macros = [("Py_LIMITED_API", "0x030A0000")]
# at::parallel_for is OpenMP in torch's builds: without -fopenmp the CPU twins run serially.
extra = {"cxx": [*opt, "-fopenmp"]}  # the C++ standard is the one torch asks for
if with_cuda:
    sources += sorted(glob("csrc/cuda/*.cu"))
    macros.append(("VIDCORE_WITH_CUDA", None))
    extra["nvcc"] = [*opt, "-lineinfo"]
Extension = CUDAExtension if with_cuda else CppExtension


class BuildExtensionWithInfo(BuildExtension):
    """Also writes vidcore/_build_info.py (how _C was built) beside the _C it describes (source
    tree when in place/editable, else the wheel's build tree): an sdist never touches it."""

    def run(self) -> None:
        super().run()
        Path(self.build_lib if not self.inplace else ".", "vidcore/_build_info.py").write_text(
            '"""Written by setup.py: how vidcore._C was built."""\n'
            f"WITH_CUDA = {with_cuda}\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n"
            f"CUDA_ARCH_LIST = {os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else None!r}\n")


# vidcore/ as found, plus kernels/ and bench/ mapped into it (package-dir in pyproject.toml)
packages = [*find_packages(include=["vidcore", "vidcore.*"]),
            *(f"vidcore.{p}" for p in find_packages(include=["kernels*", "bench*"]))]

setup(
    packages=packages,
    ext_modules=[Extension("vidcore._C", sources, include_dirs=[str(Path("csrc/include").resolve())],
                           define_macros=macros, extra_compile_args=extra,
                           extra_link_args=["-fopenmp"], py_limited_api=True)],
    cmdclass={"build_ext": BuildExtensionWithInfo},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
