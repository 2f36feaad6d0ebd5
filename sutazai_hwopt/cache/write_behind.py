"""Puts that never sleep behind a preempted writer: L2 is written now if its lock is free, a little later if not.

Why: with many more agent processes than cores (the reference fleet runs 131 on 2), the scheduler regularly
preempts a process while it holds L2's lock for its few microseconds of work. Every process that then puts sleeps
until the holder runs again, which with a hundred runnable processes takes tens of milliseconds, and the agent's
request waits with it (``benches/test_cache_system_speed.py``, group "cache system: puts under preemption").

With ``write_behind`` a put tries the lock once, after the usual short spin, without sleeping. When it is still
busy the encoded entry is owed: kept in this process, oldest first, one per key (a newer put of the key replaces
it), and written by this process's next put or read that misses L1 (when the lock is free then), by
:meth:`WriteBehind.flush`, or by ``close``. None of these sleeps on the lock either, except when more than
``MAX_PENDING`` entries or ``MAX_PENDING_BYTES`` are owed: then the put waits, as a plain put does. This process
reads its own owed writes; other processes see an entry once it is written, which in an agent serving requests is
its next request. A process that stops using the cache should call ``flush()`` (``close()`` does). There is no
background retry thread on purpose: tried in development, a thread retrying every few milliseconds made the mean
put of the contention bench worse, not better, because when the scheduler preempts it while it holds the GIL the
agent's own thread waits for it, the same stall one level up.

Ordering: an entry is either owed, being written (``_inflight``) or written; a put of a key that is owed or
being written is owed behind it, so an older value never lands after a newer one. A delete or clear forgets the
owed entries and waits for the ones being written, so nothing it removed comes back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Protocol

__all__ = ["MAX_PENDING", "MAX_PENDING_BYTES", "MISSING", "WriteBehind"]

log = logging.getLogger("sutazai_hwopt.cache")

#: entries a process may owe before a put waits for the lock
MAX_PENDING = 256
#: encoded bytes a process may owe before a put waits for the lock
MAX_PENDING_BYTES = 16 << 20

#: (key hash, kind, priority, head, body parts, the value as given, encoded bytes)
Entry = tuple[int, int, int, bytes, list[Any], Any, int]


class Store(Protocol):
    """Writes one encoded entry to the shared tiers; False when ``nowait`` and L2's lock was busy (nothing written)."""

    def __call__(self, kb: bytes, h: int, kind: int, priority: int, head: bytes, body: list[Any], *,
                 nowait: bool) -> bool: ...


#: what :meth:`WriteBehind.lookup` returns for a key this process owes nothing
MISSING: Any = object()


