"""Eliminator actions change the kernel's state (checked with the OS) through the coordinator's journal,
and a validation that says "worse" puts the previous values back."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psutil
import pytest

from sutazai_hwopt import BottleneckEliminator, PerformanceProfiler
from sutazai_hwopt.profiler.faults import FaultAgent

OTHERS = "agents_except:hog:run_wait_ratio"


def register(coord: Any, agents: dict[str, FaultAgent]) -> None:
    coord.register_agent("hog", {"cpu_cores": 1, "priority": 2}, pid=agents["hog"].pid)
    coord.register_agent("other", {"cpu_cores": 1, "priority": 9}, pid=agents["other"].pid)


def run(elim: BottleneckEliminator, btype: str, metrics: dict[str, Any]) -> Any:
    return asyncio.run(elim.eliminate_bottleneck(btype, metrics))


def nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def test_renice_is_kept_when_others_wait_less(coord: Any, agents: dict[str, FaultAgent], scripted: Any) -> None:
    """high_cpu_usage: the background hog gets nice 10 (os.getpriority); undone by rollback_all."""
    register(coord, agents)
    hog = agents["hog"].pid
    elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True}, coordinator=coord,
                                metric_source=scripted([{OTHERS: 0.8}, {OTHERS: 0.1}]))
    res = run(elim, "high_cpu_usage", {"agents": ["hog"]})
    assert res.status == "resolved" and res.outcomes[0].action.name == "renice_background"
    assert nice(hog) == 10 and nice(agents["other"].pid) == 0
    assert [o.decision for o in res.outcomes[1:]] == ["recommended", "recommended"]
    elim.rollback_all()
    assert nice(hog) == 0


def test_made_it_worse_rolls_back(coord: Any, agents: dict[str, FaultAgent], scripted: Any) -> None:
    """Forced "worse" validation: the renice is undone and the kernel shows the original nice again."""
    register(coord, agents)
    hog = agents["hog"].pid
    seen: list[int] = []

    class Spy:
        """Reads the kernel between apply and the after-window: the change was really made."""

        def __init__(self) -> None:
            self.inner = scripted([{OTHERS: 0.5}, {OTHERS: 0.9}])

        async def measure(self, keys: Any, window_s: float) -> dict[str, float]:
            seen.append(nice(hog))
            return await self.inner.measure(keys, window_s)

    elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True}, coordinator=coord, metric_source=Spy())
    res = run(elim, "high_cpu_usage", {"agents": ["hog"]})
    assert seen == [0, 10]
    assert res.status == "not_resolved" and res.outcomes[0].decision == "rolled_back"
    assert "did not improve" in res.outcomes[0].reason
    assert nice(hog) == 0
    assert [e for e in coord.journal.active() if e.owner == "eliminator"] == []


def test_escalates_to_sched_batch_when_renice_does_not_help(coord: Any, agents: dict[str, FaultAgent],
                                                            scripted: Any) -> None:
    """balanced: renice rolled back, then SCHED_BATCH kept (os.sched_getscheduler), then undone."""
    register(coord, agents)
    hog = agents["hog"].pid
    src = scripted([{OTHERS: 0.8}, {OTHERS: 0.8}, {OTHERS: 0.8}, {OTHERS: 0.2}])
    elim = BottleneckEliminator({"mode": "balanced", "auto_fix": True}, coordinator=coord, metric_source=src)
    res = run(elim, "high_cpu_usage", {"agents": ["hog"]})
    assert [(o.action.name, o.decision) for o in res.outcomes] == [
        ("renice_background", "rolled_back"), ("sched_batch", "kept"), ("confine_hogs", "recommended")]
    assert os.sched_getscheduler(hog) == os.SCHED_BATCH and nice(hog) == 0
    elim.rollback_all()
    assert os.sched_getscheduler(hog) == os.SCHED_OTHER


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_aggressive_confines_hogs_to_fewer_cpus(coord: Any, agents: dict[str, FaultAgent], scripted: Any) -> None:
    """aggressive: after two unhelpful steps the hog is pinned to half the CPUs (os.sched_getaffinity)."""
    register(coord, agents)
    hog = agents["hog"].pid
    cpus = sorted(os.sched_getaffinity(0))
    src = scripted([{OTHERS: 0.8}, {OTHERS: 0.9}] * 2 + [{OTHERS: 0.8}, {OTHERS: 0.3}])
    elim = BottleneckEliminator({"mode": "aggressive", "auto_fix": True}, coordinator=coord, metric_source=src)
    res = run(elim, "high_cpu_usage", {"agents": ["hog"]})
    assert res.outcomes[-1].action.name == "confine_hogs" and res.outcomes[-1].decision == "kept"
    assert sorted(os.sched_getaffinity(hog)) == cpus[len(cpus) // 2:]
    assert os.sched_getscheduler(hog) == os.SCHED_OTHER and nice(hog) == 0
    elim.rollback_all()
    assert sorted(os.sched_getaffinity(hog)) == cpus


def test_ionice_for_an_io_thrasher(coord: Any, agents: dict[str, FaultAgent], scripted: Any) -> None:
    """io_thrashing: the writer's I/O class becomes best-effort 7 (psutil ionice), restored on rollback."""
    register(coord, agents)
    proc = psutil.Process(agents["hog"].pid)
    before = proc.ionice()
    elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True}, coordinator=coord,
                                metric_source=scripted([{"pressure.io.some": 60.0}, {"pressure.io.some": 20.0}]))
    res = run(elim, "io_thrashing", {"agents": ["hog"]})
    assert res.status == "resolved"
    now = proc.ionice()
    assert (now.ioclass, now.value) == (psutil.IOPRIO_CLASS_BE, 7)
    elim.rollback_all()
    assert tuple(proc.ionice()) == tuple(before)


