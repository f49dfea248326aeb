"""Checks of the `torch.ops.vidcore.attention*` and `merge_attention_states*` arguments, shared
by the public functions, the fake implementations and the CPU kernels: direct op calls
(compiled graphs, other frontends) must raise on what the kernels cannot honour, never read out
of bounds or return garbage.

`check_op_args` reads no tensor data (it runs in fakes and on any device); `check_offsets`
reads host offsets and runs wherever they are on the CPU (the public function in eager mode, and
the CPU kernel, which a compiled graph cannot skip).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from vidcore.ops._validation import check_same_shape, check_tensor

OP = "attention"
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
MAX_TOKENS = 2**31 - 1  # int32 offsets


def _fail(error: type[Exception], message: str) -> None:
    raise error(f"{OP}: {message}")


def check_op_args(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                  max_seqlen_q: int, max_seqlen_k: int, scale: float, tokens_per_frame: int,
                  q_frame_range: Tensor | None, window_left: int, window_right: int,
                  softcap: float) -> None:
    """Ranks, dtypes, devices, shapes and scalar ranges of the custom op's arguments."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3 or t.dtype != q.dtype or t.device != q.device:
            _fail(ValueError, f"{name} must be [total, H, d] with the dtype and device of q, got "
                              f"{t.dtype}{tuple(t.shape)} on {t.device}")
    if q.dtype not in DTYPES:
        _fail(TypeError, f"q must be float16, bfloat16, float32 or float64, got {q.dtype}")
    if k.shape != v.shape:
        _fail(ValueError, f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    heads_q, dim = q.shape[1:]
    if k.shape[2] != dim or not 1 <= dim <= MAX_HEAD_DIM:
        _fail(ValueError, f"head dim must be the same for q, k, v and in [1, {MAX_HEAD_DIM}], "
                          f"got q {dim} and k {k.shape[2]}")
    if k.shape[1] == 0 or heads_q % k.shape[1]:
        _fail(ValueError, f"the number of query heads ({heads_q}) must be a multiple of the "
                          f"number of key/value heads ({k.shape[1]})")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dtype != torch.int32 or cu.dim() != 1 or cu.shape[0] < 1 or cu.device != q.device:
            _fail(ValueError, f"{name} must be a 1-D int32 tensor of B + 1 >= 1 offsets on "
                              f"{q.device}, got {cu.dtype}{tuple(cu.shape)} on {cu.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        _fail(ValueError, "cu_seqlens_q and cu_seqlens_k must both have B + 1 entries")
    for name, total in (("q", q.shape[0]), ("k", k.shape[0])):
        if total > MAX_TOKENS:
            _fail(ValueError, f"{name} has {total} rows; int32 offsets allow {MAX_TOKENS}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if value < 0:
            _fail(ValueError, f"{name} must be >= 0, got {value}")
    if not math.isfinite(scale):
        _fail(ValueError, f"scale must be finite, got {scale}")
    if not (math.isfinite(softcap) and softcap >= 0):
        _fail(ValueError, f"softcap must be finite and > 0 (0 = off in the op), got {softcap}")
    for name, value in (("window_left", window_left), ("window_right", window_right)):
        if value < -1:
            _fail(ValueError, f"{name} must be >= -1 (-1 = unbounded), got {value}")
    if q_frame_range is not None:
        if tokens_per_frame < 1:
            _fail(ValueError, f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
        if (q_frame_range.dtype != torch.int32 or q_frame_range.device != q.device
                or q_frame_range.shape != (q.shape[0], 2)):
            _fail(ValueError, f"q_frame_range must be int32 [total_q={q.shape[0]}, 2] on "
                              f"{q.device}, got {q_frame_range.dtype}"
                              f"{tuple(q_frame_range.shape)} on {q_frame_range.device}")


def check_offsets(name: str, offsets: list[int], total: int, max_seqlen: int | None) -> int:
    """Host offsets: start at 0, non-decreasing, end at `total`, no sequence longer than
    `max_seqlen` (when given). Returns the longest sequence."""
    if offsets[0] != 0 or offsets[-1] != total or any(
            b < a for a, b in itertools.pairwise(offsets)):
        shown = offsets if len(offsets) <= 8 else [*offsets[:4], "...", *offsets[-3:]]
        _fail(ValueError, f"{name} must start at 0, be non-decreasing and end at {total} (the "
                          f"packed length), got {shown}")
    longest = max((b - a for a, b in itertools.pairwise(offsets)), default=0)
    if max_seqlen is not None and max_seqlen < longest:
        _fail(ValueError, f"max_seqlen for {name} is {max_seqlen} < {longest}, the longest "
                          f"sequence")
    return longest


def check_backward_args(grad_out: Tensor, q: Tensor, out: Tensor, lse: Tensor,
                        grad_lse: Tensor | None) -> None:
    """The backward's own tensors against the forward's q."""
    for name, t in (("grad_out", grad_out), ("out", out)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            _fail(ValueError, f"{name} must be like q {q.dtype}{tuple(q.shape)}, got "
                              f"{t.dtype}{tuple(t.shape)}")
    lse_dtype = torch.promote_types(q.dtype, torch.float32)
    for name, t in (("lse", lse), ("grad_lse", grad_lse)):
        if t is not None and (t.shape != (q.shape[1], q.shape[0]) or t.dtype != lse_dtype
                              or t.device != q.device):
            want = str(lse_dtype).removeprefix("torch.")
            _fail(ValueError, f"{name} must be {want} [Hq, total_q] = "
                              f"{[q.shape[1], q.shape[0]]}, got {t.dtype}{tuple(t.shape)}")


def normalise_mask_args(tokens_per_frame: int, window_left: int, window_right: int,
                        total_q: int, total_k: int) -> tuple[int, int, int]:
    """The same mask with small numbers: frames of total_k or more tokens put every key of a
    sequence in frame 0, and a window bound reaching past every key (left >= total_k) or
    every query (right >= total_q) cannot bind, so it becomes -1. Keeps kernels' index math
    (frame * tokens_per_frame, i' +- window) far from int64 overflow."""
    return (min(tokens_per_frame, max(total_k, 1)),
            -1 if window_left >= total_k else window_left,
            -1 if window_right >= total_q else window_right)


# merge_attention_states: the public function, its fakes and its CPU kernel check the same.
_MERGE = "merge_attention_states"
_LSE_DTYPES = (torch.float32, torch.float64)


def check_merge_args(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> None:
    check_tensor(_MERGE, "out_a", out_a, dims=(3, 4), dtypes=DTYPES)
    check_tensor(_MERGE, "out_b", out_b, dtypes=(out_a.dtype,), device=out_a.device)
    check_same_shape(_MERGE, "out_b", out_b, "out_a", out_a)
    *batch, num_rows, heads, _ = out_a.shape
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        check_tensor(_MERGE, name, lse, dtypes=_LSE_DTYPES, device=out_a.device)
        if tuple(lse.shape) != (*batch, heads, num_rows):
            raise ValueError(f"{_MERGE}: {name} must have shape {(*batch, heads, num_rows)} "
                             f"([..., H, N] for out [..., N, H, d]), got {tuple(lse.shape)}")


def check_merge_lse_values(lse_a: Tensor, lse_b: Tensor) -> None:
    """No +inf in lse (read only on the CPU: elsewhere it would be a host sync)."""
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.device.type == "cpu" and bool(torch.isposinf(lse).any()):
            raise ValueError(f"{_MERGE}: {name} has +inf entries (an overflowed partial state); "
                             f"lse must be finite, or -inf for rows that saw no keys")


def check_merge_backward_args(grad_out, grad_lse, out_a, lse_a, out_b, lse_b) -> None:
    check_merge_args(out_a, lse_a, out_b, lse_b)
    check_tensor(_MERGE, "grad_out", grad_out, dtypes=(out_a.dtype,), device=out_a.device)
    check_same_shape(_MERGE, "grad_out", grad_out, "out_a", out_a)
    check_tensor(_MERGE, "grad_lse", grad_lse, dtypes=_LSE_DTYPES, device=out_a.device)
    check_same_shape(_MERGE, "grad_lse", grad_lse, "lse_a", lse_a)
