"""The host service's L1 budget factor, published to every agent process of its namespace.

L1 is private to each process, so the daemon cannot evict from it the way it evicts from the shared tiers. It
publishes a *factor* instead, in one small segment of its namespace (``segment_name(ns, "cache", "l1budget")``,
created by the daemon at ``deploy``; 0600 like every segment, see :mod:`sutazai_hwopt.shm`): the
``cache.shrink`` remedy lowers it and its undo raises it again. A process that fetched the daemon's
configuration (``host.fleet_config()``, ``host.connect()``) *follows* the namespace: a background thread reads
the word every :data:`POLL_S` seconds (one ``memcpy`` of 64 bytes: nothing on the request path) and, when its
epoch moved, scales the L1 of every :class:`~sutazai_hwopt.cache.IntelligentCacheSystem` of that namespace in the
process to ``factor x l1_size``, evicting down to it at once (:meth:`IntelligentCacheSystem.scale_l1`).

Layout (little-endian, at offset 0): magic, a sequence counter (odd while the writer is in the middle of a
write: readers retry), epoch (+1 per write), factor (float64 in ``[MIN_FACTOR, 1]``), the reason's length and
up to 40 bytes of UTF-8 reason. One writer per namespace: the daemon that owns it.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import AlreadyExistsError, CorruptionError, NotFoundError, TrustError
from ..logs import get_logger
from ..shm import SHM_DIR, Segment, attach_segment, close_quietly, create_segment, segment_name

__all__ = ["MIN_FACTOR", "POLL_S", "Budget", "BudgetWord", "Scalable", "follow", "followed", "register",
           "unfollow", "unregister"]

log = get_logger("cache")

#: the segment's id among the namespace's ``cache`` segments (beside ``l2`` and ``l3``)
SEGMENT_ID = "l1budget"
#: the smallest factor the word holds: repeated shrinks stop at 1/16 of the configured L1
MIN_FACTOR = 1.0 / 16
#: how often a following process reads the word
POLL_S = 0.25
_MAGIC = b"hwl1bdg1"
_LAYOUT = struct.Struct("<8sQQdI40s")
_SEQ_OFF = 8
_SIZE = 4096
_REASON_BYTES = 40


class Scalable(Protocol):
    """What follows a namespace's budget: an :class:`~.system.IntelligentCacheSystem` with an L1."""

    namespace: str
    _closed: bool

    def scale_l1(self, factor: float, reason: str | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Budget:
    """One published state: ``epoch`` (+1 per change), ``factor`` of the configured L1, ``reason`` (None at 1)."""

    epoch: int
    factor: float
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "factor": self.factor, "reason": self.reason}


FULL = Budget(0, 1.0, None)


