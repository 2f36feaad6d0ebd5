"""Remedy providers against the real shared components: pools (dead agents), the host-wide balancer table,
agent restart with consent; a provider that fails part-way leaves nothing applied."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from sutazai_hwopt import BottleneckEliminator
from sutazai_hwopt.balancer.shared import SharedState
from sutazai_hwopt.config import load_config
from sutazai_hwopt.eliminator import HookResult
from sutazai_hwopt.eliminator.providers import (
    AgentRestarter,
    BalancerRemedies,
    MemoryRemedies,
    Steps,
    host_providers,
)
from sutazai_hwopt.memory import MemoryPoolManager
from sutazai_hwopt.testing import throwaway_namespace

from .conftest import ScriptedSource, better, worse

FORK = multiprocessing.get_context("fork")
MiB = 1024**2


def run(elim: BottleneckEliminator, btype: str, metrics: Mapping[str, Any] | None = None) -> Any:
    return asyncio.run(elim.eliminate_bottleneck(btype, metrics))


def elim_with(windows: list[dict[str, float]], mode: str = "balanced", **settings: Any) -> BottleneckEliminator:
    e = BottleneckEliminator({"auto_fix": True, "mode": mode, "validation_window_s": 0.0, **settings})
    e.metric_source = ScriptedSource(windows)
    return e


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("remedy") as name:
        yield name


@pytest.fixture
def table(ns: str) -> Iterator[SharedState]:
    st = SharedState.create(ns, slots=16)
    yield st
    st.close()
    st.unlink()


def _hold_and_exit(ns: str, q: Any) -> None:
    with MemoryPoolManager(namespace=ns) as m:
        bids = [m.allocate_memory("doomed", MiB, pool_id="data") for _ in range(4)]
        for b in bids:
            m.view("doomed", b)[:] = b"d" * MiB
        q.put(len(bids))


def _dead_agent(ns: str) -> None:
    q = FORK.Queue()
    p = FORK.Process(target=_hold_and_exit, args=(ns, q))
    p.start()
    assert q.get(timeout=60) == 4
    p.join()
    q.close()
    q.join_thread()


def test_collect_dead_reclaims_a_dead_agent_and_reports_nothing_to_do_after(ns: str) -> None:
    """pool.collect_dead frees a killed agent's blocks (kept when memory.available rose); a second run has
    nothing to reclaim and is not_applied (nothing validated, nothing to undo)."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("data", size=16 * MiB)
        _dead_agent(ns)
        assert pm.stats("data")["blocks"] == 4
        mem = MemoryRemedies(pm, namespace=ns)
        try:
            elim = elim_with(better("memory.available", 1e9, 2e9))
            assert elim.attach_provider(mem) == ["pool.collect_dead", "cache.shrink"]
            res = run(elim, "memory_pressure")
            first = res.outcomes[0]
            assert first.action.name == "hook:pool.collect_dead" and first.decision == "kept"
            assert first.results[0]["agents"] == 1 and first.results[0]["blocks"] == 4
            assert pm.stats("data")["blocks"] == 0 and pm.check("data")
            res = run(elim_with(better("memory.available", 1e9, 2e9)), "memory_pressure")  # no provider
            assert res.status == "no_action"
            elim2 = elim_with(better("memory.available", 1e9, 2e9) * 2)
            elim2.attach_provider(mem)
            res = run(elim2, "memory_pressure")
            assert [o.decision for o in res.outcomes] == ["not_applied", "not_applied"]  # nothing to do
        finally:
            mem.close()


def test_shed_is_seen_by_every_handle_and_undone_on_rollback(table: SharedState, ns: str) -> None:
    """balancer.shed raises the backend's host-wide outstanding count (what every process's balancer reads);
    a validation that finds it worse rolls it back to the original count."""
    other = SharedState.attach(ns)          # what another agent process's balancer holds
    try:
        table.add_outstanding("b1", 3)
        prov = BalancerRemedies(ns)
        elim = elim_with(worse("custom:balancer.backend_load:b1", 3.0, 3.0))
        assert elim.attach_provider(prov) == ["balancer.shed", "balancer.drain"]
        seen: list[int] = []
        real = prov.shed

        def spy(**kw: Any) -> HookResult:
            out = real(**kw)
            seen.append(other.outstanding("b1"))
            return out

        elim.register_hook("balancer.shed", spy)
        res = run(elim, "backend_overload", {"backend": "b1"})
        shed = next(o for o in res.outcomes if o.action.name == "shed_load")
        assert shed.action.target_metric == "custom:balancer.backend_load:b1"
        assert seen == [6] and shed.decision == "rolled_back"
        assert other.outstanding("b1") == 3 and prov.load("b1") == 3.0
        prov.close()
    finally:
        other.close()


