"""A shared-memory cache tier (L2, and L3's store): one pool segment holding the compiled index and the values.

The segment is a memory pool of :mod:`sutazai_hwopt.memory` (same header, allocator and robust lock; named,
created 0600 and owner-checked on attach by :mod:`sutazai_hwopt.shm`); its meta
area holds the hash table of :mod:`sutazai_hwopt._native.shmcache_index`.

Creation race: a creator formats the segment under a temporary name and publishes it with ``link(2)`` in
``/dev/shm`` (atomic, fails if the name exists), so an attacher never sees a half-formatted segment and two
processes starting at once agree on one segment. The first creator's sizes win.

Reads: a get takes no lock. The index's stripe words are sequence locks; a reader copies a value of up to
``index.copy_max`` bytes (default 64 KiB) and keeps the copy only when no writer touched its stripe meanwhile
(else it retries, then falls back to the lock). A larger value is pinned under the lock and returned zero-copy.

Process slots: each process that reads zero-copy takes one of 256 slots (pid + start time); a slot whose
process is gone is reclaimed (its pins released) by the next process that attaches or runs out of space.
"""

from __future__ import annotations

import os
import secrets
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._native import pool_alloc, shmcache_index
from ..errors import CapacityError, InvalidArgumentError, NotFoundError, PoolExhaustedError, WeightError
from ..logs import get_logger
from ..procid import is_same_process, process_start_time
from ..shm import SHM_DIR, attach_segment, close_quietly, create_segment, segment_name, unlink_segment

if TYPE_CHECKING:
    from .tiers import Demoted, Encoded, Part

__all__ = ["SharedTier", "tier_segment_name"]

log = get_logger("cache")
MIN_TIER = 1 << 20


def tier_segment_name(namespace: str, level: str) -> str:
    """The shm name of a tier's segment (``sutazai_hwopt.<namespace>.cache-<level>``)."""
    return segment_name(namespace, "cache", level)


def _pow2_at_least(n: int) -> int:
    p = 64
    while p < n:
        p <<= 1
    return p


_alive = is_same_process


class _Attachment:
    """The one mapping of a tier's segment in this process, shared by every SharedTier handle on it.

    One attachment per process matters for pins: a process slot's pin bit says "this process pins the block",
    and the per-process pin counts live in the one ShmIndex handle.
    """

    def __init__(self, name: str, shm: Any) -> None:
        self.name = name
        self.shm = shm
        buf = shm.buf
        assert buf is not None
        try:
            self.heap = pool_alloc.SegmentHeap(buf)
            self.index = shmcache_index.ShmIndex(buf, self.heap)
        except BaseException:
            close_quietly(shm)
            raise
        del buf
        # A weak callback: no cycle heap -> attachment, so a closed tier is freed by reference counting (its
        # buffer exports released in a defined order), never by the cyclic GC.
        self_ref = weakref.ref(self)
        self.heap.on_recover = lambda: _recover(self_ref)
        self.refs = 0
        self.pid = os.getpid()
        self.start = process_start_time(self.pid) or 0
        self.needs_slot = False
        self.claim_slot()
        self.prefault()

    def prefault(self) -> None:
        """Map ahead: touch one byte per page of the segment's header and index (hash slots, epoch stripes,
        process table, counters), so this process's page-table entries for them are set up when it opens the
        tier rather than on its first read (measured: a forked child's first read of a 1 MiB value took tens of
        µs more than the next one, mostly these faults). The heap is left alone: a value's pages are faulted
        by whoever reads them."""
        buf = self.shm.buf
        if buf is None:
            return
        end = self.heap.meta_offset + self.heap.meta_size
        bytes(buf[0:end:4096])
        del buf
        self.index.get(b"\0", 0, False, False)    # and warm the (lock-free) read path: a miss

    def _on_recover(self) -> None:
        freed = self.index.repair()
        log.warning("cache tier %s: a process died holding the lock; index rebuilt, %d blocks freed",
                    self.name, freed)

    def claim_slot(self, scan: bool = True) -> None:
        """Take a process slot (pins need one). ``scan``: first release the slots of dead processes (one
        ``/proc`` read per occupied slot, ~20 µs each); without it (the claim a forked child makes on its first
        read, which is on a reader's critical path) the first free slot is taken and the scan runs only when
        none is free."""
        self.needs_slot = False
        with self.heap:
            if not scan:
                for i, pid, _start in self.index.proc_table():
                    if pid == 0:
                        self.index.claim_proc(i, self.pid, self.start)
                        return
            free = None
            for i, pid, start in self.index.proc_table():
                if pid and not _alive(pid, start):
                    self.index.reclaim_proc(i)
                    pid = 0
                if pid == 0 and free is None:
                    free = i
            if free is None:
                log.warning("cache tier %s: all %d process slots busy; reads here will copy", self.name,
                            shmcache_index.MAX_PROCESSES)
                return
            self.index.claim_proc(free, self.pid, self.start)

    def after_fork_in_child(self) -> None:
        # Forget the parent's slot now (no lock, no syscalls); claim our own when the child opens a handle or on
        # its first read, whichever comes first.
        self.index.detach_proc()
        self.pid = os.getpid()
        self.start = process_start_time(self.pid) or 0
        self.needs_slot = True

    def close(self) -> None:
        """Unmap — unless zero-copy views are still alive: then the handles stay open (the views keep the
        mapping and can still unpin) and go away with the last view; the slot is reclaimed after our exit."""
        if self.index.local_pin_count() == 0 and self.index.live_views == 0:
            try:
                if self.index.proc_slot >= 0:
                    self.index.reclaim_proc(self.index.proc_slot)
            except Exception as exc:  # closing must not fail
                log.debug("releasing the process slot failed: %s", exc)
            self.index.close()
            self.heap.close()
        close_quietly(self.shm)   # views still exporting the buffer keep the mapping alive until they die


