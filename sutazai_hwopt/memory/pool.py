"""One pool as seen from one process: its primary segment (header, tables, heap), the extension segments it grew
into, and the operations that span them.

A pool may grow: when no segment has room and the pool was created with ``max_size`` above ``size``, a new
extension segment (``<pool segment name>.<n>``, same heap size, mode 0600) is created under the pool lock and
counted in the tables' header; other processes map it the first time they meet one of its offsets. Offsets in
the block table carry the segment number in their top bits (``segment << 40 | offset``), so segment 0, the
primary, uses plain offsets. Every extension has its own allocator and lock; those locks are only taken while
holding the primary's, so the primary lock alone orders everything (and a holder that dies inside an
extension's lock is recovered through the primary's recovery, which walks every segment).
"""

from __future__ import annotations

import functools
import mmap
import weakref
from typing import Any

import numpy as np

from .._native import pool_alloc
from .._native.pool_table import PUNCH_MIN, SEG_SHIFT
from .._validate import round_up as _round_up
from ..errors import AlreadyExistsError, CorruptionError, PoolExhaustedError
from ..logs import get_logger
from ..shm import attach_segment, close_quietly, create_segment, unlink_segment
from .tables import Tables

__all__ = ["PUNCH_MIN", "SEG_SHIFT", "AttachedPool"]

log = get_logger("memory")

# PUNCH_MIN: freed blocks at least this big give their pages back to the kernel (MADV_REMOVE).
# SEG_SHIFT: block offsets are ``segment << SEG_SHIFT | offset``. Both are defined by the table core, whose
# free_block() frees small primary-segment ranges itself and hands the others to release().
_LOCAL = (1 << SEG_SHIFT) - 1


class _Segment:
    __slots__ = ("buf", "heap", "shm")

    def __init__(self, shm: Any, heap: pool_alloc.SegmentHeap) -> None:
        self.shm = shm
        buf = shm.buf
        assert buf is not None
        self.buf: memoryview = buf
        self.heap = heap