class WriteBehind:
    """The L2 writes one process still owes (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Held only around dictionary updates, never while a write is attempted: a thread preempted while
        # holding it delays this process's other threads by a few instructions, not by a lock wait.
        self._mu = threading.Condition(threading.Lock())
        self._pending: OrderedDict[bytes, Entry] = OrderedDict()
        self._inflight: dict[bytes, Entry] = {}
        self._flushing = False
        self._bytes = 0
        self._pid = os.getpid()
        self.counts = {"direct": 0, "deferred": 0, "written_later": 0, "waited": 0, "dropped": 0, "failed": 0}

    # ---- the put path ----------------------------------------------------------------------------------------
    def put(self, kb: bytes, h: int, kind: int, prio: int, head: bytes, body: list[Any], value: Any) -> None:
        """Write now if the tier's lock is free, else owe the entry (see the module docstring)."""
        entry: Entry = (h, kind, prio, head, body, value, len(head) + sum(memoryview(b).nbytes for b in body))
        with self._mu:
            self._forked_check()
            direct = not self._pending and kb not in self._inflight
            if direct:
                self._inflight[kb] = entry
            else:
                self._owe(kb, entry, front=False)
                self.counts["deferred"] += 1
        if direct:
            try:
                ok = self._write(kb, entry, False)
            except BaseException:               # refused (the caller gets the error): nothing is owed
                with self._mu:
                    self._inflight.pop(kb, None)
                    self._mu.notify_all()
                raise
            with self._mu:
                self._inflight.pop(kb, None)
                self._mu.notify_all()
                if ok:
                    self.counts["direct"] += 1
                    return
                if kb not in self._pending:     # no newer put of the key arrived meanwhile
                    self._owe(kb, entry, front=False)
                self.counts["deferred"] += 1
        if len(self._pending) > MAX_PENDING or self._bytes > MAX_PENDING_BYTES:
            self.counts["waited"] += 1
            self._flush(wait=True)              # the bound: wait, as a plain put does
        elif not direct:
            self._flush(wait=False)             # older entries first, in case the lock is free now

    def _owe(self, kb: bytes, entry: Entry, *, front: bool) -> None:
        # Under _mu.
        old = self._pending.pop(kb, None)
        if old is not None:
            self._bytes -= old[6]
        self._pending[kb] = entry
        self._bytes += entry[6]
        if front:
            self._pending.move_to_end(kb, last=False)

    def _write(self, kb: bytes, entry: Entry, wait: bool) -> bool:
        h, kind, prio, head, body, _value, _n = entry
        return self._store(kb, h, kind, prio, head, body, nowait=not wait)

    def _flush(self, *, wait: bool) -> None:
        """Write owed entries oldest first until none is left or (without ``wait``) the lock is busy."""
        with self._mu:
            if self._flushing:
                if not wait:
                    return                      # another thread is at it
                while self._flushing:
                    self._mu.wait()
            self._flushing = True
        try:
            while True:
                with self._mu:
                    if not self._pending:
                        return
                    kb, entry = self._pending.popitem(last=False)
                    self._bytes -= entry[6]
                    self._inflight[kb] = entry
                ok = failed = False
                try:
                    ok = self._write(kb, entry, wait)
                except Exception:
                    # A write the tier refuses now (say every block pinned) is dropped, not retried by every
                    # later call of this process: a cache entry lost, logged and counted, never a poisoned queue.
                    failed = True
                    log.exception("write-behind: dropped the owed entry %r", kb)
                finally:
                    with self._mu:
                        self._inflight.pop(kb, None)
                        if ok:
                            self.counts["written_later"] += 1
                        elif failed:
                            self.counts["failed"] += 1
                        elif kb not in self._pending:
                            self._owe(kb, entry, front=True)    # back where it was
                        self._mu.notify_all()
                if not ok and not failed:
                    return
        finally:
            with self._mu:
                self._flushing = False
                self._mu.notify_all()

    def _forked_check(self) -> None:
        # Under _mu. A forked child inherits the parent's owed entries; the parent writes them, the child forgets.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self.counts["dropped"] += len(self._pending)
            self._pending.clear()
            self._inflight.clear()
            self._flushing = False
            self._bytes = 0

    # ---- what the rest of the cache asks ---------------------------------------------------------------------
    def lookup(self, kb: bytes) -> Any:
        """The value this process put under ``kb`` and has not finished writing, or :data:`MISSING`."""
        if not self._pending and not self._inflight:
            return MISSING
        with self._mu:
            self._forked_check()
            e = self._pending.get(kb) or self._inflight.get(kb)
            return MISSING if e is None else e[5]

    def discard(self, kb: bytes | None = None) -> None:
        """Forget the owed write of ``kb`` (every one when None) and wait for one being written: a delete or clear
        runs next, and must not be undone by a write that lands after it."""
        with self._mu:
            if kb is None:
                self._pending.clear()
                self._bytes = 0
                while self._inflight:
                    self._mu.wait()
            else:
                old = self._pending.pop(kb, None)
                if old is not None:
                    self._bytes -= old[6]
                while kb in self._inflight:
                    self._mu.wait()

    def try_flush(self) -> None:
        """Write owed entries while the lock is free (a read path calls this when something is owed)."""
        if self._pending and os.getpid() == self._pid:
            self._flush(wait=False)

    def flush(self) -> None:
        """Write every owed entry now, waiting for the lock as a plain put does."""
        with self._mu:
            self._forked_check()
        self._flush(wait=True)

    def close(self) -> None:
        """Write what is owed (a forked child owes nothing: its parent writes them)."""
        if os.getpid() == self._pid:
            self._flush(wait=True)

    @property
    def pending(self) -> int:
        """Entries owed or being written."""
        return len(self._pending) + len(self._inflight)

    def stats(self) -> dict[str, int]:
        with self._mu:
            return {**self.counts, "pending": len(self._pending), "pending_bytes": self._bytes}