def test_drain_publishes_an_ejection_and_its_undo_withdraws_it(table: SharedState, ns: str) -> None:
    """balancer.drain publishes a host-wide ejection; its undo ends it (nobody adopts it afterwards)."""
    prov = BalancerRemedies(ns, drain_s=120.0)
    other = SharedState.attach(ns)
    try:
        v0 = other.version
        out = prov.drain(backend="b2")
        now = time.monotonic()
        assert out.changed and other.version > v0 and other.ejected_until("b2") > now + 60
        out.undo()
        assert other.ejected_until("b2") <= time.monotonic()
        assert other.ejections_after(["b2"], time.monotonic())[1] == []
    finally:
        other.close()
        prov.close()


def test_missing_table_fails_the_action_and_applies_nothing(ns: str) -> None:
    """No balancer table of that name: the action is failed with the reason, nothing else happens."""
    elim = elim_with(better("custom:balancer.backend_load:b1"))
    prov = BalancerRemedies(ns + "x")
    elim.attach_provider(prov)
    res = run(elim, "backend_overload", {"backend": "b1", "target_metric": "custom:x"})
    assert res.outcomes[0].decision == "failed" and "no host-wide balancer table" in res.outcomes[0].reason


def test_provider_that_raises_part_way_leaves_nothing_applied(table: SharedState) -> None:
    """A remedy of two steps whose second step raises: the first is undone before the error reaches the
    eliminator, which records the action as failed; the shared table is as before."""
    table.add_outstanding("b9", 2)

    def shed_then_fail(backend: str | None = None, **_: Any) -> HookResult:
        with Steps() as s:
            s.do(lambda: table.add_outstanding("b9", 10), lambda _: table.add_outstanding("b9", -10))
            s.do(lambda: 1 / 0, None)
            return s.result(True)

    elim = elim_with(better("custom:load"), mode="aggressive")
    elim.register_hook("balancer.shed", shed_then_fail)
    res = run(elim, "backend_overload", {"backend": "b9", "target_metric": "custom:load"})
    failed = res.outcomes[0]
    assert failed.action.name == "shed_load" and failed.decision == "failed"
    assert "ZeroDivisionError" in failed.reason
    assert table.outstanding("b9") == 2
    assert res.status == "not_resolved"


def test_restart_needs_the_operators_consent(tmp_path: Any) -> None:
    """Without restart_leaking_agents the leak is only advice; with it, agent.restart SIGTERMs the leaking
    agent's process (high risk: only aggressive mode runs it automatically)."""
    agent = subprocess.Popen(["sleep", "600"])
    try:
        with throwaway_namespace("remedy") as ns, MemoryPoolManager(namespace=ns) as pm:
            pid_of = {"leaky": agent.pid}.get
            plain = host_providers(load_config(None), memory=pm, namespace=ns, pid_of=pid_of)
            assert not any(isinstance(p, AgentRestarter) for p in plain)
            cfg = load_config(None, overrides={"eliminator": {"restart_leaking_agents": True}})
            provs = host_providers(cfg, memory=pm, namespace=ns, pid_of=pid_of)
            restarter = next(p for p in provs if isinstance(p, AgentRestarter))
            metrics = {"agents": ["leaky"], "agent_pids": {"leaky": agent.pid}}
            elim = elim_with(better("agents:leaky:rss_bytes", 5e8, 1e7), mode="balanced")
            advice = next(a for a in elim.recommend("memory_leak", metrics) if a.name == "restart_agent")
            assert advice.advisory
            elim.attach_provider(restarter)
            res = run(elim, "memory_leak", metrics)
            out = next(o for o in res.outcomes if o.action.name == "restart_agent")
            assert out.decision == "recommended" and agent.poll() is None   # balanced: high risk only advised
            elim = elim_with(better("agents:leaky:rss_bytes", 5e8, 1e7), mode="aggressive")
            elim.attach_provider(restarter)
            res = run(elim, "memory_leak", metrics)
            out = next(o for o in res.outcomes if o.action.name == "restart_agent")
            assert out.decision == "kept" and out.results[0]["pid"] == agent.pid
            assert agent.wait(timeout=30) == -15
            for p in provs + plain:
                p.close()
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait()


def test_predicted_exhaustion_runs_only_low_risk_remedies() -> None:
    """memory_exhaustion_predicted tries the low-risk hooks now and only recommends the others."""
    calls: list[str] = []

    def hook(name: str) -> Any:
        def fn(**_: Any) -> HookResult:
            calls.append(name)
            return HookResult(True, lambda: calls.append("undo " + name))
        return fn

    elim = elim_with(worse("memory.available", 2e9, 2e9) * 2, mode="aggressive")
    for name in ("pool.collect_dead", "cache.shrink", "pool.compress"):
        elim.register_hook(name, hook(name))
    res = run(elim, "memory_exhaustion_predicted")
    assert calls == ["pool.collect_dead", "undo pool.collect_dead", "cache.shrink", "undo cache.shrink"]
    compress = next(o for o in res.outcomes if o.action.name == "hook:pool.compress")
    assert compress.decision == "recommended" and "only low-risk" in compress.reason
    off = elim_with([], prediction_enabled=False)
    assert off.predicted_bottlenecks({"memory": {"seconds": 1.0}}) == []
    assert elim.predicted_bottlenecks({"memory": None, "pools": {"p": {"seconds": 5.0}}}) == \
        ["memory_exhaustion_predicted"]
    assert elim.predicted_bottlenecks({"pools": {"p": {"seconds": 1e9}}}) == []


