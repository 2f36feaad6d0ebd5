"""Shared-memory pools: a compiled, crash-safe allocator in named segments, with dedup, sharing and GC.

:class:`MemoryPoolManager` is the API; :mod:`.segment` names and maps segments; :mod:`.pool` is one attached
pool (its segments and growth); :mod:`.tables` holds the shared
block / agent / holder / dedup tables; :mod:`.compression` the per-block codecs. The allocator and robust lock
(:class:`~sutazai_hwopt._native.pool_alloc.SegmentHeap`) are usable on their own (see docs/memory.md).
"""

from __future__ import annotations

from ..procid import process_start_time
from .manager import MemoryPoolManager

__all__ = ["MemoryPoolManager", "process_start_time"]
