"""Backends publish their own load to every balancer on the host: in flight, queued and service time.

An agent that serves requests embeds a :class:`Reporter` on the host-wide shared table
(:class:`~.shared.SharedState`) and wraps each request in ``with reporter.serving():`` (or mounts
:class:`ReportingMiddleware` in an ASGI app). The bookkeeping is compiled (``ReporterCore``): a few atomic adds
and stores into the backend's own slot, no lock, no system call besides the monotonic clock. Every balancer
sharing the table then balances on the backend's true in-flight count and its published slowdown instead of its
own guess (C3's and Prequal's server feedback, without the network). The reporter's pid and process start time
sit in the slot: balancers check them once per health-check interval and drop a dead reporter's figures.

Example:
    >>> from sutazai_hwopt.balancer.shared import SharedState
    >>> table = SharedState.create("doctest_reporter")
    >>> rep = Reporter(table, "agent_001", workers=2)
    >>> with rep.serving():
    ...     table.published("agent_001")["infl"]
    1
    >>> table.published("agent_001")["done"]
    1
    >>> rep.close(); table.close(); table.unlink()
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from .._native.balancer_core import ReporterCore
from ..errors import InvalidArgumentError, StateError
from ..procid import process_start_time
from .shared import SharedState

__all__ = ["Reporter", "ReportingMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Reporter:
    """Publishes one backend's load into its slot of a shared table; one per serving process and backend.

    Args:
        table: the host-wide table (``SharedState.attach(name)``; the reporter does not close it).
        service_id: the id the balancers register this backend under.
        workers: how many requests it serves in parallel (published: service rate = workers / service time).

    ``serving()`` and ``queued()`` are context managers (any framework, sync or async code); ``begin()`` /
    ``done(start, ok)`` are the same bookkeeping as two calls, for middlewares.
    """

    def __init__(self, table: SharedState, service_id: str, *, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidArgumentError(f"workers must be an integer >= 1, got {workers!r}")
        pid = os.getpid()
        start = process_start_time(pid)
        if start is None:
            raise StateError("cannot read this process's start time from /proc")
        self.table = table
        self.service_id = service_id
        self.pid = pid
        self._core = ReporterCore(table.words, table.register_reporter(service_id, pid, start, workers))
        self.serving: Callable[[], AbstractContextManager[None]] = self._core.serving
        """``with reporter.serving(): ...``: one request served (an exception inside counts as a failure)."""
        self.queued: Callable[[], AbstractContextManager[None]] = self._core.queued
        """``with reporter.queued(): ...``: one request waiting in the backend's own queue."""
        self.begin: Callable[[], int] = self._core.begin
        """Count one request in flight; returns its start (monotonic ns) for :attr:`done`."""
        self.done: Callable[..., None] = self._core.done
        """``done(start_ns, ok=True)``: end the request begun at ``start_ns``."""
        self.core = self._core
        """The compiled bookkeeping (``enter()`` / ``exit(service_s, ok)`` take a service time measured by the
        caller, e.g. a simulation's clock)."""

    def close(self) -> None:
        """Stop publishing (balancers fall back to their own counts); the table stays open."""
        self.table.unregister_reporter(self.service_id, self.pid)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReportingMiddleware:
    """ASGI middleware: every HTTP request through ``app`` is one served request of ``reporter``.

    A response status of 500 or above, or an exception, counts as a failure (and is not folded into the
    service time); websocket and lifespan scopes pass through uncounted.
    """

    def __init__(self, app: ASGIApp, reporter: Reporter) -> None:
        self.app = app
        self._begin = reporter.begin
        self._done = reporter.done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = [200]

        async def send_status(message: Message) -> None:
            if message.get("type") == "http.response.start":
                status[0] = int(message.get("status", 200))
            await send(message)

        t0 = self._begin()
        ok = False
        try:
            await self.app(scope, receive, send_status)
            ok = status[0] < 500
        finally:
            self._done(t0, ok)
