"""cachetools' class names and signatures over :class:`~sutazai_hwopt.cache.Cache`, for migrating unchanged.

``from cachetools import LRUCache, TTLCache, cached`` becomes
``from sutazai_hwopt.cache.compat import LRUCache, TTLCache, cached``: the constructors take cachetools'
arguments (``maxsize``, ``getsizeof``, ``ttl``, ``timer``) and map them onto ``Cache``'s policy, byte bound
and TTL. ``Cache`` itself already accepts ``Cache(maxsize, getsizeof=fn)``. The mapping is documented in
``docs/cache.md`` (migration table), and ``tests/cache/test_cachetools_compat.py`` runs cachetools-style code
against both libraries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .engine import Cache
from .loading import cached

__all__ = ["Cache", "LFUCache", "LRUCache", "TTLCache", "cached"]


class LRUCache(Cache):
    """cachetools' ``LRUCache(maxsize, getsizeof=None)``: policy ``"lru"``."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], Any] | None = None) -> None:
        super().__init__(maxsize, "lru", getsizeof=getsizeof)


class LFUCache(Cache):
    """cachetools' ``LFUCache(maxsize, getsizeof=None)``: policy ``"lfu"``."""

    def __init__(self, maxsize: int, getsizeof: Callable[[Any], Any] | None = None) -> None:
        super().__init__(maxsize, "lfu", getsizeof=getsizeof)


class TTLCache(Cache):
    """cachetools' ``TTLCache(maxsize, ttl, timer=time.monotonic, getsizeof=None)``: LRU with a default TTL.

    ``timer`` is the clock (``time.monotonic`` is the core's own clock, read without a Python call).
    """

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float] = time.monotonic,
                 getsizeof: Callable[[Any], Any] | None = None) -> None:
        super().__init__(maxsize, "lru", ttl=ttl, clock=None if timer is time.monotonic else timer,
                         getsizeof=getsizeof)
        self._timer = timer

    @property
    def timer(self) -> Callable[[], float]:
        """The clock the TTLs are measured with."""
        return self._timer

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:  # type: ignore[override]
        """Remove the entries expired by ``time`` (default: now, on ``timer``) and return them as
        ``(key, value)`` pairs, as cachetools does."""
        return super().expire(time, collect=True)
