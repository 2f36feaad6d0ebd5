"""Backends publish their own load (Reporter) and the balancers use it; one probe per host after an ejection.

Real asyncio TCP backends on loopback run in spawned processes with a Reporter; no assertion depends on timing
(counts and ordering, with generous deadlines for the processes to come up).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt._native import balancer_core
from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer, Reporter, ReportingMiddleware, RequestType
from sutazai_hwopt.balancer import shared as shared_mod
from sutazai_hwopt.balancer.shared import SharedState
from sutazai_hwopt.config import BalancerSection
from sutazai_hwopt.testing import FakeClock

PXI = Path(__file__).resolve().parents[2] / "_native" / "balancer_layout.pxi"
DEADLINE_S = 60.0


@pytest.fixture()
def table() -> Iterator[SharedState]:
    name = f"hwopt_test_rep_{uuid.uuid4().hex[:12]}"
    s = SharedState.create(name, slots=16)
    yield s
    s.close()
    s.unlink()


def _wait_for(pred: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------- layout, units
def test_layout_defined_once() -> None:
    """Every constant of balancer_layout.pxi is exposed in SHARED_LAYOUT with its value, and shared.py uses it."""
    pxi = dict(re.findall(r"^\s+([A-Z_][A-Z0-9_]*)\s*=\s*(\d+)", PXI.read_text(), re.M))
    assert {k: int(v) for k, v in pxi.items()} == balancer_core.SHARED_LAYOUT
    assert shared_mod.LAYOUT_VERSION == 2 and balancer_core.SHARED_LAYOUT["SLOT_WORDS"] == shared_mod.SLOT_WORDS
    offs = [v for k, v in balancer_core.SHARED_LAYOUT.items() if k.startswith("S_")]
    assert len(set(offs)) == len(offs) and max(offs) < shared_mod.SLOT_WORDS


def test_reporter_counts_and_service_time(table: SharedState) -> None:
    rep = Reporter(table, "a", workers=2)
    assert table.published("a") == {"infl": 0, "queue": 0, "svc": 0, "svc_base": 0, "done": 0, "fails": 0,
                                    "fail_run": 0, "workers": 2}
    with rep.queued():
        assert table.published("a")["queue"] == 1  # type: ignore[index]
    with rep.serving(), rep.serving():
        assert table.published("a")["infl"] == 2  # type: ignore[index]
    with pytest.raises(RuntimeError), rep.serving():
        raise RuntimeError("boom")
    p = table.published("a")
    assert p is not None
    assert (p["infl"], p["queue"], p["done"], p["fails"], p["fail_run"]) == (0, 0, 3, 1, 1)
    assert p["svc"] > 0 and p["svc_base"] > 0
    # measured service times: a 5x slowdown shows in the fast EWMA, not yet in the slow one
    for _ in range(600):  # past the plain-mean start of the slow EWMA
        rep.core.enter()
        rep.core.exit(0.010, True)
    t = table.published("a")
    assert t is not None and t["fail_run"] == 0
    base = t["svc_base"]
    for _ in range(20):
        rep.core.enter()
        rep.core.exit(0.050, True)
    t = table.published("a")
    assert t is not None and t["svc"] > 2 * t["svc_base"] and t["svc_base"] < 2 * base
    rep.close()
    assert table.published("a") is None and not table.reporter_live("a")


def _counts(table: SharedState, sid: str) -> tuple[int, int, int, int, int]:
    p = table.published(sid)
    assert p is not None
    return (p["infl"], p["queue"], p["done"], p["fails"], p["fail_run"])


def test_serving_exception_paths(table: SharedState) -> None:
    """Any exception leaving a ``serving()`` block is one failure and propagates unchanged (never swallowed), a
    ``queued()`` block is left on any exit, and a success after failures ends the published failure run."""
    rep = Reporter(table, "e")
    err = ValueError("boom")
    with pytest.raises(ValueError) as got, rep.serving():
        raise err
    assert got.value is err
    assert _counts(table, "e") == (0, 0, 1, 1, 1)
    with pytest.raises(KeyboardInterrupt), rep.serving():  # not only Exception subclasses
        raise KeyboardInterrupt
    with pytest.raises(LookupError), rep.queued(), rep.serving():
        raise KeyError("x")
    assert _counts(table, "e") == (0, 0, 3, 3, 3)
    svc = table.published("e")["svc"]  # type: ignore[index]
    assert svc == 0  # failures are not folded into the service time

    def inner() -> None:
        with rep.serving():
            raise RuntimeError("inner")

    # an exception caught inside the block does not make it a failure
    with rep.serving(), pytest.raises(RuntimeError):
        inner()
    assert _counts(table, "e") == (0, 0, 5, 4, 0)
    rep.close()


def test_serving_through_exit_stack_and_as_async_tasks(table: SharedState) -> None:
    """The context objects work wherever a context manager is expected: contextlib.ExitStack (which calls the
    methods found on the class) and interleaved asyncio tasks (each block ends its own request)."""
    import contextlib

    rep = Reporter(table, "x")
    with contextlib.ExitStack() as stack:
        assert stack.enter_context(rep.serving()) is None
        stack.enter_context(rep.queued())
        assert _counts(table, "x") == (1, 1, 0, 0, 0)
    assert _counts(table, "x") == (0, 0, 1, 0, 0)
    with pytest.raises(OSError), contextlib.ExitStack() as stack:
        stack.enter_context(rep.serving())
        raise OSError("down")
    assert _counts(table, "x") == (0, 0, 2, 1, 1)

    inside: list[int] = []

    async def request(fail: bool, gate: asyncio.Event) -> None:
        with rep.serving():
            inside.append(table.published("x")["infl"])  # type: ignore[index]
            await gate.wait()
            if fail:
                raise ConnectionError("reset")

    async def run() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(request(i % 2 == 1, gate)) for i in range(4)]
        await asyncio.sleep(0)
        assert _counts(table, "x")[0] == 4
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r) for r in results] == [type(None), ConnectionError] * 2

    asyncio.run(run())
    assert inside == [1, 2, 3, 4]
    assert _counts(table, "x")[:4] == (0, 0, 6, 3)
    rep.close()


def test_context_objects_refuse_other_calls_and_a_closed_table() -> None:
    """A context object is entered with no argument and left with three; a reporter whose table was closed
    raises StateError instead of writing into unmapped memory."""
    from sutazai_hwopt.errors import StateError

    name = f"hwopt_test_rep_{uuid.uuid4().hex[:12]}"
    table = SharedState.create(name, slots=4)
    try:
        rep = Reporter(table, "c")
        cm = rep.serving()
        with pytest.raises(TypeError):
            cm(1)  # type: ignore[operator]
        with pytest.raises(TypeError):
            cm(et=None)  # type: ignore[operator]
        assert _counts(table, "c") == (0, 0, 0, 0, 0)
        rep.close()
    finally:
        table.close()
        table.unlink()
    with pytest.raises(StateError), rep.serving():
        pass
    with pytest.raises(StateError), rep.queued():
        pass


def test_asgi_middleware_counts_requests_and_5xx(table: SharedState) -> None:
    rep = Reporter(table, "web")
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(table.published("web")["infl"])  # type: ignore[index]
        status = 503 if scope.get("path") == "/bad" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    mw = ReportingMiddleware(app, rep)
    sent: list[Any] = []

    async def send(m: Any) -> None:
        sent.append(m)

    async def receive() -> Any:
        return {"type": "http.request"}

    async def run() -> None:
        await mw({"type": "http", "path": "/ok"}, receive, send)
        await mw({"type": "http", "path": "/bad"}, receive, send)
        await mw({"type": "lifespan"}, receive, send)  # passes through, not counted

    asyncio.run(run())
    p = table.published("web")
    assert p is not None and (p["done"], p["fails"], p["infl"]) == (2, 1, 0)
    assert seen == [1, 1, 0] and len(sent) == 6
    rep.close()


def _pair(table: SharedState, reference: bool, clock: FakeClock) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(BalancerSection(health_check_interval_s=0.5), seed=7, shared=table,
                             clock=clock, reference=reference)
    for i in range(6):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i, weight=1.0 + i % 3))
    return lb


@pytest.mark.parametrize("algo", ["adaptive", "least_connections", "p2c"])
def test_published_load_same_picks_compiled_and_reference(algo: str) -> None:
    """Compiled and pure-Python balancers over two tables with the same published figures pick alike."""
    tables = [SharedState.create(f"hwopt_test_rep_{uuid.uuid4().hex[:12]}", slots=16) for _ in range(2)]
    try:
        clocks = [FakeClock(), FakeClock()]
        lbs = [_pair(t, ref, c) for t, ref, c in zip(tables, (False, True), clocks)]
        for lb in lbs:
            lb.set_algorithm(RequestType.DEFAULT, algo)
        reps = [[Reporter(t, f"b{i}", workers=1) for i in range(0, 6, 2)] for t in tables]
        for rs in reps:
            for k, r in enumerate(rs):
                for _ in range(k + 1):
                    r.core.enter()
                for _ in range(30):
                    r.core.enter()
                    r.core.exit(0.01, True)
            rs[1].core.enter()
            rs[1].core.exit(0.5, True)  # b2: a published slowdown
        picks: list[list[str]] = [[], []]
        held: list[list[str]] = [[], []]
        for step in range(60):
            for j, lb in enumerate(lbs):
                s = lb.select_backend_sync().service_id
                picks[j].append(s)
                held[j].append(s)
                if step % 3 == 2:
                    lb.record_result(held[j].pop(0), 0.01, True)
            for c in clocks:
                c.advance(0.05)
        assert picks[0] == picks[1]
        assert len(set(picks[0])) > 1
        for rs in reps:
            for r in rs:
                r.close()
    finally:
        for t in tables:
            t.close()
            t.unlink()


class _CountingState(SharedState):
    """Counts the Python path's full-table refreshes (the compiled path never makes one)."""

    refreshes = 0

    def refresh_view(self, backends: list[Any]) -> None:
        self.refreshes += 1
        super().refresh_view(backends)


