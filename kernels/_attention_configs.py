"""Autotune configs of the attention kernels and the rules that prune them for the GPU at hand.

Each kernel has its own tiles (the backward keeps a key block and two accumulators resident
and streams query blocks, the forward keeps a query block and one accumulator). A rule drops,
before the autotuner compiles anything, every tile that cannot run well on the target:
- shared memory: an estimate of what the compiled kernel allocates (pipelined K/V or Q/dO
  buffers per stage, plus the layout-conversion scratch) must fit the target's limit per block;
- registers: the fp32 accumulators and score tiles a thread holds must fit a budget that leaves
  room for operands, or ptxas spills (4-warp 128-row forward tiles spill at head dims 96-128);
- fp32 without TF32 has no tensor-core path: only small tiles.
tests/kernels/test_aot_compile.py compiles every surviving config for sm_80 and sm_90a and
holds the rules to the compiled binaries (shared memory within the limit, no spills), and
checks the estimate is never below the compiled size.
"""
from __future__ import annotations

import triton
from vidcore.kernels._attention_common import INTERPRET
from vidcore.kernels._target import target_of

__all__ = ["bwd_autotune", "fwd_autotune", "shared_estimate"]

# (BLOCK_M query rows, BLOCK_N keys, warps, stages). 128-row tiles take 8 warps: with 4 they
# spill at head dims 96-256 on both targets (compiled and checked, see the module docstring).
_FWD_TILES = [(128, 128, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 128, 4, 2), (64, 64, 4, 3),
              (64, 32, 4, 3), (32, 32, 4, 2), (16, 32, 4, 2)]
_BWD_TILES = [(64, 128, 8, 2), (32, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 3), (16, 64, 4, 2),
              (16, 32, 4, 2)]
_INTERPRETED = [(16, 16, 4, 1)]  # the interpreter: one small tile, nothing to tune


def _configs(tiles: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in (_INTERPRETED if INTERPRET else tiles)]


def shared_estimate(kind: str, block_m: int, block_n: int, block_d: int, stages: int,
                    elem: int) -> int:
    """Bytes of shared memory the compiled kernel allocates (an upper estimate): the tiles the
    main loop streams, one buffer per pipeline stage, plus the resident operand tiles that
    tl.dot reads from shared memory."""
    if kind == "fwd":  # streams K and V; Q resident
        return stages * 2 * block_n * block_d * elem + block_m * block_d * elem
    # bwd: streams Q and dO (+ lse, delta); K and V resident; dS^T for the dQ GEMM and dQ's
    # float32 tile on its way to the atomic adds
    return (stages * (2 * block_m * block_d * elem + 8 * block_m) + 2 * block_n * block_d * elem
            + block_m * block_n * elem + block_m * block_d * 4)


def _registers_fit(kind: str, block_m: int, block_n: int, block_d: int, warps: int) -> bool:
    """fp32 values per thread of the accumulators and score tiles within a budget (of 255
    registers, the rest holds operands and addresses)."""
    threads = 32 * warps
    if kind == "fwd":  # acc [M, D], scores/probs [M, N]
        held = block_m * block_d + 2 * block_m * block_n
    else:  # dk, dv [N, D]; scores, dP [N, M]; dq [M, D]
        held = 2 * block_n * block_d + 2 * block_m * block_n + block_m * block_d
    return held / threads <= 160


def _prune(kind: str):
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if INTERPRET:
            return configs
        q = named_args["q_ptr"]
        target = target_of(q.device)
        block_d = kwargs["BLOCK_D"]
        elem = q.element_size()
        exact_fp32 = kwargs["DOT_PRECISION"] == "ieee"
        kept = []
        for c in configs:
            m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
            if exact_fp32 and m * n > 64 * 32:
                continue
            if shared_estimate(kind, m, n, block_d, c.num_stages, elem) > target.max_shared:
                continue
            if not _registers_fit(kind, m, n, block_d, c.num_warps):
                continue
            kept.append(c)
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
    return prune


def _autotune(kind: str, tiles: list[tuple[int, int, int, int]], reset: list[str] | None = None):
    # Tuned once per head dim, mask kind and dtype (the autotuner adds tensor dtypes to the
    # key); varlen shapes change every call, so lengths are not part of the key. The forward
    # overwrites its outputs, so benchmark reruns are harmless; the backward accumulates into
    # its dQ buffer and locks, which the autotuner zeroes before every run (`reset`).
    return triton.autotune(configs=_configs(tiles),
                           key=["HEAD_DIM", "CAUSAL", "HAS_RANGE", "HAS_WINDOW", "SOFTCAP",
                                "DOT_PRECISION"],
                           prune_configs_by={"early_config_prune": _prune(kind)},
                           reset_to_zero=reset)


fwd_autotune = _autotune("fwd", _FWD_TILES)
bwd_autotune = _autotune("bwd", _BWD_TILES, reset=["dq_acc_ptr", "lock_ptr"])
