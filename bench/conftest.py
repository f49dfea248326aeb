"""pytest-benchmark options for bench/: `--bench-size tiny|small|full` picks the named shapes.
`make test` runs every benchmark once at tiny size (--benchmark-disable) so none rots."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="tiny", choices=["tiny", "small", "full"])


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture(scope="session")
def bench_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pytest_generate_tests(metafunc):
    """Parametrise `bench_case, provider` from the module's `cases(size, device)`. At tiny size
    (the CI smoke run) the torch.compile provider is left out: it only measures Inductor."""
    if "bench_case" not in metafunc.fixturenames:
        return
    size = metafunc.config.getoption("--bench-size")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = [pytest.param(case, provider, id=f"{case.name}-{provider}")
              for case in metafunc.module.cases(size, device)
              for provider in case.providers if not (size == "tiny" and provider == "compiled")]
    metafunc.parametrize("bench_case, provider", params)
