"""End to end on loopback: real asyncio TCP backends, one killed and restarted (FakeClock for ejection time)."""

from __future__ import annotations

import asyncio
from collections import Counter

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.config import BalancerSection
from sutazai_hwopt.testing import FakeClock


class Backend:
    """A tiny line protocol server: answers each ``ping`` line with ``pong`` and counts requests."""

    def __init__(self) -> None:
        self.count = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line == b"ping\n":
            self.count += 1
            writer.write(b"pong\n")
            await writer.drain()
        writer.close()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def request(lb: DynamicLoadBalancer) -> tuple[str, bool]:
    """One request through a lease: connect, ping, read pong. Returns (backend id, ok)."""
    lease = lb.lease()
    async with lease as svc:
        try:
            reader, writer = await asyncio.open_connection(svc.host, svc.port)
            writer.write(b"ping\n")
            await writer.drain()
            ok = await reader.readline() == b"pong\n"
            writer.close()
            await writer.wait_closed()
        except OSError:
            ok = False
        if not ok:
            lease.mark_failure()
        return svc.service_id, ok


def test_kill_eject_probe_readmit() -> None:
    """A killed backend is ejected, gets no requests while out, is probed with <= k calls, then re-admitted."""
    clock = FakeClock()
    k = 2
    cfg = BalancerSection(consecutive_failures=2, healthy_threshold=2, unhealthy_threshold=1,
                          half_open_probes=k, health_check_timeout_s=5.0)

    async def main() -> None:
        backends = [Backend() for _ in range(3)]
        for b in backends:
            await b.start()
        lb = DynamicLoadBalancer(cfg, algorithm="round_robin", clock=clock)
        for i, b in enumerate(backends):
            lb.register_service(BackendService(service_id=f"b{i}", host="127.0.0.1", port=b.port))
        await lb.check_now()
        results = [await request(lb) for _ in range(9)]
        assert all(ok for _, ok in results)
        assert [b.count for b in backends] == [3, 3, 3]

        await backends[1].kill()
        errors = 0
        while lb.state_of("b1") != "ejected":
            sid, ok = await request(lb)
            errors += not ok
        assert errors == 2

        sent = Counter(sid for sid, _ in [await request(lb) for _ in range(20)])
        assert sent["b1"] == 0 and sum(sent.values()) == 20

        await lb.check_now()  # the check fails: the expired ejection is extended, no probe is risked
        clock.advance(60.0)
        assert lb.state_of("b1") in ("ejected", "unhealthy")
        assert Counter(sid for sid, _ in [await request(lb) for _ in range(6)])["b1"] == 0

        await backends[1].start(port=backends[1].port)
        await lb.check_now()
        await lb.check_now()
        assert lb.state_of("b1") == "probing"
        held = [lb.select_backend_sync().service_id for _ in range(12)]
        assert held.count("b1") == k
        for sid in held:
            lb.record_result(sid, 0.001, True)
        assert lb.state_of("b1") == "healthy"
        before = backends[1].count
        results = [await request(lb) for _ in range(9)]
        assert all(ok for _, ok in results)
        assert backends[1].count - before == 3
        assert lb.in_flight() == 0
        for b in (backends[0], backends[1], backends[2]):
            await b.kill()

    asyncio.run(main())


def test_started_balancer_runs_checks_and_stops() -> None:
    """``async with balancer`` runs periodic checks that take a dead backend out, and stops them on exit."""

    async def main() -> None:
        live = Backend()
        await live.start()
        dead = Backend()
        await dead.start()
        await dead.kill()
        lb = DynamicLoadBalancer(BalancerSection(health_check_interval_s=0.05, unhealthy_threshold=1),
                                 algorithm="round_robin")
        lb.register_service(BackendService(service_id="live", port=live.port))
        lb.register_service(BackendService(service_id="dead", port=dead.port))
        async with lb:
            while lb.state_of("dead") != "unhealthy":
                await asyncio.sleep(0.01)
            assert lb.state_of("live") == "healthy"
            assert {lb.select_backend_sync().service_id for _ in range(4)} == {"live"}
        assert lb._health is None
        await live.kill()

    asyncio.run(main())


def test_http_health_path() -> None:
    """With a health_path, a backend answering a non-2xx status fails its check."""

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            status = b"200 OK" if b"/ok" in line else b"503 Unavailable"
            writer.write(b"HTTP/1.0 " + status + b"\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        lb = DynamicLoadBalancer(BalancerSection(unhealthy_threshold=1), clock=FakeClock())
        lb.register_service(BackendService(service_id="good", port=port, health_path="/ok"))
        lb.register_service(BackendService(service_id="bad", port=port, health_path="/broken"))
        await lb.check_now()
        assert lb.state_of("good") == "healthy"
        assert lb.state_of("bad") == "unhealthy"
        server.close()
        await server.wait_closed()

    asyncio.run(main())
