"""Test-wide setup. TRITON_INTERPRET must be set before any Triton kernel is defined, so this
runs before vidcore is imported: Triton kernels then run on CPU tensors in the interpreter."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

import vidcore

# CI runs at least 200 examples per property; no deadline (the Triton interpreter is slow).
settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "cuda_ext" in item.keywords:
            has_ext = vidcore.info()["extension"].get("WITH_CUDA", False)
            if not (torch.cuda.is_available() and has_ext):
                item.add_marker(pytest.mark.skip(reason="needs vidcore._C with CUDA and a GPU"))


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def triton_device() -> str:
    """Where Triton launchers can be called directly: the GPU, or the CPU in the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
