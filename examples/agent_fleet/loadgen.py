"""The load generator: open-loop, seeded, one process per setup, driven by the harness over stdin/stdout (JSON lines).

It keeps one connection per agent (requests are pipelined; an agent answers in order), routes each request with
the setup's router (naive: round-robin; savvy: least-connections; library: ``DynamicLoadBalancer`` with its
default algorithm), records the latency of every request from its *scheduled* send time (so a slow sender cannot
hide queueing: no coordinated omission), and recomputes a sample of the answers from its own private copy of the
weights (wrong answers must be 0). A dead connection (an agent killed) takes that agent out of the rotation; its
requests in flight count as errors, the others keep being served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import deque
from typing import Any

import numpy as np

from .work import (
    DEFAULT,
    FAILED,
    HEAVY,
    KIND_NAMES,
    LEVEL_NAMES,
    LIGHT,
    REQUEST,
    RESPONSE,
    SHAPES,
    STATS,
    compute,
    make_inputs,
    make_stream,
    process_args,
)


class RoundRobin:
    """Naive routing: the next live agent in turn."""

    def __init__(self, n: int) -> None:
        self.alive = list(range(n))
        self.next = 0

    def pick(self, kind: int) -> int:
        self.next = (self.next + 1) % len(self.alive)
        return self.alive[self.next]

    def done(self, b: int, latency: float, ok: bool, kind: int) -> None:
        pass

    def remove(self, b: int) -> None:
        if b in self.alive:
            self.alive.remove(b)


class LeastConnections:
    """Savvy routing: fewest requests in flight, ties taken in turn (what nginx/haproxy `leastconn` does)."""

    def __init__(self, n: int) -> None:
        self.inflight = np.zeros(n, dtype=np.int64)
        self.turn = 0

    def pick(self, kind: int) -> int:
        candidates = np.flatnonzero(self.inflight == self.inflight.min())
        self.turn += 1
        b = int(candidates[self.turn % candidates.size])
        self.inflight[b] += 1
        return b

    def done(self, b: int, latency: float, ok: bool, kind: int) -> None:
        self.inflight[b] -= 1

    def remove(self, b: int) -> None:
        self.inflight[b] = 1 << 40


class LibraryRouter:
    """Library routing: ``DynamicLoadBalancer`` with its default algorithm, results recorded per request type."""

    def __init__(self, ports: list[int], seed: int) -> None:
        from sutazai_hwopt import BackendService, DynamicLoadBalancer, RequestType

        self.types = {LIGHT: RequestType.LIGHT, DEFAULT: RequestType.DEFAULT, HEAVY: RequestType.COMPUTE_HEAVY}
        self.lb = DynamicLoadBalancer(seed=seed)
        self.ids = [f"agent_{i:03d}" for i in range(len(ports))]
        self.index = {sid: i for i, sid in enumerate(self.ids)}
        for sid, port in zip(self.ids, ports):
            self.lb.register_service(BackendService(service_id=sid, host="127.0.0.1", port=port,
                                                    max_connections=100_000))

    def pick(self, kind: int) -> int:
        return self.index[self.lb.select_backend_sync(self.types[kind]).service_id]

    def done(self, b: int, latency: float, ok: bool, kind: int) -> None:
        self.lb.record_result(self.ids[b], latency, ok, self.types[kind])

    def remove(self, b: int) -> None:
        try:
            self.lb.deregister_service(self.ids[b])
        except Exception:   # already gone
            pass


class Phase:
    """The record of one open-loop phase."""

    def __init__(self, name: str, times: np.ndarray, kinds: np.ndarray, prompts: np.ndarray, verify: int) -> None:
        self.name, self.times, self.kinds, self.prompts = name, times, kinds, prompts
        n = times.size
        self.latency = np.full(n, np.nan)
        self.level = np.full(n, -1, dtype=np.int8)
        self.failed = np.zeros(n, dtype=bool)
        self.every = max(1, n // max(1, verify)) if verify else 0
        self.samples: dict[int, bytes] = {}
        self.outstanding = 0
        self.sent = 0
        self.t0 = 0.0
        self.max_lag = 0.0
        self.backlog_wait = 0.0
        self.all_sent = False
        self.finished = asyncio.Event()

    def settle(self) -> None:
        self.outstanding -= 1
        if self.all_sent and self.outstanding == 0:
            self.finished.set()


class Conn:
    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index, self.reader, self.writer = index, reader, writer
        self.pending: deque[tuple[Any, ...]] = deque()
        self.alive = True


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shape = SHAPES[args.shape]
        self.ports = [int(p) for p in args.ports.split(",")]
        if args.setup == "naive":
            self.router: Any = RoundRobin(len(self.ports))
        elif args.setup == "savvy":
            self.router = LeastConnections(len(self.ports))
        else:
            self.router = LibraryRouter(self.ports, args.seed)
        self.weights = np.load(args.npy)              # private copy: verification must not share the agents' pages
        self.inputs = make_inputs(self.shape, args.seed)
        self.conns: list[Conn] = []
        self.dead: list[int] = []

    async def connect(self) -> None:
        for i, port in enumerate(self.ports):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = Conn(i, reader, writer)
            self.conns.append(conn)
            asyncio.get_running_loop().create_task(self.read_loop(conn))

    def _mark_dead(self, conn: Conn) -> None:
        if not conn.alive:
            return
        conn.alive = False
        self.dead.append(conn.index)
        loop = asyncio.get_running_loop()
        while conn.pending:
            entry = conn.pending.popleft()
            if entry[0] is None:
                if not entry[1].done():
                    entry[1].set_result((False, b""))
                continue
            phase, i, sent_at = entry
            phase.failed[i] = True
            self.router.done(conn.index, loop.time() - sent_at, False, int(phase.kinds[i]))
            phase.settle()
        self.router.remove(conn.index)

    async def read_loop(self, conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        reader = conn.reader
        try:
            while True:
                status, level, length = RESPONSE.unpack(await reader.readexactly(RESPONSE.size))
                payload = await reader.readexactly(length) if length else b""
                now = loop.time()
                entry = conn.pending.popleft()
                if entry[0] is None:                 # a control message
                    entry[1].set_result((status != FAILED, payload))
                    continue
                phase, i, sent_at = entry
                ok = status != FAILED
                phase.latency[i] = now - phase.t0 - phase.times[i]
                phase.level[i] = level
                phase.failed[i] = not ok
                if phase.every and i % phase.every == 0:
                    phase.samples[i] = payload
                self.router.done(conn.index, now - sent_at, ok, int(phase.kinds[i]))
                phase.settle()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        self._mark_dead(conn)

    async def control(self, kind: int, arg: int) -> dict[str, Any]:
        """Send a control message (flush, reconfigure) to every live agent and wait for the answers."""
        loop = asyncio.get_running_loop()
        futures = []
        for conn in self.conns:
            if conn.alive:
                fut = loop.create_future()
                conn.pending.append((None, fut))
                conn.writer.write(REQUEST.pack(kind, arg, 0))
                futures.append(fut)
        results = await asyncio.wait_for(asyncio.gather(*futures), timeout=120)
        out: dict[str, Any] = {"acked": sum(int(ok) for ok, _ in results), "alive": len(futures)}
        if kind == STATS:                            # the agents' cost counters: sums, and max of maxima
            total: dict[str, int] = {}
            for ok, payload in results:
                for k, v in (json.loads(payload) if ok and payload else {}).items():
                    total[k] = max(total.get(k, 0), v) if k.endswith("_max_ns") else total.get(k, 0) + v
            out["costs"] = total
        return out

    async def run_phase(self, cmd: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        times, kinds, prompts = make_stream(self.args.seed, int(cmd["salt"]), float(cmd["rate"]),
                                            float(cmd["duration"]))
        phase = Phase(cmd["name"], times, kinds, prompts, int(cmd.get("verify", 100)))
        n = times.size
        # a backlog left by an overloaded earlier phase is served before this one starts (not measured into it)
        waited = loop.time()
        while any(c.pending for c in self.conns if c.alive) and loop.time() - waited < 300:
            await asyncio.sleep(0.05)
        phase.backlog_wait = loop.time() - waited
        phase.t0 = loop.time() + 0.02
        i = 0
        pack = REQUEST.pack
        router = self.router
        conns = self.conns
        while i < n:
            now = loop.time() - phase.t0
            if times[i] > now:
                await asyncio.sleep(times[i] - now)
                continue
            while i < n and times[i] <= now:
                kind = int(kinds[i])
                try:
                    b = router.pick(kind)
                except Exception:                    # nothing to send to (every agent dead or full)
                    phase.failed[i] = True
                    i += 1
                    continue
                conn = conns[b]
                conn.pending.append((phase, i, loop.time()))
                phase.outstanding += 1
                conn.writer.write(pack(kind, 0, int(prompts[i])))
                i += 1
            phase.sent = i
            phase.max_lag = max(phase.max_lag, now - times[i - 1])
            await asyncio.sleep(0)
        send_end = loop.time() - phase.t0
        phase.all_sent = True
        if phase.outstanding == 0:
            phase.finished.set()
        try:
            await asyncio.wait_for(phase.finished.wait(), timeout=float(cmd.get("drain_s", 30.0)))
        except asyncio.TimeoutError:
            pass
        wall = loop.time() - phase.t0
        return self.summarize(phase, cmd, send_end, wall)

    def summarize(self, phase: Phase, cmd: dict[str, Any], send_end: float, wall: float) -> dict[str, Any]:
        answered = ~np.isnan(phase.latency) & ~phase.failed
        lat = phase.latency[answered]
        n = phase.times.size
        wrong = 0
        for i, payload in phase.samples.items():
            expected = compute(self.weights, self.inputs, int(phase.kinds[i]), int(phase.prompts[i]),
                               self.shape.answer)
            got = np.frombuffer(payload, dtype=np.float32)
            scale = max(1.0, float(np.abs(expected).max()))
            if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
                wrong += 1
        levels = {LEVEL_NAMES[k]: int(np.count_nonzero(phase.level[answered] == k)) for k in LEVEL_NAMES}
        per_kind = {}
        for k, name in KIND_NAMES.items():
            sel = answered & (phase.kinds == k)
            per_kind[name] = {"answered": int(sel.sum()),
                              "p99_s": float(np.percentile(phase.latency[sel], 99)) if sel.any() else None}
        # p99 per second of the phase (arrival time bins), for the warm-up chart
        seconds = []
        if lat.size:
            bins = np.floor(phase.times[answered]).astype(int)
            for s in range(int(bins.max()) + 1):
                sel = lat[bins == s]
                seconds.append(float(np.percentile(sel, 99)) if sel.size else None)
        qs = np.linspace(0, 100, 101)
        return {
            "name": phase.name, "offered_rate": float(cmd["rate"]), "duration_s": float(cmd["duration"]),
            "scheduled": int(n), "sent": int(phase.sent), "answered": int(answered.sum()),
            "errors": int(phase.failed.sum()), "unanswered": int(n - answered.sum() - phase.failed.sum()),
            "achieved_rate": float(answered.sum() / max(1e-9, send_end)) if n else 0.0,
            "send_end_s": send_end, "wall_s": wall, "max_send_lag_s": phase.max_lag,
            "backlog_wait_s": phase.backlog_wait,
            "p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_s": float(np.percentile(lat, 99)) if lat.size else None,
            "p999_s": float(np.percentile(lat, 99.9)) if lat.size else None,
            "max_s": float(lat.max()) if lat.size else None,
            "mean_s": float(lat.mean()) if lat.size else None,
            "percentiles_s": [float(x) for x in np.percentile(lat, qs)] if lat.size else [],
            "p99_per_second_s": seconds, "levels": levels,
            "hit_ratio": (1.0 - levels[LEVEL_NAMES[0]] / lat.size) if lat.size else None,
            "per_kind": per_kind, "verified": len(phase.samples), "wrong": wrong, "dead_agents": list(self.dead),
        }

    async def serve(self) -> None:
        await self.connect()
        loop = asyncio.get_running_loop()
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "phase":
                out = await self.run_phase(cmd)
            else:
                out = await self.control(int(cmd["kind"]), int(cmd.get("arg", 0)))
            print(json.dumps(out), flush=True)
        for conn in self.conns:
            conn.writer.close()


def main(argv: list[str] | None = None) -> None:
    from .agent import die_with_parent

    die_with_parent()
    p = process_args(__doc__)
    p.add_argument("--ports", required=True)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(LoadGen(args).serve())


if __name__ == "__main__":
    main()
