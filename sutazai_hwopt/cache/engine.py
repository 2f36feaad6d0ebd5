"""`Cache`: a bounded mapping with a modern eviction policy, a byte bound, TTLs, priorities and loaders.

Design: the class *is* a subclass of the compiled :class:`~sutazai_hwopt._native.cache_core.CacheCore`
rather than a Python object holding one. This departs from the project convention (API classes hold their
core) on purpose: a Python-level ``__getitem__`` that delegates to a core costs ~60 ns by itself, more than
the whole compiled hit path, so the mapping methods (``c[k]``, ``get``, ``put``, ``del``, ``in``, ``len``)
are the core's own C slots and this module only adds validation at construction, stats, loaders and
logging.
"""

from __future__ import annotations

import itertools
import pickle
import sys
from collections.abc import Callable, Hashable, ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from dataclasses import dataclass
from typing import Any

from .._native.cache_core import CacheCore
from ..errors import InvalidArgumentError, SerializationError
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


class _SizeOf:
    """cachetools' ``getsizeof(value)`` as a weigher ``(key, value)`` (a class, so it pickles)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, key: Any, value: Any) -> Any:
        return self.fn(value)


_ABSENT = object()


class _ValuesView(ValuesView[Any]):
    """Values without counting accesses (``peek``); entries gone since the key snapshot are skipped."""

    _mapping: Cache

    def __iter__(self) -> Iterator[Any]:
        peek = self._mapping.peek
        for k in self._mapping.keys_list():
            v = peek(k, _ABSENT)
            if v is not _ABSENT:
                yield v

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class _ItemsView(ItemsView[Any, Any]):
    """``(key, value)`` pairs without counting accesses (``peek``)."""

    _mapping: Cache

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        peek = self._mapping.peek
        for k in self._mapping.keys_list():
            v = peek(k, _ABSENT)
            if v is not _ABSENT:
                yield (k, v)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        k, value = item
        v = self._mapping.peek(k, _ABSENT)
        return v is not _ABSENT and (v is value or v == value)


def _restore(cls: type[Cache], kwargs: dict[str, Any], blob: bytes, extra: dict[str, Any]) -> Cache:
    """Unpickle: rebuild the cache from its constructor arguments, then put the entries back in."""
    obj = cls.__new__(cls)
    Cache.__init__(obj, **kwargs)
    for k, v, w, prio, left in pickle.loads(blob):
        obj.put(k, v, weight=w, ttl=left, priority=prio)
    obj.__dict__.update(extra)
    return obj


class Cache(CacheCore, LoadingMixin, MutableMapping[Any, Any]):
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
        getsizeof: cachetools' spelling of a weighted cache: ``getsizeof(value) -> size``; ``maxsize`` then
            bounds the sum of sizes (not the entry count) and :attr:`currsize` is that sum. Excludes
            ``max_bytes`` and ``weigher``.

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
                 clock: Callable[[], float] | None = None,
                 getsizeof: Callable[[Any], Any] | None = None) -> None:
        if callable(policy) and getsizeof is None:      # cachetools' positional Cache(maxsize, getsizeof)
            getsizeof = policy
            policy = DEFAULT_POLICY
        self._init_args: dict[str, Any] = {
            "maxsize": maxsize, "policy": policy, "max_bytes": max_bytes, "weigher": weigher, "ttl": ttl,
            "on_evict": on_evict, "clock": clock, "getsizeof": getsizeof}
        entries = maxsize
        if getsizeof is not None:
            if not callable(getsizeof):
                raise InvalidArgumentError(f"getsizeof must be callable or None, got {getsizeof!r}")
            if max_bytes is not None or weigher is not None:
                raise InvalidArgumentError("getsizeof (cachetools' form: maxsize bounds the sum of sizes) "
                                           "excludes max_bytes and weigher")
            _check_int("maxsize", maxsize, 1, 1 << 62)
            entries, max_bytes, weigher = min(maxsize, MAX_ENTRIES), maxsize, _SizeOf(getsizeof)
        _check_int("maxsize", entries, 1, MAX_ENTRIES)
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
        super().__init__(entries, policy, -1 if max_bytes is None else max_bytes, weigher, ttl,
                         self._fire_evict if on_evict is not None else None, clock)
        self._policy = policy
        self._max_bytes = max_bytes
        self._getsizeof = getsizeof
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
    def maxsize(self) -> int:
        """The bound given to the constructor: entries, or (with ``getsizeof``) the sum of sizes."""
        return int(self._init_args["maxsize"])

    @property
    def ttl(self) -> float | None:
        """The default time-to-live in seconds, or ``None`` (cachetools' ``TTLCache.ttl``)."""
        ttl = self._init_args["ttl"]
        return None if ttl is None else float(ttl)

    @property
    def currsize(self) -> int:
        """As cachetools: the sum of ``getsizeof(value)`` for a cache built with ``getsizeof``, else the
        entries stored (expired ones still count until purged by a put or :meth:`expire`)."""
        return self.current_weight if self._getsizeof is not None else len(self)

    def getsizeof(self, value: Any) -> Any:
        """cachetools' ``Cache.getsizeof``: the size ``value`` would count for (1 without ``getsizeof``)."""
        return 1 if self._getsizeof is None else self._getsizeof(value)

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

    def keys(self) -> KeysView[Any]:
        """A view of the stored keys (arbitrary order; iterating takes a snapshot; not an access)."""
        return KeysView(self)

    def values(self) -> ValuesView[Any]:
        """A view of the stored values (read with :meth:`peek`: not an access)."""
        return _ValuesView(self)

    def items(self) -> ItemsView[Any, Any]:
        """A view of the ``(key, value)`` pairs (read with :meth:`peek`: not an access)."""
        return _ItemsView(self)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.keys_list())

    #: entries :meth:`__repr__` shows before eliding the rest
    REPR_ENTRIES = 8

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in itertools.islice(self.items(), self.REPR_ENTRIES))
        more = len(self) - self.REPR_ENTRIES
        if more > 0:
            shown += f", ...{more} more"
        return (f"{type(self).__name__}(maxsize={self.maxsize}, policy={self._policy!r}, "
                f"max_bytes={self._max_bytes}, currsize={self.currsize}, {{{shown}}})")

    # Equality is Mapping's (same items); like a dict, a cache is then unhashable.
    __hash__ = None  # type: ignore[assignment]

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle the constructor arguments and the entries (weight, priority, time left); the policy's
        metadata restarts cold. A value (or key) that cannot be pickled raises :class:`SerializationError`
        naming its key."""
        entries = []
        for k in self.keys_list():
            e = self._entry(k)
            if e is not None:
                entries.append((k, e[0], e[1], e[2], e[3]))
        proto = protocol if isinstance(protocol, int) and protocol >= 2 else pickle.DEFAULT_PROTOCOL
        try:
            blob = pickle.dumps(entries, proto)
        except Exception as exc:
            for k, v, *_ in entries:
                try:
                    pickle.dumps((k, v), proto)
                except Exception as one:
                    raise SerializationError(f"cannot pickle the entry of key {k!r:.80}: "
                                             f"{type(one).__name__}: {one}") from one
            raise SerializationError(f"cannot pickle the cache's entries: {type(exc).__name__}: {exc}") from exc
        for name in ("weigher", "on_evict", "clock", "getsizeof"):
            fn = self._init_args[name]
            if fn is not None:
                try:
                    pickle.dumps(fn, proto)
                except Exception as exc:
                    raise SerializationError(f"cannot pickle the cache's {name} {fn!r:.80}: "
                                             f"{type(exc).__name__}: {exc}") from exc
        extra = {k: v for k, v in vars(self).items() if k not in _OWN_ATTRS}
        return (_restore, (type(self), dict(self._init_args), blob, extra))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


#: attributes Cache.__init__ sets (rebuilt on unpickling; anything else in ``__dict__`` is pickled as is)
_OWN_ATTRS = frozenset({"_init_args", "_user_on_evict", "_policy", "_max_bytes", "_getsizeof", "_load_lock",
                        "_flights", "_aflights", "_loads", "_load_failures", "_load_time"})