def _recover(ref: weakref.ref[_Attachment]) -> None:
    att = ref()
    if att is not None:
        att._on_recover()


_ATTACHED: dict[str, _Attachment] = {}
_ATTACH_LOCK = threading.Lock()


class SharedTier:
    """One shared tier of a namespace, attached in this process (created on first use).

    Several handles of one process on the same tier share one mapping (and one process slot).

    Args:
        namespace: processes with the same namespace share the tier.
        level: ``"l2"`` or ``"l3"`` (part of the segment name).
        size: bytes of the whole segment (header + index + heap): the tier's budget, never exceeded.
        max_entries: index capacity (default: one entry per KiB of ``size``).
    """

    def __init__(self, namespace: str, level: str, size: int, *, max_entries: int | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < MIN_TIER:
            raise InvalidArgumentError(f"{level}_size must be an integer >= {MIN_TIER} bytes, got {size!r}")
        self.namespace = namespace
        self.level = level
        self.name = tier_segment_name(namespace, level)
        self._att: _Attachment | None = None
        with _ATTACH_LOCK:
            att = _ATTACHED.get(self.name)
            if att is None or att.pid != os.getpid():
                try:
                    shm = attach_segment(self.name)
                except NotFoundError:
                    shm = self._create(size, max_entries)
                att = _ATTACHED[self.name] = _Attachment(self.name, shm)
            elif att.needs_slot:
                att.claim_slot(scan=False)     # a forked child opening a handle: off its first read's path
                att.prefault()
            att.refs += 1
        self._att = att
        self.heap = att.heap
        self.index = att.index
        self.size = att.shm.size

    def _create(self, size: int, max_entries: int | None) -> Any:
        size = size // 4096 * 4096
        entries = max_entries if max_entries else max(48, size // 1024)
        # The table has a power-of-two slot count at most 3/4 full; the index is capped at `entries` itself, so
        # a tier holds what it was configured for (8,192 entries, not the 12,288 the 16,384 slots could).
        nslots = _pow2_at_least(entries * 4 // 3 + 1)
        meta, _ = shmcache_index.layout_for(nslots)
        hdr = pool_alloc.header_bytes_for(size)
        if hdr + meta + 2 * pool_alloc.SLAB_BYTES > size:
            raise InvalidArgumentError(
                f"{self.level}_size {size} is too small for an index of {nslots} slots ({meta} bytes); "
                f"give more bytes or fewer max_entries")
        tmp = segment_name(self.namespace, "cache", f"{self.level}-tmp{os.getpid()}{secrets.token_hex(3)}")
        shm = create_segment(tmp, size)
        try:
            buf = shm.buf
            assert buf is not None
            pool_alloc.format_segment(buf, meta)
            heap = pool_alloc.SegmentHeap(buf)
            shmcache_index.format_index(buf, heap.meta_offset, heap.meta_size, nslots, entries)
            heap.close()
            del buf
            try:
                os.link(os.path.join(SHM_DIR, tmp), os.path.join(SHM_DIR, self.name))
            except FileExistsError:
                close_quietly(shm)
                return attach_segment(self.name)
            log.info("created cache tier %s: %d bytes, %d slots", self.name, size, nslots)
            return shm
        finally:
            unlink_segment(tmp)

    # ---- crash recovery -------------------------------------------------------------------------------------
    def reclaim_dead(self) -> int:
        """Release the pins of processes that died holding views; returns how many pins were released."""
        n = 0
        with self.heap:
            for i, pid, start in self.index.proc_table():
                if pid and not _alive(pid, start):
                    n += self.index.reclaim_proc(i)
        return n

    # ---- operations ---------------------------------------------------------------------------------------
    def put(self, *, key: bytes, key_hash: int, kind: int, priority: int, head: bytes, body: Sequence[Part],
            demote: bool = False, visited: bool = False) -> list[Demoted]:
        """Store an encoded value (:class:`~.tiers.Tier`); returns the victims when ``demote`` is set, so the
        caller can hand them to the level below. ``visited`` marks a prefetched entry as already used once.

        Raises:
            WeightError: the value is larger than this tier can ever hold (nothing changed).
            PoolExhaustedError: every remaining block is pinned by live readers.
        """
        self.check_weight(key, head, body)
        parts = body if isinstance(body, list) else list(body)
        stored = self._put(key, key_hash, kind, priority, head, parts, demote, visited, False)
        assert stored is not None
        return stored

    def check_weight(self, key: bytes, head: bytes, body: Sequence[Part]) -> None:
        """Raise WeightError when this entry could never fit the tier, however much were evicted."""
        need = 128 + _r64(len(key)) + _r64(len(head)) + sum(_r64(_nbytes(b)) for b in body)
        if need > self.heap.heap_size:
            raise WeightError(
                f"value of {need} bytes (with headers) is larger than the {self.level} budget "
                f"({self.size} bytes, {self.heap.heap_size} bytes of heap)")

    def try_put(self, *, key: bytes, key_hash: int, kind: int, priority: int, head: bytes, body: Sequence[Part],
                demote: bool = False) -> list[Demoted] | None:
        """:meth:`put`, except that when another process still holds the tier's lock after the short spin
        (typically one the scheduler preempted) it stores nothing and returns None instead of sleeping until
        the lock is released (:mod:`.write_behind`)."""
        self.check_weight(key, head, body)
        return self._put(key, key_hash, kind, priority, head, body if isinstance(body, list) else list(body),
                         demote, False, True)

    def _put(self, key: bytes, key_hash: int, kind: int, priority: int, head: bytes, parts: list[Part],
             demote: bool, visited: bool, nowait: bool) -> list[Demoted] | None:
        try:
            return self.index.put(key, key_hash, kind, priority, head, parts, 2, demote, 0, 0, 0, visited, nowait)
        except PoolExhaustedError:
            if self.reclaim_dead() == 0:
                raise
            return self.index.put(key, key_hash, kind, priority, head, parts, 2, demote, 0, 0, 0, visited, nowait)

    def get(self, *, key: bytes, key_hash: int) -> Encoded | None:
        """``(kind, priority, head, body)``, or None. ``body`` is a ``bytes`` copy read without the lock when the
        value is at most ``index.copy_max`` bytes, else a pinned zero-copy view."""
        att = self._att
        if att is not None and att.needs_slot:
            att.claim_slot(scan=False)
        return self.index.get(key, key_hash)

    def contains(self, *, key: bytes, key_hash: int) -> bool:
        """True when the tier holds a valid entry for ``key``."""
        return bool(self.index.contains(key, key_hash))

    def delete(self, *, key: bytes, key_hash: int) -> bool:
        """Remove ``key`` for every process; True when it was there."""
        return bool(self.index.delete(key, key_hash))

    def clear(self) -> None:
        """Empty the tier for every process of the namespace."""
        self.index.clear()

    def check(self) -> bool:
        """The heap's and the index's invariant checks."""
        return bool(self.heap.check() and self.index.check())

    def close(self) -> None:
        """Drop this handle; the last handle of the process unmaps and frees its process slot (pins of live
        views are kept until the views die)."""
        att, self._att = self._att, None
        if att is None:
            return
        with _ATTACH_LOCK:
            att.refs -= 1
            if att.refs > 0:
                return
            if _ATTACHED.get(self.name) is att:
                del _ATTACHED[self.name]
        att.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def destroy(self) -> bool:
        """Close and unlink the segment (every process loses the tier's contents)."""
        self.close()
        return unlink_segment(self.name)


def _r64(n: int) -> int:
    return (n + 63) & ~63


def _nbytes(part: Part) -> int:
    # a BlockView exports a buffer, but its stub cannot declare __buffer__ before Python 3.12
    return memoryview(part).nbytes  # type: ignore[arg-type]


def _after_fork() -> None:
    for att in list(_ATTACHED.values()):
        try:
            att.after_fork_in_child()
        except (OSError, CapacityError) as exc:
            log.warning("cache tier %s unusable after fork: %s", att.name, exc)


os.register_at_fork(after_in_child=_after_fork)
