"""Every Triton kernel compiled ahead of time for sm_80 and sm_90a (vidcore.kernels._aot, in a
subprocess: these tests run under the interpreter). Each autotune config that survives the
kernel's own pruning must compile, fit the target's shared memory, spill no registers, and the
software-pipelined kernels must issue async copies (cp.async / TMA), and the backward's
turn-taking over dQ must be in its PTX (the interpreter cannot run it). CI compiles a subset, the
largest surviving config of each kernel; the full matrix (head dims x dtypes x mask kinds x
every surviving config) is marked slow."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vidcore.kernels import _launch
from vidcore.kernels._attention_configs import shared_estimate
from vidcore.kernels._target import TARGETS

KERNELS = Path(_launch.__file__).parent
_PIPELINED = {"_attention_fwd_kernel": "fwd", "_attention_bwd_kernel": "bwd"}
_ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4}


def defined_kernels() -> set[str]:
    """Every Triton kernel in kernels/ (functions named *_kernel under @triton.jit)."""
    return {m[1] for p in KERNELS.glob("*.py")
            for m in re.finditer(r"@triton\.jit[^\n]*\n(?:[^\n]*\n)?def (\w+_kernel)\(",
                                 p.read_text())}


def compile_matrix(tmp: Path, *options: str) -> list[dict]:
    """Rows of vidcore.kernels._aot for every target, one process per target in parallel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    runs = []
    for target in TARGETS:
        path = tmp / f"{target}.json"
        command = [sys.executable, "-m", "vidcore.kernels._aot", "--targets", target,
                   "--json", str(path), *options]
        runs.append((subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True), path))
    rows = []
    for process, path in runs:
        _, stderr = process.communicate(timeout=3600)
        assert process.returncode == 0, stderr[-4000:]
        rows += json.loads(path.read_text())
    return rows


def problems(rows: list[dict]) -> list[str]:
    found = []
    for r in rows:
        where = f"{r['kernel']} [{r['case']}] {r['target']} {r['config']}"
        if r["shared"] > r["max_shared"]:
            found.append(f"{where}: {r['shared']} bytes of shared memory > {r['max_shared']}")
        if r["stack"]:
            found.append(f"{where}: {r['stack']} bytes of stack (register spills)")
        if r["kernel"] == "_attention_bwd_kernel" and not r["ordered_adds"]:
            found.append(f"{where}: the dQ turn-taking (acquire spin, atomic adds, bar.sync, "
                         f"release) is not in the PTX")
        kind = _PIPELINED.get(r["kernel"])
        if kind is None:
            continue
        blocks = dict(re.findall(r"BLOCK_(\w)=(\d+)", r["config"]))
        stages = int(re.search(r",s(\d+)", r["config"])[1])
        _, dim, dtype, mask = r["case"].split("/")
        block_d = max(16, 1 << (int(dim[1:]) - 1).bit_length())
        estimate = shared_estimate(kind, int(blocks["M"]), int(blocks["N"]), block_d, stages,
                                   _ELEMENT_SIZE[dtype])
        if estimate < r["shared"]:
            found.append(f"{where}: the pruning rule's estimate {estimate} < {r['shared']} bytes")
        ranged_bwd = kind == "bwd" and mask in ("ranges", "all")
        if stages > 1 and not ranged_bwd and r["async_copies"] == 0:
            found.append(f"{where}: {stages} stages but no async copies (not pipelined)")
    return found


def check_matrix(rows: list[dict]) -> None:
    for target in TARGETS:
        compiled = {r["kernel"] for r in rows if r["target"] == target}
        assert defined_kernels() <= compiled, (
            f"not compiled for {target}: {defined_kernels() - compiled} (register a launcher "
            f"in vidcore/kernels/_aot_cases.py)")
    assert not problems(rows), "\n".join(problems(rows))


@pytest.fixture(scope="module")
def ci_rows(tmp_path_factory) -> list[dict]:
    return compile_matrix(tmp_path_factory.mktemp("aot"), "--matrix", "ci", "--largest-only")


def test_kernel_inventory_is_found():
    assert {"_attention_fwd_kernel", "_attention_bwd_delta_kernel", "_attention_bwd_kernel",
            "_attention_bwd_dq_kernel", "_merge_attention_states_fwd_kernel",
            "_merge_attention_states_bwd_kernel"} <= defined_kernels()


def test_every_kernel_compiles_within_its_target(ci_rows):
    check_matrix(ci_rows)


def test_head_dim_72_loads_are_vectorised(ci_rows):
    # The head dim is a constexpr and rows are known 8-element aligned: K/V tiles of d=72 move
    # in 16-byte async copies, not element by element.
    rows = [r for r in ci_rows if r["case"] == "attention_fwd/d72/bf16/causal"]
    assert rows and all(r["async_copies"] > 0 for r in rows)


@pytest.mark.slow
def test_full_matrix(tmp_path):
    check_matrix(compile_matrix(tmp_path, "--matrix", "full"))