def test_steps_undo_newest_first_and_keep_going_when_an_undo_fails() -> None:
    done: list[str] = []
    s = Steps()
    s.do(lambda: done.append("a"), lambda _: done.append("undo a"))
    s.do(lambda: done.append("b"), lambda _: 1 / 0)
    s.do(lambda: done.append("c"), lambda _: done.append("undo c"))
    s.undo_all()
    assert done == ["a", "b", "c", "undo c", "undo a"]
    s.undo_all()   # idempotent
    assert done[-1] == "undo a" and os.getpid() > 0


def _resident(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_cache_shrink_evicts_and_returns_the_pages(ns: str) -> None:
    """cache.shrink evicts part of L2 and the tier's segment really shrinks in /dev/shm (pages returned)."""
    from sutazai_hwopt.cache.shared_index import SharedTier
    from sutazai_hwopt.shm import SHM_DIR, segment_name

    tier = SharedTier(ns, "l2", 32 * MiB)
    try:
        for i in range(20):
            tier.put(key=f"k{i}".encode(), key_hash=i + 1, kind=0, priority=0, head=b"", body=[b"v" * 512 * 1024])
        assert len(tier.index) == 20
        path = os.path.join(SHM_DIR, segment_name(ns, "cache", "l2"))
        with MemoryPoolManager(namespace=ns) as pm:
            mem = MemoryRemedies(pm, namespace=ns, shrink_fraction=0.5)
            before = _resident(path)
            out = mem.shrink_cache()
            assert out.changed and out.details["evicted"] == {"l2": 10} and len(tier.index) == 10
            assert out.details["released_bytes"] >= 4 * MiB
            assert _resident(path) <= before - 4 * MiB
            assert tier.check()
            mem.close()
    finally:
        tier.destroy()


def test_trim_returns_small_freed_blocks_pages(ns: str) -> None:
    """Small blocks' freed space stays resident until trim() gives it back; the pool stays consistent."""
    from sutazai_hwopt.shm import SHM_DIR, segment_name

    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("data", size=32 * MiB)
        bids = [pm.put_bytes("a", os.urandom(64 * 1024), pool_id="data") for _ in range(200)]
        path = os.path.join(SHM_DIR, segment_name(ns, "pool", "data"))
        for b in bids:
            pm.free_memory("a", b)
        before = _resident(path)
        released = pm.trim()
        assert released >= 8 * MiB and _resident(path) <= before - 8 * MiB
        assert pm.check("data")
        again = pm.put_bytes("a", b"z" * 100_000, pool_id="data")      # the space is usable again
        assert pm.read("a", again) == b"z" * 100_000


def _agent_balancer(name: str, algorithm: str, conn: Any) -> None:
    """Another agent process: on each request, 30 selections (each completed at once); sends the ids chosen."""
    from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer

    shared = SharedState.attach(name)
    lb = DynamicLoadBalancer(algorithm=algorithm, shared=shared)
    for i in range(3):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i))
    while conn.recv() == "go":
        chosen = set()
        for _ in range(30):
            s = lb.select_backend_sync()
            lb.record_result(s.service_id, 0.001, True)
            chosen.add(s.service_id)
        conn.send(sorted(chosen))
    shared.close()


@pytest.mark.parametrize("algorithm, hook", [("round_robin", "drain"), ("least_connections", "shed")])
def test_another_processs_balancer_sees_the_remedy_and_its_undo(table: SharedState, ns: str, algorithm: str,
                                                                 hook: str) -> None:
    """What the provider writes into the host-wide table changes another process's routing (drained / shed
    backend not chosen), and the undo gives the backend back."""
    here, there = FORK.Pipe()
    child = FORK.Process(target=_agent_balancer, args=(ns, algorithm, there))
    child.start()
    prov = BalancerRemedies(ns, drain_s=3.0)
    try:
        def chosen() -> list[str]:
            here.send("go")
            assert here.poll(60)
            return list(here.recv())

        assert "b1" in chosen()
        out = prov.drain(backend="b1") if hook == "drain" else prov.shed(backend="b1")
        assert out.changed and "b1" not in chosen()
        out.undo()     # a drain's undo stops further adoption; the child probes b1 when its own copy ends
        deadline = time.monotonic() + 120
        while "b1" not in chosen():
            assert time.monotonic() < deadline, "b1 never came back after the undo"
            time.sleep(0.2)
    finally:
        here.send("stop")
        child.join(60)
        here.close()
        there.close()
        prov.close()
