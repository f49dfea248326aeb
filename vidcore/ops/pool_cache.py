"""The plan cache of vidcore.ops.pool: lowered views kept on their device, bounded in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple

from torch import Tensor

__all__ = ["PoolPlan", "PoolPlanCache", "pool_cache"]


class PoolPlan(NamedTuple):
    """Views lowered for one (views, frame counts, grid, device): the op's plan rows and frame
    table, per-token metadata [4, L] int32 (frame_index, row, col, view), cu_seqlens, and the
    token count of every video. Never handed to callers: `PooledTokens` copies what it shows."""

    plan: Tensor
    table: Tensor
    meta: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    lengths: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.plan, self.table, self.meta, self.cu_seqlens))


class PoolPlanCache:
    """Plans of recent `pool` calls, least recently used out first once their tensors pass
    `max_bytes` (default 128 MiB, counted on whatever device they live; a plan larger than the
    budget is rebuilt on every call instead of cached). Repeated calls (every training step)
    skip the host work and the host-to-device copies, so a cached call issues no copy at all and
    can run inside CUDA-graph capture.

    `vidcore.ops.pool_cache.clear()` frees every plan; `pool_cache.max_bytes = 0` turns caching
    off; `pool_cache.info()` reports entries, bytes, hits and misses. Thread-safe."""

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        self._entries: OrderedDict[Hashable, PoolPlan] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.max_bytes = max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"pool_cache.max_bytes must be an int >= 0, got {value!r}")
        with self._lock:
            self._max_bytes = value
            self._evict()

    def get(self, key: Hashable, build: Callable[[], PoolPlan]) -> PoolPlan:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            self.misses += 1
        entry = build()  # outside the lock: a slow lowering does not block other threads
        size = entry.nbytes
        with self._lock:
            if size <= self._max_bytes and key not in self._entries:
                self._entries[key] = entry
                self._bytes += size
                self._evict()
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes,
                    "max_bytes": self._max_bytes, "hits": self.hits, "misses": self.misses}

    def _evict(self) -> None:
        while self._bytes > self._max_bytes:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes


pool_cache = PoolPlanCache()