class BudgetWord:
    """The namespace's L1 budget segment: :meth:`create` (the daemon) or :meth:`attach` (agents), then
    :meth:`read` / :meth:`write`."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self._lock = threading.Lock()

    @staticmethod
    def name(namespace: str) -> str:
        return segment_name(namespace, "cache", SEGMENT_ID)

    @classmethod
    def create(cls, namespace: str) -> BudgetWord:
        """Create the word (or take over the one a previous deploy left) and publish the full budget."""
        try:
            word = cls(create_segment(cls.name(namespace), _SIZE))
        except AlreadyExistsError:
            word = cls.attach(namespace)
        word.write(1.0, None)
        return word

    @classmethod
    def attach(cls, namespace: str) -> BudgetWord:
        """Attach the word the daemon created (owner and mode checked by :func:`~sutazai_hwopt.shm.attach_segment`).

        Raises:
            NotFoundError: no daemon published one for ``namespace``. TrustError: not ours.
        """
        seg = attach_segment(cls.name(namespace))
        return cls(seg)

    def _buf(self) -> memoryview:
        if self.seg.buf is None:
            raise NotFoundError("the L1 budget word is closed")
        return self.seg.buf

    def read(self) -> Budget:
        """The published state (a freshly created word reads as the full budget, epoch 0)."""
        buf = self._buf()
        for _ in range(1000):
            magic, seq, epoch, factor, n, raw = _LAYOUT.unpack_from(buf, 0)
            if magic != _MAGIC:
                if magic == b"\0" * 8:
                    return FULL            # created, not yet written
                raise CorruptionError(f"L1 budget segment {self.seg.name} holds no budget word")
            if seq & 1 or struct.unpack_from("<Q", buf, _SEQ_OFF)[0] != seq:
                continue                   # a write in progress: read again
            if not MIN_FACTOR <= factor <= 1.0 or n > _REASON_BYTES:
                raise CorruptionError(f"L1 budget segment {self.seg.name}: factor {factor!r} out of range")
            return Budget(int(epoch), float(factor), raw[:n].decode(errors="replace") or None)
        raise CorruptionError(f"L1 budget segment {self.seg.name}: its writer never finished a write")

    def write(self, factor: float, reason: str | None) -> Budget:
        """Publish ``factor`` (clamped to ``[MIN_FACTOR, 1]``) with its ``reason``; returns the new state."""
        factor = min(1.0, max(MIN_FACTOR, float(factor)))
        raw = (reason or "").encode()[:_REASON_BYTES]
        with self._lock:
            buf = self._buf()
            magic, seq, epoch, _f, _n, _r = _LAYOUT.unpack_from(buf, 0)
            if magic != _MAGIC:
                seq = epoch = 0
            seq |= 1
            struct.pack_into("<Q", buf, _SEQ_OFF, seq)           # odd: readers wait
            _LAYOUT.pack_into(buf, 0, _MAGIC, seq, epoch + 1, factor, len(raw), raw)
            struct.pack_into("<Q", buf, _SEQ_OFF, seq + 1)       # even again: the write is whole
        return Budget(int(epoch + 1), factor, raw.decode(errors="replace") or None)

    def stale(self) -> bool:
        """True when the name now names another file (purged and deployed again) or none."""
        try:
            return os.stat(os.path.join(SHM_DIR, self.seg.name)).st_ino != os.fstat(self.seg.fileno()).st_ino
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        close_quietly(self.seg)


# ---- the follower: one thread per process, only while followed namespaces have caches --------------------------
_lock = threading.Lock()
_wake = threading.Condition(_lock)
_followed: set[str] = set()
_caches: dict[str, weakref.WeakSet[Scalable]] = {}
_known: dict[str, Budget] = {}
_thread: threading.Thread | None = None


def _after_fork_in_child() -> None:
    """A forked child has no polling thread, and the lock may have been held by it at the fork: start afresh
    (the child's caches are the parent's copies and keep following; the next register or follow restarts the
    thread)."""
    global _lock, _wake, _thread
    _lock = threading.Lock()
    _wake = threading.Condition(_lock)
    _thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def follow(namespace: str) -> None:
    """Let the daemon's L1 factor for ``namespace`` scale every L1 of that namespace in this process.

    ``host.fleet_config()`` and ``host.connect()`` call it: a process that took the daemon's configuration takes
    its L1 budget too. Idempotent; the polling thread runs only while some followed namespace has a live cache.
    """
    with _lock:
        _followed.add(namespace)
        _ensure_thread()
        _wake.notify_all()


def unfollow(namespace: str) -> None:
    """Stop following ``namespace``: its caches in this process return to their configured L1 budget."""
    with _lock:
        _followed.discard(namespace)
        _known.pop(namespace, None)
        caches = list(_caches.get(namespace, ()))
    for cache in caches:
        cache.scale_l1(1.0, None)


def followed(namespace: str) -> Budget | None:
    """The budget this process last applied for ``namespace``, or None when it does not follow it."""
    with _lock:
        return _known.get(namespace, FULL) if namespace in _followed else None


def register(cache: Scalable) -> None:
    """Called by every :class:`IntelligentCacheSystem` with an L1: it takes the known budget of its namespace
    now, and later changes from the polling thread."""
    ns = cache.namespace
    with _lock:
        _caches.setdefault(ns, weakref.WeakSet()).add(cache)
        known = _known.get(ns) if ns in _followed else None
        if ns in _followed:
            _ensure_thread()
    if known is not None and known.factor != 1.0:
        cache.scale_l1(known.factor, known.reason)


def unregister(cache: Scalable) -> None:
    """Called when a cache closes: it no longer follows, and the thread may end."""
    with _lock:
        got = _caches.get(cache.namespace)
        if got is not None:
            got.discard(cache)


def _live(ns: str) -> list[Scalable]:
    return [c for c in _caches.get(ns, ()) if not c._closed]


def _ensure_thread() -> None:
    """Start the polling thread when needed (called with ``_lock`` held)."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    if not any(_live(ns) for ns in _followed):
        return
    _thread = threading.Thread(target=_poll_loop, name="hwopt-l1budget", daemon=True)
    _thread.start()


def _poll_loop() -> None:
    global _thread
    words: dict[str, BudgetWord] = {}
    passes = 0
    try:
        while True:
            with _lock:
                todo = {ns: _live(ns) for ns in _followed}
                if not any(todo.values()):
                    _thread = None
                    return
            passes += 1
            for ns, caches in todo.items():
                if caches:
                    _poll_one(ns, caches, words, recheck=passes % 8 == 0)
            for ns in set(words) - set(todo):
                words.pop(ns).close()
            with _lock:
                _wake.wait(POLL_S)
    finally:
        for word in words.values():
            word.close()


def _poll_one(ns: str, caches: list[Scalable], words: dict[str, BudgetWord], *,
              recheck: bool) -> None:
    word = words.get(ns)
    if word is not None and recheck and word.stale():
        words.pop(ns).close()
        word = None
    if word is None:
        try:
            word = words[ns] = BudgetWord.attach(ns)
        except (NotFoundError, TrustError):
            return                          # no daemon published one (yet): keep the configured budget
    try:
        budget = word.read()
    except CorruptionError as exc:
        log.warning("L1 budget of namespace %s unreadable: %s", ns, exc)
        return
    with _lock:
        if ns not in _followed or _known.get(ns) == budget:
            return
        _known[ns] = budget
    log.info("namespace %s: L1 budget factor %.3g (%s)", ns, budget.factor, budget.reason or "full budget")
    for cache in caches:
        try:
            cache.scale_l1(budget.factor, budget.reason)
        except Exception:   # a closed or broken cache must not stop the others
            log.exception("scaling the L1 of a cache of namespace %s failed", ns)