def test_compiled_path_serves_shared_tables() -> None:
    """With a SharedState the compiled core selects and records without the Python path, counting host-wide."""
    t = _CountingState.create(f"hwopt_test_rep_{uuid.uuid4().hex[:12]}", slots=16)
    try:
        lb = _pair(t, False, FakeClock())
        lb.record_result(lb.select_backend_sync().service_id, 0.01, True)  # first call: refresh and decay
        assert t.refreshes == 1
        held = [lb.select_backend_sync().service_id for _ in range(5)]
        assert sum(t.outstanding(f"b{i}") for i in range(6)) == 5  # counted host-wide
        for s in held:
            lb.record_result(s, 0.01, True)
        assert sum(t.outstanding(f"b{i}") for i in range(6)) == 0
        assert t.refreshes == 1  # all on the compiled path
    finally:
        t.close()
        t.unlink()


# ------------------------------------------------------------------------------------ TCP backends (spawned)
def _backend(name: str, sid: str, conn: Connection) -> None:
    """Child: an asyncio TCP backend (one worker) publishing its load; ``slow <s>`` sets its service time."""

    async def main() -> None:
        table = SharedState.attach(name)
        rep = Reporter(table, sid, workers=1)
        delay = [0.005]
        sem = asyncio.Semaphore(1)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    if line.startswith(b"slow"):
                        delay[0] = float(line.split()[1])
                        writer.write(b"ok\n")
                    else:
                        with rep.queued():
                            await sem.acquire()
                        try:
                            with rep.serving():
                                await asyncio.sleep(delay[0])
                        finally:
                            sem.release()
                        writer.write(b"done\n")
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        conn.send(server.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        server.close()
        rep.close()
        table.close()

    asyncio.run(main())


def _start_backends(table: SharedState, sids: list[str]) -> tuple[list[Any], list[Connection], list[int]]:
    ctx = mp.get_context("spawn")
    procs, conns, ports = [], [], []
    for sid in sids:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_backend, args=(table.name, sid, child), daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    for c in conns:
        assert c.poll(DEADLINE_S), "backend did not come up"
        ports.append(c.recv())
    return procs, conns, ports


def _stop_backends(procs: list[Any], conns: list[Connection]) -> None:
    for p, c in zip(procs, conns):
        if p.is_alive():
            try:
                c.send("stop")
            except OSError:
                pass
    for p in procs:
        p.join(DEADLINE_S)
        if p.is_alive():
            p.kill()
            p.join()


async def _request(port: int, line: bytes = b"req\n") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line)
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()


