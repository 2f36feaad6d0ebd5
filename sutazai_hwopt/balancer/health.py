"""Active health checks: asyncio TCP connect, or an HTTP/1.0 GET of ``BackendService.health_path``.

One task checks every registered backend each ``interval_s`` (concurrently, each bounded by ``timeout_s``)
and feeds :meth:`DynamicLoadBalancer.report_health`. It only runs after ``await balancer.start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from ..logs import get_logger
from .types import BackendService

__all__ = ["HealthChecker", "HealthTarget", "check_backend"]

log = get_logger("balancer")


async def check_backend(service: BackendService, timeout_s: float) -> bool:
    """One check: the TCP connect succeeds and, with a ``health_path``, the HTTP status is 2xx or 3xx."""

    async def run() -> bool:
        reader, writer = await asyncio.open_connection(service.host, service.port)
        try:
            if service.health_path is None:
                return True
            req = f"GET {service.health_path} HTTP/1.0\r\nHost: {service.host}\r\n\r\n"
            writer.write(req.encode("ascii"))
            await writer.drain()
            line = await reader.readline()
            parts = line.split()
            return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(run(), timeout=timeout_s)
    except (OSError, asyncio.TimeoutError, ValueError):
        return False


class HealthTarget(Protocol):
    """What the checker needs of its balancer: the backends to check and where to report the results."""

    def services(self) -> list[BackendService]: ...

    def report_health(self, service_id: str, healthy: bool) -> None: ...


class HealthChecker:
    """The periodic check loop of one balancer."""

    def __init__(self, lb: HealthTarget, *, interval_s: float, timeout_s: float) -> None:
        self._lb = lb
        self._interval = interval_s
        self._timeout = timeout_s
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sutazai_hwopt-health")

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def run_once(self) -> None:
        """Check every backend once and report the results."""
        services = self._lb.services()
        results = await asyncio.gather(*(check_backend(s, self._timeout) for s in services))
        for s, ok in zip(services, results):
            try:
                self._lb.report_health(s.service_id, ok)
            except KeyError:  # deregistered meanwhile
                pass
        self.rounds += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a bug here must not kill the loop silently
                log.exception("health check round failed")
            await asyncio.sleep(self._interval)
