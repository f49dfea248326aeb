"""What this vidcore install can run: versions, device, and per op which fast kernels are live
(and, for each that is not, why). Backs `vidcore.info()` and the `vidcore info` command."""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from importlib.metadata import version

import torch

from vidcore import _backends
from vidcore.ops import FAST_KERNELS

__all__ = ["BackendStatus", "backend_status", "info"]

_DISPATCH_KEY = {"cpu": "CPU", "cuda": "CUDA"}


@dataclass(frozen=True)
class BackendStatus:
    op: str
    device: str  # "cpu" | "cuda"
    kernel: str  # "C++", "CUDA C++", "Triton" or "reference"
    live: bool  # runs on this machine now
    reason: str | None  # why not live, or why the reference runs there


def _missing_provider(provider: str) -> str:
    if provider == "triton":
        return _backends.TRITON_MISSING or "Triton kernel not registered"
    if _backends.EXTENSION is None:
        return _backends.EXTENSION_MISSING or "vidcore._C not loaded"
    return "vidcore._C was built without CUDA (no CUDA toolkit or VIDCORE_BUILD_CUDA=0 at build time)"


def backend_status() -> list[BackendStatus]:
    """One row per (op, device type) for CPU and CUDA."""
    has_gpu = torch.cuda.is_available()
    rows = []
    for op, fast in FAST_KERNELS.items():
        for device in ("cpu", "cuda"):
            usable = device == "cpu" or has_gpu
            no_device = None if usable else "no CUDA device on this machine"
            if device not in fast:
                rows.append(BackendStatus(op, device, "reference", usable,
                                          no_device or "no fast kernel for this device (by design)"))
                continue
            kernel, provider = fast[device]
            registered = torch._C._dispatch_has_kernel_for_dispatch_key(
                f"vidcore::{op}", _DISPATCH_KEY[device])
            reason = no_device if registered else _missing_provider(provider)
            rows.append(BackendStatus(op, device, kernel if registered else "reference",
                                      registered and usable, reason))
    return rows


def info() -> dict[str, object]:
    """Versions, device and backend table of this install, as a JSON-friendly dict."""
    triton = _backends.TRITON
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA device)"
    return {
        "versions": {
            "vidcore": version("vidcore"),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "triton": getattr(triton, "__version__", None),
            "python": platform.python_version(),
        },
        "device": device,
        "extension": _backends.build_info() or {"missing": _backends.EXTENSION_MISSING},
        "backends": [asdict(row) for row in backend_status()],
    }