def test_tcp_backend_made_slow_is_avoided(table: SharedState) -> None:
    """A backend made slow, with a backlog from clients outside this balancer, is avoided by the very next
    selections once its reporter published the backlog; without the report the balancer splits evenly."""
    procs, conns, ports = _start_backends(table, ["fast", "slow"])
    try:
        async def run() -> tuple[list[str], list[str]]:
            lb = DynamicLoadBalancer(BalancerSection(health_check_interval_s=0.05), seed=3, shared=table)
            for sid, port in zip(("fast", "slow"), ports):
                lb.register_service(BackendService(service_id=sid, host="127.0.0.1", port=port))
            before = []
            for _ in range(20):
                async with lb.lease() as svc:
                    before.append(svc.service_id)
                    assert await _request(svc.port) == b"done\n"
            assert await _request(ports[1], b"slow 3\n") == b"ok\n"
            foreign = [asyncio.create_task(_request(ports[1])) for _ in range(3)]  # not through the balancer
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE_S
            while True:
                p = table.published("slow")
                if p is not None and p["infl"] + p["queue"] == 3:
                    break
                assert loop.time() < deadline, "the slow backend never published its backlog"
                await asyncio.sleep(0.01)
            after = []
            for _ in range(10):
                async with lb.lease() as svc:
                    after.append(svc.service_id)
                    assert await _request(svc.port) == b"done\n"
            for t in foreign:
                t.cancel()
            await asyncio.gather(*foreign, return_exceptions=True)
            return before, after

        before, after = asyncio.run(run())
        assert set(before) == {"fast", "slow"}  # both used while both were fast and idle
        assert after == ["fast"] * 10
    finally:
        _stop_backends(procs, conns)


