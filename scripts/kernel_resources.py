"""The README's kernel resource table: what each vidcore GPU kernel costs on sm_80 and sm_90a,
from ahead-of-time compilation on a machine without a GPU (nothing here is measured on one).

Triton kernels: every autotune config that survives the kernel's pruning, compiled as a real
call would compile it (vidcore.kernels._aot); CUDA C++ kernels: nvcc -Xptxas -v
(vidcore.kernels._nvcc). Registers per thread, shared memory per block, spills (stack bytes),
and for Triton the async copies (cp.async) that show a software-pipelined main loop.

    python scripts/kernel_resources.py > build/kernel_resources.md   # ~10-30 min on 2 cores
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

from vidcore.kernels._aot import compile_case
from vidcore.kernels._aot_cases import select_cases
from vidcore.kernels._nvcc import cuda_kernels
from vidcore.kernels._target import TARGETS

ROOT = Path(__file__).resolve().parents[1]
CASES = ["attention_fwd/d128/bf16/causal", "attention_fwd/d128/bf16/all",
         "attention_fwd/d256/bf16/causal", "attention_fwd_split_keys/d128/bf16/dense",
         "attention_bwd/d128/bf16/causal", "attention_bwd/d128/bf16/all",
         "attention_bwd/d256/bf16/causal", "merge_attention_states_fwd/d128/bf16/dense",
         "merge_attention_states_bwd/d128/bf16/dense", "multi_source_attention_fwd/d4/bf16/dense",
         "multi_source_attention_bwd/d4/bf16/dense", "multi_source_attention_bwd/d128/bf16/dense",
         "cosine_consistency_loss_fwd/d4096/bf16/dense",
         "cosine_consistency_loss_bwd/d4096/bf16/dense", "axis_attention_fwd/d64/bf16/dense",
         "axis_attention_bwd/d64/bf16/dense"]


def triton_table(case_names: list[str]) -> list[str]:
    cases = {c.name: c for c in select_cases("full")}
    rows = {}
    for name in case_names:
        for target in TARGETS:
            for r in compile_case(cases[name], target):
                rows.setdefault((r.kernel, r.case, r.config), {})[target] = r
    lines = ["| kernel | case | config (BLOCK_M,N / warps / stages) | "
             + " | ".join(f"{t}: regs, smem KiB, spill B, cp.async" for t in TARGETS) + " |",
             "| --- | --- | --- |" + " --- |" * len(TARGETS)]
    for (kernel, case, config), by_target in rows.items():
        cells = []
        for target in TARGETS:
            r = by_target.get(target)
            cells.append("pruned" if r is None else
                         f"{r.registers}, {r.shared / 1024:.0f}, {r.stack}, {r.async_copies}")
        lines.append(f"| `{kernel}` | {case.split('/', 1)[1]} | {_short(config)} | "
                     + " | ".join(cells) + " |")
    return lines


def _short(config: str) -> str:
    blocks = re.findall(r"BLOCK_\w=(\d+)", config)
    rest = re.findall(r",(w\d+),(s\d+)", config)
    return ",".join(blocks) + (" / " + " / ".join(rest[0]) if rest else "")


def cuda_table() -> list[str]:
    """Hot path: compiled without the device asserts, whose __assert_fail call adds a stack
    frame on the failing branch only (tests/kernels/test_cuda_resources.py)."""
    lines = ["| source | kernel | arch | regs | stack + spill B | launch bounds (threads) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        for arch in ("sm_80", "sm_90"):
            for k in cuda_kernels(source, arch, ROOT / "csrc" / "include",
                                  defines=("VIDCORE_NO_KERNEL_ASSERT",)):
                name = re.sub(r"\(.*", "", k.kernel).replace("vidcore::(anonymous namespace)::", "")
                lines.append(f"| {source.name} | `{name}` | {arch} | {k.registers} | "
                             f"{k.stack + k.spill_stores} | {k.max_threads or 'none'} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--skip-cuda", action="store_true")
    args = parser.parse_args()
    lines = triton_table(args.cases.split(","))
    if not args.skip_cuda:
        lines += ["", *cuda_table()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