def test_children_of_an_agent_are_changed_too(coord: Any, scripted: Any) -> None:
    """The profiler's view of an agent's children makes every process of the agent reniced."""
    burner = FaultAgent("cpu", seed=0, params={"procs": 2})
    try:
        coord.register_agent("hog", {"cpu_cores": 1, "priority": 1}, pid=burner.pid)
        burner.start()
        with PerformanceProfiler(coordinator=coord) as prof:
            for _ in range(200):  # bounded poll until the forked spinner is seen
                prof.sample()
                pids = prof.agent_profiles()["hog"]["pids"]
                if len(pids) == 2:
                    break
            assert len(pids) == 2
            elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True}, coordinator=coord,
                                        profiler=prof, metric_source=scripted([{OTHERS: 0.5}, {OTHERS: 0.1}]))
            res = run(elim, "high_cpu_usage", {"agents": ["hog"]})
            assert res.status == "resolved"
            assert [nice(p) for p in pids] == [10, 10]
            elim.rollback_all()
            assert [nice(p) for p in pids] == [0, 0]
    finally:
        burner.stop()


def test_a_dead_target_leaves_nothing_half_applied(coord: Any, agents: dict[str, FaultAgent],
                                                   scripted: Any) -> None:
    """One target pid has exited: the transaction is refused as a whole; the live agent is untouched."""
    register(coord, agents)
    gone = FaultAgent("idle")
    gone_pid = gone.pid
    gone.stop()
    profiles = {"hog": {"pid": agents["hog"].pid, "pids": [agents["hog"].pid, gone_pid], "alive": True}}
    elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True}, coordinator=coord,
                                metric_source=scripted([{OTHERS: 0.8}]))
    res = run(elim, "high_cpu_usage", {"agents": ["hog"], "agent_profiles": profiles})
    assert res.outcomes[0].decision == "failed" and "NotFoundError" in res.outcomes[0].reason
    assert nice(agents["hog"].pid) == 0
    assert [e for e in coord.journal.active() if e.owner == "eliminator"] == []


def test_validation_with_the_real_profiler_is_consistent(coord: Any, agents: dict[str, FaultAgent]) -> None:
    """With real measurements the verdict may go either way, but the kernel always matches the decision."""
    register(coord, agents)
    hog = agents["hog"].pid
    with PerformanceProfiler(coordinator=coord) as prof:
        elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True, "validation_window_s": 0.2,
                                     "validation_interval_s": 0.1}, coordinator=coord, profiler=prof)
        res = run(elim, "high_cpu_usage", {"agents": ["hog"]})
        first = res.outcomes[0]
        assert first.decision in ("kept", "rolled_back")
        assert nice(hog) == (10 if first.decision == "kept" else 0)
        assert first.before is not None and OTHERS in first.before
    elim.rollback_all()
    assert nice(hog) == 0
