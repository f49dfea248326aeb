"""Autotune configs of the attention kernels and the rules that prune them for the GPU at hand.

Each kernel has its own tiles (the backward keeps a key block and two accumulators resident
and streams query blocks, the forward keeps a query block and one accumulator). A rule drops,
before the autotuner compiles anything, every tile that cannot run well on the target:
- shared memory: an upper estimate of what the compiled kernel allocates (pipelined buffers
  per stage and resident operand tiles) must fit the target's limit per block;
- registers: the values a thread holds in accumulators, score tiles and register operands must
  fit a budget, or ptxas spills (forward tiles of 128 rows take 8 warps: with 4 they spill);
- fp32 without TF32 has no tensor-core path: only small tiles on 8 warps.
The rules were calibrated on compiled kernels; tests/kernels/test_aot_compile.py compiles every
surviving config for sm_80 and sm_90a and holds them to the binaries (shared memory within the
limit and never above the estimate, no spills).
"""
from __future__ import annotations

import triton
from vidcore.kernels._attention_common import INTERPRET
from vidcore.kernels._target import Target, target_of

__all__ = ["BWD_TILES", "FWD_TILES", "bwd_autotune", "fwd_autotune", "keep_tile", "kept_tiles",
           "shared_estimate"]

# float32 without TF32: tl.dot runs on FMA units, holding whole operand rows per thread; at
# head dims 128-256 only this tile stays clear of spills (compiled on sm_80 and sm_90a).
_EXACT_FP32 = (16, 32, 8, 2)
# The last resort when no other tile fits (the backward of 4-byte inputs at head dim 256).
_SMALLEST = (16, 16, 8, 1)
# (BLOCK_M query rows, BLOCK_N keys, warps, stages). 128-row tiles take 8 warps: with 4 they
# spill at head dims 96-256 on both targets (compiled and checked, see the module docstring).
FWD_TILES = [(128, 128, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 128, 4, 2), (64, 64, 4, 3),
             (64, 32, 4, 3), (32, 32, 4, 2), (16, 32, 4, 2), _EXACT_FP32, _SMALLEST]
BWD_TILES = [(64, 64, 8, 2), (32, 64, 8, 2), (32, 32, 8, 2), (16, 64, 8, 2), (16, 32, 4, 2),
             _EXACT_FP32, _SMALLEST]
_INTERPRETED = [(16, 16, 4, 1)]  # the interpreter: one small tile, nothing to tune


def _configs(tiles: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    # maxnreg: without it ptxas caps 8-warp kernels at 128 registers to fit two blocks per SM
    # and spills to get there; spills cost these kernels more than the second block gains.
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s,
                          maxnreg=None if INTERPRET else 255)
            for m, n, w, s in (_INTERPRETED if INTERPRET else tiles)]


def shared_estimate(kind: str, block_m: int, block_n: int, block_d: int, stages: int,
                    elem: int) -> int:
    """Bytes of shared memory the compiled kernel allocates (an upper estimate): the tiles the
    main loop streams, one buffer per pipeline stage, plus the resident operand tiles that
    tl.dot reads from shared memory."""
    if kind == "fwd":  # streams K and V; Q resident
        return stages * 2 * block_n * block_d * elem + block_m * block_d * elem
    # bwd: streams Q and dO (+ lse, delta); K and V resident, each in the two layouts its two
    # GEMMs read (fitted to the compiled kernels: up to 4 key-block tiles), and dQ's float32
    # tile on its way to the atomic adds
    return (stages * (2 * block_m * block_d * elem + 8 * block_m) + 4 * block_n * block_d * elem
            + block_m * block_d * 4)


def _registers_fit(kind: str, block_m: int, block_n: int, block_d: int, warps: int, arch: int,
                   elem: int) -> bool:
    """The 32-bit values a thread holds (accumulators, score tiles, operands kept in registers)
    stay within a budget that leaves room for addresses and masks. Calibrated on compiled
    binaries: forward tiles spill at 160 values per thread on sm_80 and with 4 warps on sm_90a
    but not at 128, and sm_90a's 8-warp (wgmma) tiles hold 160; backward tiles spill at 144
    and above on one target or the other, never at 136 or below."""
    if kind == "fwd":  # acc [M, D], scores and probabilities [M, N], the Q operand [M, D]
        held = block_m * block_d + 2 * block_m * block_n + block_m * block_d * elem // 4
        budget = 160 if arch >= 90 and warps >= 8 else 128
    else:  # dk, dv [N, D]; S^T and dP^T [N, M]; dq [M, D]; K, V, Q, dO operands
        held = (2 * block_n * block_d + 2 * block_m * block_n + block_m * block_d
                + (block_n + block_m) * block_d * elem // 2)
        budget = 136
    return held <= budget * 32 * warps


def keep_tile(kind: str, tile: tuple[int, int, int, int], block_d: int, elem: int,
              precision: str, target: Target) -> bool:
    """Whether the (BLOCK_M, BLOCK_N, warps, stages) tile of a kernel ("fwd" or "bwd") can run
    well on `target` for BLOCK_D-wide heads of `elem`-byte inputs at dot precision `precision`."""
    m, n, warps, stages = tile
    if tile == _SMALLEST or (precision == "ieee" and tile != _EXACT_FP32):
        return False
    return (shared_estimate(kind, m, n, block_d, stages, elem) <= target.max_shared
            and _registers_fit(kind, m, n, block_d, warps, target.arch, elem))


def kept_tiles(kind: str, tiles: list[tuple[int, int, int, int]], block_d: int, elem: int,
               precision: str, target: Target) -> list[tuple[int, int, int, int]]:
    """The tiles the autotuner tries: those keep_tile accepts, else the smallest tile (the
    backward of 4-byte inputs at head dim 256 fits nothing larger)."""
    return [t for t in tiles if keep_tile(kind, t, block_d, elem, precision, target)] or [
        _SMALLEST]


def _prune(kind: str):
    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        if INTERPRET:
            return configs
        q = named_args["q_ptr"]
        by_tile = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages): c
                   for c in configs}
        kept = kept_tiles(kind, list(by_tile), kwargs["BLOCK_D"], q.element_size(),
                          kwargs["DOT_PRECISION"], target_of(q.device))
        return [by_tile[t] for t in kept]
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


fwd_autotune = _autotune("fwd", FWD_TILES)
bwd_autotune = _autotune("bwd", BWD_TILES, reset=["dq_acc_ptr", "lock_ptr"])
