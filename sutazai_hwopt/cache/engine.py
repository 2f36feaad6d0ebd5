"""`Cache`: a bounded mapping with a modern eviction policy, a byte bound, TTLs, priorities and loaders.

Design: the class *is* a subclass of the compiled :class:`~sutazai_hwopt._native.cache_core.CacheCore`
rather than a Python object holding one. This departs from the project convention (API classes hold their
core) on purpose: a Python-level ``__getitem__`` that delegates to a core costs ~60 ns by itself, more than
the whole compiled hit path, so the mapping methods (``c[k]``, ``get``, ``put``, ``del``, ``in``, ``len``)
are the core's own C slots and this module only adds validation at construction, stats, loaders and
logging.
"""

from __future__ import annotations

import collections.abc
import sys
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from .._native.cache_core import CacheCore
from ..errors import InvalidArgumentError
from ..logs import get_logger
from .flights import LoadingMixin
from .policies import DEFAULT_POLICY, POLICIES

__all__ = ["Cache", "CacheStats"]

log = get_logger("cache")

#: Largest ``maxsize`` (slot indices are 32-bit and ghosts need room).
MAX_ENTRIES = 1 << 29


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters (see :meth:`Cache.stats`)."""

    hits: int
    misses: int
    evictions: int
    evicted_weight: int
    expirations: int
    rejections: int
    currsize: int
    current_weight: int
    loads: int
    load_failures: int
    load_time: float

    @property
    def hit_ratio(self) -> float:
        """Hits over accesses (0.0 before the first access)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgumentError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _default_weigher(key: Any, value: Any) -> int:
    """Shallow size of the value in bytes (``sys.getsizeof``); pass your own weigher for deep sizes."""
    return sys.getsizeof(value)


class Cache(CacheCore, LoadingMixin):
    """A thread-safe bounded mapping (``maxsize`` entries, optionally ``max_bytes``) with pluggable eviction.

    Args:
        maxsize: most entries kept (1 .. 2**29).
        policy: one of :data:`~sutazai_hwopt.cache.policies.POLICIES`; ``"adaptive"`` (the default) runs
            whichever of LRU, W-TinyLFU, LIRS and S3-FIFO does best on sampled shadow caches.
        max_bytes: bound on the sum of entry weights; ``None`` for no byte bound.
        weigher: ``weigher(key, value) -> int`` bytes of an entry; defaults to ``sys.getsizeof(value)``
            when ``max_bytes`` is set, else every entry weighs 1.
        ttl: default time-to-live in seconds for entries put without one; ``None`` never expires.
        on_evict: ``on_evict(key, value, cause)`` called after an entry is evicted (``"evicted"``) or
            expired (``"expired"``), outside the structure's critical section; exceptions are logged.
        clock: ``clock() -> seconds`` for TTLs (e.g. :class:`sutazai_hwopt.testing.FakeClock`); default
            ``CLOCK_MONOTONIC``.

    Raises:
        InvalidArgumentError: a size, policy, ttl or callable argument is invalid.

    Example:
        >>> c = Cache(2, policy="lru")
        >>> c["a"] = 1; c["b"] = 2; _ = c["a"]; c["c"] = 3
        >>> sorted(c)
        ['a', 'c']
        >>> c.stats().evictions
        1
    """

    def __init__(self, maxsize: int, policy: str = DEFAULT_POLICY, *, max_bytes: int | None = None,
                 weigher: Callable[[Any, Any], int] | None = None, ttl: float | None = None,
                 on_evict: Callable[[Any, Any, str], Any] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        _check_int("maxsize", maxsize, 1, MAX_ENTRIES)
        if not isinstance(policy, str) or policy not in POLICIES:
            raise InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        if max_bytes is not None:
            _check_int("max_bytes", max_bytes, 1, 1 << 62)
        for name, fn in (("weigher", weigher), ("on_evict", on_evict), ("clock", clock)):
            if fn is not None and not callable(fn):
                raise InvalidArgumentError(f"{name} must be callable or None, got {fn!r}")
        if weigher is None and max_bytes is not None:
            weigher = _default_weigher
        self._user_on_evict = on_evict
        super().__init__(maxsize, policy, -1 if max_bytes is None else max_bytes, weigher, ttl,
                         self._fire_evict if on_evict is not None else None, clock)
        self._policy = policy
        self._max_bytes = max_bytes
        self._init_loading()

    def _fire_evict(self, key: Any, value: Any, cause: str) -> None:
        try:
            assert self._user_on_evict is not None
            self._user_on_evict(key, value, cause)
        except Exception:
            log.exception("on_evict callback raised for key %r (%s); ignored", key, cause)

    @property
    def policy(self) -> str:
        """The eviction policy's name."""
        return self._policy

    @property
    def max_bytes(self) -> int | None:
        """The byte bound, or ``None``."""
        return self._max_bytes

    @property
    def currsize(self) -> int:
        """Entries stored (expired ones still count until purged by a put or :meth:`expire`)."""
        return len(self)

    @property
    def current_weight(self) -> int:
        """Sum of the weights of the stored entries."""
        return int(self.counters()["weight"])

    def stats(self) -> CacheStats:
        """Counters: hits, misses, evictions, evicted and current weight, expirations, loads, load time."""
        c = self.counters()
        with self._load_lock:
            loads, failures, load_time = self._loads, self._load_failures, self._load_time
        return CacheStats(hits=c["hits"], misses=c["misses"], evictions=c["evictions"],
                          evicted_weight=c["evicted_weight"], expirations=c["expirations"],
                          rejections=c["rejections"], currsize=c["currsize"], current_weight=c["weight"],
                          loads=loads, load_failures=failures, load_time=load_time)

    def keys(self) -> list[Hashable]:
        """Snapshot of the stored keys (arbitrary order)."""
        return self.keys_list()

    def values(self) -> list[Any]:
        """Snapshot of the stored values (same order as :meth:`keys` at the same moment)."""
        return [v for _, v in self.items()]

    def items(self) -> list[tuple[Hashable, Any]]:
        """Snapshot of ``(key, value)`` pairs; reading does not count as an access."""
        missing = object()
        out = []
        for k in self.keys_list():
            v = self.peek(k, missing)
            if v is not missing:
                out.append((k, v))
        return out

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.keys_list())

    def __repr__(self) -> str:
        return (f"Cache(maxsize={self.maxsize}, policy={self._policy!r}, max_bytes={self._max_bytes}, "
                f"currsize={len(self)})")

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def __reduce__(self) -> Any:
        raise TypeError("Cache objects cannot be pickled; build a new cache in the other process")


collections.abc.MutableMapping.register(Cache)