class AttachedPool:
    """Segments, allocators and tables of one pool in this process (call everything under ``heap``'s lock)."""

    def __init__(self, pool_id: str, name: str, shm: Any, heap: pool_alloc.SegmentHeap, tables: Tables) -> None:
        self.pool_id = pool_id
        self.name = name
        self.heap = heap                  # the primary's allocator; its lock is the pool lock
        self.t = tables
        self.core = tables.core           # the compiled hot paths (allocate / free in one call each)
        self.core.bind_heap(heap, pool_alloc.heap_api())
        self.segs = [_Segment(shm, heap)]
        self.buf = self.segs[0].buf
        self.agents: dict[str, int] = {}
        self.closed = False
        # A weak reference: no cycle, so dropping the manager closes pools in order (tables and heap views
        # first, then the segments) instead of letting SharedMemory.__del__ meet live exports.
        heap.on_recover = functools.partial(_recover_hook, weakref.ref(self))

    # ---- segments -------------------------------------------------------------------------------------------
    def _ext_name(self, n: int) -> str:
        return f"{self.name}.{n}"

    def sync(self) -> None:
        """Map extension segments other processes added since we last looked."""
        while len(self.segs) - 1 < self.t.n_ext:
            n = len(self.segs)
            shm = attach_segment(self._ext_name(n))
            buf = shm.buf
            assert buf is not None
            try:
                heap = pool_alloc.SegmentHeap(buf)
            except BaseException:
                close_quietly(shm)
                raise
            self.segs.append(_Segment(shm, heap))

    def _seg(self, off: int) -> tuple[_Segment, int]:
        n = off >> SEG_SHIFT
        if n >= len(self.segs):
            self.sync()
            if n >= len(self.segs):
                raise CorruptionError(f"offset {off:#x} names segment {n}, the pool has {len(self.segs)}")
        return self.segs[n], off & _LOCAL

    def view(self, off: int, size: int) -> memoryview:
        """The bytes of a block (a slice of the segment that holds it)."""
        seg, local = self._seg(off)
        return seg.buf[local:local + size]

    def _grow(self, size: int) -> bool:
        limit, ext_size = self.t.growth
        if (ext_size == 0 or size > ext_size - 4096
                or self.heap.heap_size + (self.t.n_ext + 1) * ext_size > limit):
            return False
        n = self.t.n_ext + 1
        name = self._ext_name(n)
        total = _round_up(pool_alloc.header_bytes_for(ext_size) + ext_size, 4096)
        try:
            shm = create_segment(name, total)
        except AlreadyExistsError:       # left by a process that died while growing the pool: start over
            unlink_segment(name)
            shm = create_segment(name, total)
        buf = shm.buf
        assert buf is not None
        try:
            pool_alloc.format_segment(buf, 0)
            heap = pool_alloc.SegmentHeap(buf)
        except BaseException:
            close_quietly(shm)
            unlink_segment(name)
            raise
        self.segs.append(_Segment(shm, heap))
        self.t.set_n_ext(n)               # the commit: from now on every process may map it
        log.info("pool %s grew to %d segments (+%d bytes of heap)", self.pool_id, n + 1, heap.heap_size)
        return True

    # ---- allocation -----------------------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """Allocate in the first segment with room, growing the pool if allowed; returns an encoded offset."""
        try:
            return self.heap.alloc(size)          # the primary first: segment 0, plain offset
        except PoolExhaustedError as exc:
            error: PoolExhaustedError | None = exc
        self.sync()
        for n, seg in enumerate(list(self.segs)[1:], start=1):
            try:
                return (n << SEG_SHIFT) | seg.heap.alloc(size)
            except PoolExhaustedError as exc:
                error = error or exc
        if self._grow(size):
            return ((len(self.segs) - 1) << SEG_SHIFT) | self.segs[-1].heap.alloc(size)
        limit, ext_size = self.t.growth
        raise PoolExhaustedError(f"pool {self.pool_id!r} has no room for {size} bytes in its {len(self.segs)} "
                                 f"segment(s) and cannot grow (max_size {limit or self.heap.heap_size}, "
                                 f"{ext_size} bytes per extension): {error}")

    def free(self, off: int) -> None:
        seg, local = self._seg(off)
        seg.heap.free(local)

    def release(self, off: int, size: int) -> None:
        """Free a block; for big blocks first return its whole pages to the kernel.

        Freed heap memory of a tmpfs segment stays resident (and counted in every mapper's PSS) until punched
        out: ``madvise(MADV_REMOVE)`` frees the pages for every process (they read back as zeros if reused).
        Called under the pool lock, so nobody can be handed the range while we punch it.
        """
        seg, local = self._seg(off)
        if size >= PUNCH_MIN:
            start = _round_up(local, mmap.PAGESIZE)
            end = (local + size) // mmap.PAGESIZE * mmap.PAGESIZE
            mm = getattr(seg.shm, "_mmap", None)
            if end > start and mm is not None:
                try:
                    mm.madvise(mmap.MADV_REMOVE, start, end - start)
                except OSError as exc:   # not fatal: the memory is merely kept resident
                    log.debug("madvise(MADV_REMOVE) failed on pool %s: %s", self.pool_id, exc)
        seg.heap.free(local)

    def allocations(self) -> np.ndarray:
        """Encoded offsets of every live allocation in every segment."""
        self.sync()
        parts = [seg.heap.allocations() | np.int64(n << SEG_SHIFT) for n, seg in enumerate(self.segs)]
        return np.concatenate(parts)

    def check_heaps(self) -> None:
        self.sync()
        for seg in self.segs:
            seg.heap.check()

    def heap_stats(self) -> dict[str, Any]:
        """The allocators' figures summed over segments (largest free block: the largest of any)."""
        self.sync()
        stats = [seg.heap.stats() for seg in self.segs]
        free = sum(s["free_bytes"] for s in stats)
        largest = max(s["largest_free"] for s in stats)
        return {"heap_size": sum(s["heap_size"] for s in stats), "free_bytes": free, "largest_free": largest,
                "fragmentation": (1.0 - (largest + 64) / free) if free > largest + 64 else 0.0,
                "recoveries": stats[0]["recoveries"], "segments": len(stats)}

    def segment_names(self) -> list[str]:
        return [self.name] + [self._ext_name(n) for n in range(1, self.t.n_ext + 1)]

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.t.close()
        del self.buf
        for seg in self.segs:
            seg.heap.close()
            shm = seg.shm
            del seg.buf
            close_quietly(shm)
        self.segs = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass


def _recover_hook(ref: weakref.ReferenceType[AttachedPool]) -> None:
    """Run by the primary heap, under the lock, when the previous lock holder died: reconcile the tables."""
    pool = ref()
    if pool is None:
        return
    report = pool.t.reconcile(pool)
    pool.agents.clear()
    log.warning("pool %s: recovered after a process died holding its lock: %s", pool.pool_id, report)