def _fake_reporter(name: str, sid: str, n: int, conn: Connection) -> None:
    """Child: publish ``n`` requests in flight on ``sid``, then wait (to be SIGKILLed)."""
    table = SharedState.attach(name)
    rep = Reporter(table, sid)
    for _ in range(n):
        rep.core.enter()
    conn.send("ready")
    conn.recv()


def test_sigkilled_reporter_figures_dropped_within_one_interval(table: SharedState) -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_fake_reporter, args=(table.name, "b", 6, child), daemon=True)
    p.start()
    try:
        assert parent.poll(DEADLINE_S) and parent.recv() == "ready"
        clock = FakeClock()
        lb = DynamicLoadBalancer(BalancerSection(health_check_interval_s=0.5), seed=1, shared=table, clock=clock)
        for sid in ("a", "b"):
            lb.register_service(BackendService(service_id=sid, port=8001))
        held = [lb.select_backend_sync().service_id for _ in range(5)]
        assert held == ["a"] * 5  # b has 6 in flight by its own word
        for s in held:
            lb.record_result(s, 0.001, True)
        os.kill(p.pid, signal.SIGKILL)
        p.join(DEADLINE_S)
        assert table.published("b") is None and table.words.load(table.slot("b") + 6) == 6  # stale, ignored
        clock.advance(0.51)  # one health interval
        picks = [lb.select_backend_sync().service_id for _ in range(4)]
        assert "b" in picks
    finally:
        if p.is_alive():
            p.kill()
        p.join()


def _remote_balancer(name: str, conn: Connection) -> None:
    """Child: a balancer in another process reads the same published figures and picks accordingly."""
    table = SharedState.attach(name)
    lb = DynamicLoadBalancer(seed=5, shared=table)
    for sid in ("a", "b"):
        lb.register_service(BackendService(service_id=sid, port=8001))
    picks = [lb.select_backend_sync().service_id for _ in range(3)]
    conn.send((table.published("b"), picks))
    for s in picks:
        lb.record_result(s, 0.001, True)
    table.close()


def test_spawned_balancer_sees_the_same_figures(table: SharedState) -> None:
    rep = Reporter(table, "b", workers=2)
    for _ in range(20):
        rep.core.enter()
        rep.core.exit(0.02, True)
    for _ in range(4):
        rep.core.enter()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_remote_balancer, args=(table.name, child))
    p.start()
    try:
        assert parent.poll(DEADLINE_S)
        published, picks = parent.recv()
        p.join(DEADLINE_S)
        assert p.exitcode == 0
        assert published == table.published("b") and published["infl"] == 4 and published["workers"] == 2
        # b has 4 in flight on 2 workers by its own word (3 ahead of a new request): a is cheaper 3 times
        assert picks == ["a", "a", "a"]
        assert table.outstanding("a") == 0
    finally:
        rep.close()
        if p.is_alive():
            p.kill()
        p.join()


