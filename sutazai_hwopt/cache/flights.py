"""Single-flight loading: one loader call per key however many threads or tasks miss at once.

``get_or_load`` uses a per-cache table of in-flight loads ("single flight", as in Go's
``golang.org/x/sync/singleflight`` and Caffeine's ``LoadingCache``): the first thread to miss a key runs the
loader, the others wait on the same flight and receive its value or its exception. A failed load is not
cached. ``aget_or_load`` does the same for coroutines, one flight table per event loop. The
:func:`~sutazai_hwopt.cache.loading.cached` decorator wraps functions, methods and coroutines on top of these.

This module knows nothing of :class:`~sutazai_hwopt.cache.Cache`: the engine mixes it in, and the decorator
(which must construct caches) lives in :mod:`~sutazai_hwopt.cache.loading`, so neither imports the other back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from ..errors import LoaderError

__all__ = ["MISS", "LoadingMixin"]

#: Sentinel for "not in the cache" (never a stored value).
MISS = object()


class _Flight:
    """One in-flight synchronous load: waiters block on ``done`` and read ``value`` or ``error``."""

    __slots__ = ("done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.waiters = 0
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class LoadingMixin:
    """The loading methods of :class:`~sutazai_hwopt.cache.Cache` (single-flight per key)."""

    # provided by the compiled core
    get: Callable[..., Any]
    peek: Callable[..., Any]
    put: Callable[..., Any]

    def _init_loading(self) -> None:
        self._load_lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self._aflights: dict[tuple[int, Hashable], asyncio.Future[Any]] = {}
        self._loads = 0
        self._load_failures = 0
        self._load_time = 0.0

    def _account(self, ok: bool, seconds: float) -> None:
        with self._load_lock:
            if ok:
                self._loads += 1
            else:
                self._load_failures += 1
            self._load_time += seconds

    def get_or_load(self, key: Hashable, loader: Callable[[Any], Any], *, wrap_errors: bool = True,
                    **put_kwargs: Any) -> Any:
        """Return the cached value of ``key``, calling ``loader(key)`` once on a miss and storing its result.

        Concurrent callers that miss the same key wait for the one running load. ``put_kwargs`` (``ttl``,
        ``weight``, ``priority``) are passed to :meth:`put`.

        Raises:
            LoaderError: the loader raised (the original is ``__cause__``); every waiter gets it and
                nothing is cached. With ``wrap_errors=False`` the original exception is raised instead.
        """
        value = self.get(key, MISS)
        if value is not MISS:
            return value
        return self._load_sync(key, lambda: loader(key), wrap_errors, put_kwargs)

    def _load_sync(self, key: Hashable, thunk: Callable[[], Any], wrap_errors: bool,
                   put_kwargs: dict[str, Any]) -> Any:
        with self._load_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                value = self.peek(key, MISS)   # loaded while we waited for the lock
                if value is not MISS:
                    return value
                flight = self._flights[key] = _Flight()
            else:
                flight.waiters += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                return self._raise(key, flight.error, wrap_errors)
            return flight.value
        start = time.perf_counter()
        try:
            value = thunk()
        except BaseException as exc:
            flight.error = exc
            self._account(False, time.perf_counter() - start)
            with self._load_lock:
                del self._flights[key]
            flight.done.set()
            return self._raise(key, exc, wrap_errors)
        self._account(True, time.perf_counter() - start)
        try:
            self.put(key, value, **put_kwargs)
        finally:
            flight.value = value
            with self._load_lock:
                del self._flights[key]
            flight.done.set()
        return value

    @staticmethod
    def _raise(key: Hashable, exc: BaseException, wrap: bool) -> Any:
        if wrap and isinstance(exc, Exception):
            raise LoaderError(f"loader for key {key!r:.80} raised {type(exc).__name__}: {exc}") from exc
        raise exc

    async def aget_or_load(self, key: Hashable, loader: Callable[[Any], Awaitable[Any]], *,
                           wrap_errors: bool = True, **put_kwargs: Any) -> Any:
        """Async :meth:`get_or_load`: ``await loader(key)`` runs once per key per event loop on a miss.

        Raises:
            LoaderError: as :meth:`get_or_load`; a cancelled load cancels its waiters.
        """
        value = self.get(key, MISS)
        if value is not MISS:
            return value
        return await self._load_async(key, lambda: loader(key), wrap_errors, put_kwargs)

    async def _load_async(self, key: Hashable, thunk: Callable[[], Awaitable[Any]], wrap_errors: bool,
                          put_kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        fkey = (id(loop), key)
        fut = self._aflights.get(fkey)
        if fut is not None:
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                return self._raise(key, exc, wrap_errors)
        fut = self._aflights[fkey] = loop.create_future()
        start = time.perf_counter()
        try:
            value = await thunk()
        except BaseException as exc:
            self._account(False, time.perf_counter() - start)
            del self._aflights[fkey]
            if isinstance(exc, asyncio.CancelledError):
                fut.cancel()
                raise
            fut.set_exception(exc)
            fut.exception()   # mark retrieved: waiters re-raise it, nobody else must
            return self._raise(key, exc, wrap_errors)
        self._account(True, time.perf_counter() - start)
        del self._aflights[fkey]
        try:
            self.put(key, value, **put_kwargs)
        finally:
            fut.set_result(value)
        return value
