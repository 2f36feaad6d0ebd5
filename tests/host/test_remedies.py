"""Remedies in the running host service, with real processes: a memory-pressure finding gets the pool remedy
applied and validated; a predicted pool exhaustion triggers the low-risk remedy early, is shown in the dashboard
data and reaches the alert callbacks.

Memory pressure: this host has no writable cgroup v2 and its PSI does not move, so the test sets a memory
budget instead: a child process allocates and touches 1 GiB, and the test puts the profiler's used-memory
threshold (``Thresholds.mem_used_pct``) halfway between the host's use before and after it. Periodic GC is off
(``gc_interval_s`` 0) so that what reclaims the dead agent's blocks is the remedy.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt.config import load_config
from sutazai_hwopt.errors import StateError
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.memory import MemoryPoolManager
from sutazai_hwopt.testing import throwaway_namespace

from .test_daemon import wait_for

FORK = multiprocessing.get_context("fork")
MiB = 1024**2


@contextmanager
def sampling(svc: HostService, interval: float) -> Iterator[None]:
    """The daemon's sampler loop, on a thread."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                svc.tick()
            except StateError:
                return
            stop.wait(interval)

    t = threading.Thread(target=loop, name="test-sampler", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(60)


def _hold_and_exit(ns: str, q: Any) -> None:
    with MemoryPoolManager(namespace=ns) as m:
        for _ in range(8):
            bid = m.allocate_memory("doomed", 2 * MiB, pool_id="data")
            m.view("doomed", bid)[:] = b"d" * (2 * MiB)
        q.put("held")


def dead_agent(ns: str) -> None:
    q = FORK.Queue()
    p = FORK.Process(target=_hold_and_exit, args=(ns, q))
    p.start()
    assert q.get(timeout=60) == "held"
    p.join()
    q.close()
    q.join_thread()


def _config(ns: str, **eliminator: Any) -> Any:
    return load_config(mode="balanced", overrides={
        "cache": {"namespace": ns},
        "hardware": {"gc_interval_s": 0.0, "sample_interval_s": 0.2},
        "eliminator": {"validation_window_s": 1.0, "validation_interval_s": 0.2, **eliminator}})


def _action(svc: HostService, btype: str) -> dict[str, Any] | None:
    with svc._lock:
        return next((a for a in svc.actions if a.get("bottleneck_type") == btype), None)


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("remedysvc") as name:
        yield name


def test_memory_pressure_gets_the_pool_remedy_applied_and_validated(ns: str, tmp_path: Path) -> None:
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("data", size=64 * MiB)
        dead_agent(ns)
        assert pm.stats("data")["blocks_per_agent"]["doomed"] == 8
        svc = HostService(_config(ns, prediction_enabled=False), auto_fix=True, state_dir=str(tmp_path / "j"))
        hog = None
        try:
            svc.establish_baseline()
            before = svc.profiler.system_metrics()["memory"]
            total = float(before["total"])
            hog = subprocess.Popen([sys.executable, "-c", "import sys, time\nb = b'x' * (1 << 30)\n"
                                    "print('ready', flush=True)\ntime.sleep(600)"], stdout=subprocess.PIPE)
            assert hog.stdout is not None and hog.stdout.readline().strip() == b"ready"
            budget = float(before["used_percent"]) + 100.0 * (1 << 29) / total   # half the hog's GiB
            svc.profiler.thresholds = dataclasses.replace(svc.profiler.thresholds, mem_used_pct=budget)
            with sampling(svc, 0.2):
                wait_for(lambda: _action(svc, "memory_pressure") is not None,
                         "the service to act on memory pressure", 120)
            act = _action(svc, "memory_pressure")
            assert act is not None and act["auto"]
            first = act["outcomes"][0]
            assert first["action"]["name"] == "hook:pool.collect_dead"
            assert first["decision"] in ("kept", "rolled_back"), first
            assert first["before"]["memory.available"] > 0 and first["after"]["memory.available"] > 0
            assert first["results"][0]["agents"] == 1 and first["results"][0]["blocks"] == 8
            assert "doomed" not in pm.stats("data")["blocks_per_agent"] and pm.check("data")
        finally:
            svc.close()
            if hog is not None:
                hog.kill()
                hog.wait()
                if hog.stdout is not None:
                    hog.stdout.close()


def _filler(ns: str, stop: Any) -> None:
    """An agent filling the pool at a steady pace (1 MiB every 0.1 s, at most 120 MiB)."""
    with MemoryPoolManager(namespace=ns) as m:
        for _ in range(120):
            if stop.is_set():
                break
            bid = m.allocate_memory("filler", MiB, pool_id="data")
            m.view("filler", bid)[:] = b"f" * MiB
            stop.wait(0.1)
        stop.wait(600)


def test_predicted_pool_exhaustion_triggers_an_early_low_risk_remedy(ns: str, tmp_path: Path) -> None:
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("data", size=256 * MiB)
        dead_agent(ns)
        svc = HostService(_config(ns, prediction_enabled=True, prediction_horizon_s=86400.0), auto_fix=True,
                          state_dir=str(tmp_path / "j"))
        alerts: list[Any] = []
        svc.master.register_alert_callback(alerts.append)
        stop = FORK.Event()
        filler = FORK.Process(target=_filler, args=(ns, stop))
        try:
            svc.establish_baseline()
            filler.start()
            shown: list[dict[str, Any]] = []

            def predicted_on_dashboard() -> bool:
                data = svc.dashboard_data()
                if data["predictions"]["acting_on"]:
                    shown.append(data)
                return bool(shown)

            with sampling(svc, 0.2):
                wait_for(predicted_on_dashboard, "a predicted exhaustion on the dashboard", 120)
                wait_for(lambda: _action(svc, "memory_exhaustion_predicted") is not None,
                         "the service to act on the predicted exhaustion", 120)
            data = shown[0]
            finding = data["predictions"]["acting_on"][0]
            assert finding["type"] == "memory_exhaustion_predicted"
            assert finding["evidence"]["seconds_to_exhaustion"] < 86400.0
            assert any(b["type"] == "memory_exhaustion_predicted" for b in data["bottlenecks"].values())
            assert any(a.kind == "prediction" for a in alerts)
            act = _action(svc, "memory_exhaustion_predicted")
            assert act is not None
            ran = [o for o in act["outcomes"] if o["decision"] not in ("recommended",)]
            assert ran and all(o["action"]["risk"] == "low" for o in ran)
            assert ran[0]["action"]["name"] == "hook:pool.collect_dead"
            assert ran[0]["decision"] in ("kept", "rolled_back") and ran[0]["results"][0]["blocks"] == 8
            assert "doomed" not in pm.stats("data")["blocks_per_agent"] and pm.check("data")
        finally:
            stop.set()
            if filler.pid is not None:
                filler.join(60)
                if filler.is_alive():
                    filler.kill()
                    filler.join()
            svc.close()


def test_anomaly_score_is_shown_beside_the_finding_it_explains(ns: str, tmp_path: Path) -> None:
    """A leaking agent's finding carries its IsolationForest score (next to those of no idle agent)."""
    from sutazai_hwopt.profiler.faults import FaultAgent

    svc = HostService(_config(ns, anomaly_interval_s=1.0), state_dir=str(tmp_path / "j"))
    agents = {"leaker": FaultAgent("memory", params={"step_mb": 2, "period_s": 0.1, "max_mb": 1500}),
              "idle_0": FaultAgent("idle"), "idle_1": FaultAgent("idle")}
    try:
        for name, agent in agents.items():
            svc.register_agent(name, agent.pid, {"cpu_cores": 1, "priority": 5})
        svc.establish_baseline()
        agents["leaker"].start()
        seen: list[dict[str, Any]] = []

        def explained() -> bool:
            seen.extend(f for f in svc.bottlenecks().values()
                        if "leaker" in (f.get("agents") or []) and "anomaly_scores" in f)
            return bool(seen)

        with sampling(svc, 0.2):
            wait_for(explained, "a finding about the leaking agent with its anomaly score", 120)
        score = seen[0]["anomaly_scores"]["leaker"]
        assert 0.0 <= score <= 1.0
        assert svc.dashboard_data()["predictions"]["anomaly_scores"]
    finally:
        svc.close()
        for agent in agents.values():
            agent.stop()