# ----------------------------------------------------------------------------------- probes over a long outage
def _outage(shared: bool, clients: int = 4, outage_s: float = 120.0) -> tuple[int, BalancerSection]:
    """Simulated time, no active check: every request to ``dead`` fails at once. Returns how many were sent."""
    cfg = BalancerSection()
    clock = FakeClock()
    table = SharedState.create(f"hwopt_test_rep_{uuid.uuid4().hex[:12]}", slots=16) if shared else None
    try:
        lbs = []
        for c in range(clients):
            lb = DynamicLoadBalancer(cfg, seed=c, shared=table, clock=clock)
            for sid in ("dead", "b", "c"):
                lb.register_service(BackendService(service_id=sid, port=8001))
            lbs.append(lb)
        sent = 0
        steps = int(outage_s / 0.01)
        for _ in range(steps):
            for lb in lbs:
                s = lb.select_backend_sync().service_id
                if s == "dead":
                    sent += 1
                    lb.record_result(s, 0.0005, False)
                else:
                    lb.record_result(s, 0.005, True)
            clock.advance(0.01)
        return sent, cfg
    finally:
        if table is not None:
            table.close()
            table.unlink()


def test_long_outage_real_requests_bounded() -> None:
    """Over a 120 s outage 4 clients sharing a table send at most C x k + ceil(log2(max/base)) + ceil(T/max) + 1
    real requests to the dead backend (one probe per host per ejection period); unshared clients probe each."""
    sent, cfg = _outage(shared=True)
    clients, t = 4, 120.0
    probes = math.ceil(math.log2(cfg.max_ejection_s / cfg.base_ejection_s)) + math.ceil(t / cfg.max_ejection_s) + 1
    bound = clients * cfg.consecutive_failures + probes
    assert sent <= bound, (sent, bound)
    unshared, _ = _outage(shared=False)
    assert unshared > sent


def test_backend_reporting_failures_is_ejected_host_wide(table: SharedState) -> None:
    """A backend whose own reporter counts consecutive failures is ejected (and published) before this
    balancer sends it a request; a success it reports later lets the half-open probe re-admit it."""
    clock = FakeClock()
    lbs = [DynamicLoadBalancer(seed=s, shared=table, clock=clock) for s in (1, 2)]
    for lb in lbs:
        for sid in ("a", "b", "c"):
            lb.register_service(BackendService(service_id=sid, port=8001))
    rep = Reporter(table, "b")
    for lb in lbs:  # warm up both (fast path engaged), b included
        for _ in range(6):
            lb.record_result(lb.select_backend_sync().service_id, 0.001, True)
    for _ in range(2):  # b fails for someone else (a client outside this table)
        rep.core.enter()
        rep.core.exit(0.001, False)
    picks = [lb.select_backend_sync().service_id for lb in lbs for _ in range(10)]
    assert "b" not in picks
    assert [lb.state_of("b") for lb in lbs] == ["ejected", "ejected"]
    assert table.ejected_until("b") > clock()
    rep.close()


def test_shared_work_sums_return_to_zero(table: SharedState) -> None:
    """Cost-weighted work added by several balancers (types of different learned cost, costs changing on the
    decay tick, releases, a deregistered backend draining and re-registered) comes back out exactly."""
    import random

    clock = FakeClock()
    lbs = [DynamicLoadBalancer(seed=s, shared=table, clock=clock) for s in (1, 2)]
    for lb in lbs:
        for sid in ("a", "b", "c"):
            lb.register_service(BackendService(service_id=sid, port=8001))
    rng = random.Random(4)
    held: list[tuple[DynamicLoadBalancer, str, RequestType]] = []
    for step in range(400):
        lb = lbs[rng.randrange(2)]
        rt = RequestType.COMPUTE_HEAVY if rng.random() < 0.3 else RequestType.DEFAULT
        held.append((lb, lb.select_backend_sync(rt).service_id, rt))
        if step == 150:
            lbs[0].deregister_service("b")
        if step == 200:
            lbs[0].register_service(BackendService(service_id="b", port=8001))
        while held and rng.random() < 0.45:
            lb2, sid, rt2 = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.2:
                lb2.release(sid, rt2)
            else:
                lb2.record_result(sid, 0.05 if rt2 is RequestType.COMPUTE_HEAVY else 0.005, True, rt2)
        clock.advance(0.01)
    work = balancer_core.SHARED_LAYOUT["S_WORK"]
    assert any(table.words.load(table.slot(s) + work) > 0 for s in "abc")
    for lb2, sid, rt2 in held:
        lb2.record_result(sid, 0.005, True, rt2)
    assert [table.outstanding(s) for s in "abc"] == [0, 0, 0]
    assert [table.words.load(table.slot(s) + work) for s in "abc"] == [0, 0, 0]
