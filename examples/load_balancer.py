"""Balance requests over real TCP backends on loopback, lose one, and see it ejected and re-admitted
(run: python examples/load_balancer.py).

Three echo servers stand in for agents. One is stopped: the requests it fails eject it (passive outlier
detection), and the active health checks keep it out while it stays down. It is then restarted on the same port:
the health checks see it answer, a first probe request succeeds, and the balancer admits it again.
"""

from __future__ import annotations

import asyncio
import time

from sutazai_hwopt import BackendService, DynamicLoadBalancer, RequestType
from sutazai_hwopt.config import BalancerSection
from sutazai_hwopt.errors import HwoptError

# Short periods so the story takes seconds; the defaults suit a real host (5 s checks, 1 s first ejection).
CONFIG = BalancerSection(algorithm="round_robin", health_check_interval_s=0.2, health_check_timeout_s=0.5,
                         unhealthy_threshold=2, healthy_threshold=2, consecutive_failures=2,
                         base_ejection_s=0.5, session_affinity=False)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readline()
    writer.write(data)
    await writer.drain()
    writer.close()


async def call(host: str, port: int) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    try:
        writer.write(b"ping\n")
        await writer.drain()
        if await asyncio.wait_for(reader.readline(), 1.0) != b"ping\n":
            raise ConnectionError("bad answer")
    finally:
        writer.close()


async def send(lb: DynamicLoadBalancer, n: int) -> dict[str, int]:
    """Send ``n`` requests through the balancer; count them per backend (and the failed ones)."""
    counts: dict[str, int] = {}
    for _ in range(n):
        try:
            async with lb.lease(RequestType.LIGHT) as backend:
                await call(backend.host, backend.port)
                counts[backend.service_id] = counts.get(backend.service_id, 0) + 1
        except (OSError, asyncio.TimeoutError, HwoptError):
            counts["failed"] = counts.get("failed", 0) + 1
        await asyncio.sleep(0.005)
    return dict(sorted(counts.items()))


def state(lb: DynamicLoadBalancer, service_id: str) -> dict[str, object]:
    figures = lb.analytics()["backends"][service_id]
    return {k: figures[k] for k in ("state", "active_healthy", "ejections")}


async def until(lb: DynamicLoadBalancer, service_id: str, key: str, wanted: object,
                traffic: bool = False, timeout: float = 10.0) -> float:
    """Seconds until the backend's ``key`` is ``wanted`` (health checks, and ``traffic`` if asked, run meanwhile)."""
    t0 = time.monotonic()
    while state(lb, service_id)[key] != wanted:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{service_id}: {key} did not become {wanted!r}: {state(lb, service_id)}")
        if traffic:
            await send(lb, 3)
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def main() -> None:
    servers = [await asyncio.start_server(echo, "127.0.0.1", 0) for _ in range(3)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    lb = DynamicLoadBalancer(CONFIG)
    for i, port in enumerate(ports):
        lb.register_service(BackendService(service_id=f"agent_{i:03d}", host="127.0.0.1", port=port))
    try:
        async with lb:  # active health checks run while inside
            print(f"1. three backends healthy: {await send(lb, 30)}")

            servers[0].close()
            await servers[0].wait_closed()
            counts = await send(lb, 30)
            await until(lb, "agent_000", "state", "ejected")
            print(f"2. agent_000 stopped: {counts}; agent_000 ejected {state(lb, 'agent_000')}")
            await until(lb, "agent_000", "active_healthy", False)
            print(f"3. health checks fail, it stays out: {await send(lb, 30)} {state(lb, 'agent_000')}")

            servers[0] = await asyncio.start_server(echo, "127.0.0.1", ports[0], reuse_address=True)
            took = await until(lb, "agent_000", "state", "healthy", traffic=True)
            print(f"4. agent_000 restarted: health checks pass, a probe request succeeds, re-admitted after "
                  f"{took:.1f} s {state(lb, 'agent_000')}")
            print(f"5. all three serve again: {await send(lb, 30)}")
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
