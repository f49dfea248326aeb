"""What this vidcore install can run: versions, device, and per op which fast kernels are live
(and, for each that is not, why). Backs `vidcore.info()` and the `vidcore info` command."""
from __future__ import annotations

import io
import platform
from dataclasses import asdict, dataclass
from importlib.metadata import version

import torch

from vidcore import _backends
from vidcore.ops import FAST_KERNELS

__all__ = ["BackendStatus", "Info", "backend_status", "info"]

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


class Info(dict):
    """The report as a JSON-friendly dict (keys "versions", "device", "extension", "backends")
    that shows itself as the backend table: `print(vidcore.info())`, or `vidcore.info()` at a
    prompt, prints the table; `json.dumps(vidcore.info())` and `info["backends"]` read the data."""

    def rich_table(self):
        """A rich renderable: the versions line, the device, the extension, the backend table."""
        from rich.console import Group
        from rich.table import Table

        versions = ", ".join(f"{k} {v}" for k, v in self["versions"].items())
        table = Table(title="backends", title_justify="left")
        for column in ("op", "device", "kernel", "live", "why"):
            table.add_column(column)
        for row in self["backends"]:
            table.add_row(row["op"], row["device"], row["kernel"], "yes" if row["live"] else "no",
                          row["reason"] or "")
        return Group(f"[bold]vidcore[/bold]  {versions}\ndevice: {self['device']}\n"
                     f"extension: {self['extension']}", table)

    def __str__(self) -> str:
        from rich.console import Console

        out = io.StringIO()
        Console(file=out, width=120, color_system=None).print(self.rich_table())
        return out.getvalue().rstrip("\n")

    __repr__ = __str__


def info() -> Info:
    """Versions, device and backend table of this install: a dict (see `Info`) that prints as
    the table. Printing is left to the caller (`print(vidcore.info())`)."""
    triton = _backends.TRITON
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA device)"
    return Info({
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
    })
