"""Balance requests over real TCP backends on loopback, lose one, and see it ejected and re-admitted
(run: python examples/load_balancer.py).
"""

from __future__ import annotations

import asyncio

from sutazai_hwopt import BackendService, DynamicLoadBalancer, RequestType
from sutazai_hwopt.errors import HwoptError


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.readline()
    writer.write(data)
    await writer.drain()
    writer.close()


async def call(host: str, port: int) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    writer.write(b"ping\n")
    await writer.drain()
    if await asyncio.wait_for(reader.readline(), 1.0) != b"ping\n":
        raise ConnectionError("bad answer")
    writer.close()


async def main() -> None:
    servers = [await asyncio.start_server(echo, "127.0.0.1", 0) for _ in range(3)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    lb = DynamicLoadBalancer()
    for i, port in enumerate(ports):
        lb.register_service(BackendService(service_id=f"agent_{i:03d}", host="127.0.0.1", port=port, weight=1.0))
    async with lb:  # active health checks run while inside
        for round_ in range(3):
            if round_ == 1:
                servers[0].close()
                await servers[0].wait_closed()
                print("backend agent_000 stopped")
            counts: dict[str, int] = {}
            for _ in range(60):
                try:
                    async with lb.lease(RequestType.LIGHT) as backend:
                        await call(backend.host, backend.port)
                        counts[backend.service_id] = counts.get(backend.service_id, 0) + 1
                except (OSError, asyncio.TimeoutError, HwoptError):
                    counts["errors"] = counts.get("errors", 0) + 1
            print(f"round {round_}: {dict(sorted(counts.items()))}")
    for name, figures in sorted(lb.analytics().get("backends", {}).items()):
        keep = ("requests", "errors", "ejections", "state", "active_healthy")
        print(name, {k: figures[k] for k in keep if k in figures})
    for s in servers[1:]:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
