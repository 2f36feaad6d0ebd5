"""Lease: one request's hold on a backend, as a sync or async context manager, so in-flight never leaks.

Exit paths: normal exit records success; an exception records failure; ``asyncio.CancelledError``,
``KeyboardInterrupt``/``SystemExit``/``GeneratorExit`` and exceptions after :meth:`Lease.ignore` only release
the slot (the backend is not to blame). A cancellation while waiting for a backend holds nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from ..errors import StateError
from .types import BackendService, RequestType

__all__ = ["Lease", "LeaseTarget"]


class LeaseTarget(Protocol):
    """What a lease needs of its balancer: the public select / record / release calls, nothing else."""

    def select_backend_sync(self, request_type: RequestType = ..., session_id: str | None = ...,
                            /) -> BackendService: ...

    async def select_backend(self, request_type: RequestType = ..., session_id: str | None = ..., *,
                             wait_timeout: float | None = ...) -> BackendService: ...

    def record_result(self, service_id: str, latency_s: float, success: bool, request_type: RequestType = ...,
                      /) -> None: ...

    def release(self, service_id: str, request_type: RequestType = ...) -> None: ...

_NOT_BACKEND_FAULT = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class Lease:
    """Returned by :meth:`DynamicLoadBalancer.lease`; ``with``/``async with`` yields the BackendService.

    ``clock`` times the request for :meth:`~LeaseTarget.record_result`: the balancer passes its own.
    """

    __slots__ = ("_backend", "_clock", "_done", "_lb", "_outcome", "_rt", "_session", "_start", "_wait")

    def __init__(self, lb: LeaseTarget, rt: RequestType, session_id: str | None,
                 wait_timeout: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lb = lb
        self._clock = clock
        self._rt = rt
        self._session = session_id
        self._wait = wait_timeout
        self._backend: BackendService | None = None
        self._start = 0.0
        self._outcome: bool | None = None  # None: decided by the exit path
        self._done = False

    @property
    def backend(self) -> BackendService:
        """The selected backend (only inside the ``with`` block)."""
        if self._backend is None:
            raise StateError("the lease has no backend: use it as a context manager first")
        return self._backend

    def mark_failure(self) -> None:
        """Count this request as failed even if the block exits normally (e.g. an HTTP 503)."""
        self._outcome = False

    def mark_success(self) -> None:
        """Count this request as successful even if the block raises (e.g. a client-side parse error)."""
        self._outcome = True

    def ignore(self) -> None:
        """Release the slot without an outcome: the request says nothing about the backend."""
        self._outcome = None
        self._done = True

    def _take(self, backend: BackendService) -> BackendService:
        if self._backend is not None:
            # A second enter would leak the first slot.
            self._lb.release(backend.service_id, self._rt)
            raise StateError("a lease can be entered only once")
        self._backend = backend
        self._start = self._clock()
        return backend

    def __enter__(self) -> BackendService:
        return self._take(self._lb.select_backend_sync(self._rt, self._session))

    async def __aenter__(self) -> BackendService:
        return self._take(await self._lb.select_backend(self._rt, self._session, wait_timeout=self._wait))

    def _finish(self, exc: BaseException | None) -> None:
        b = self._backend
        if b is None:
            return
        self._backend = None
        lb = self._lb
        if self._done or isinstance(exc, _NOT_BACKEND_FAULT):
            lb.release(b.service_id, self._rt)
            return
        ok = self._outcome if self._outcome is not None else exc is None
        latency = max(0.0, self._clock() - self._start)
        lb.record_result(b.service_id, latency, ok, self._rt)

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish(exc)

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._finish(exc)
