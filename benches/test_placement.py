"""Planning and applying a placement for 131 real agent processes, next to the syscall loop a user would write.

    python -m pytest benches/test_placement.py --benchmark-only --benchmark-group-by=group

Figures are CPU time of this thread (``time.thread_time``); the journal's ``fsync`` shows in wall time only. Every
round changes every agent's priority so that each plan really changes ~250 values (affinity, nice, policy, ionice).

* ``placement: 131 agents``  ``coordinator.plan``, ``coordinator.apply`` (pin each pid by start time, probe, read
  previous values, journal + fsync, write, commit) and ``coordinator.rollback``, next to the anchors writing the
  same values: a bare ``os.sched_setaffinity``/``setpriority``/``sched_setscheduler`` + ioprio loop, a psutil loop,
  and ``taskset -p`` + ``renice`` subprocesses per agent (an admin script).
* ``placement: allocate, synthetic 2x32x2 host``  the allocator alone on a big synthetic topology.

The per-agent cgroup rows of docs/resources.md need root and v1 cgroups: ``python benches/bench_placement.py
--cgroups`` prints them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from sutazai_hwopt.config import HardwareConfig
from sutazai_hwopt.resources import AgentDemand, ResourcePoolCoordinator, Topology
from sutazai_hwopt.resources.allocation import allocate

IOCLASS = {"NONE": 0, "RT": 1, "BE": 2, "IDLE": 3}
POLICY = {"SCHED_OTHER": os.SCHED_OTHER, "SCHED_BATCH": os.SCHED_BATCH, "SCHED_IDLE": os.SCHED_IDLE}
CPU = {"timer": time.thread_time}
Values = dict[int, dict[str, Any]]


def raw_loop(vals: Values) -> None:
    for pid, v in vals.items():
        os.sched_setaffinity(pid, v["affinity"])
        os.setpriority(os.PRIO_PROCESS, pid, v["nice"])
        os.sched_setscheduler(pid, POLICY[v["sched_policy"]["policy"]], os.sched_param(0))
        io = v["ionice"]
        psutil._psplatform.cext.proc_ioprio_set(pid, IOCLASS[io["class"]], io["value"])  # type: ignore[attr-defined]


def psutil_loop(vals: Values) -> None:
    for pid, v in vals.items():
        p = psutil.Process(pid)
        p.cpu_affinity(list(v["affinity"]))
        p.nice(v["nice"])
        os.sched_setscheduler(pid, POLICY[v["sched_policy"]["policy"]], os.sched_param(0))
        io = v["ionice"]
        p.ionice(IOCLASS[io["class"]], io["value"] if io["class"] in ("BE", "RT") else None)


def shell_loop(vals: Values) -> None:
    for pid, v in vals.items():
        cpus = ",".join(map(str, v["affinity"]))
        subprocess.run(["taskset", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["renice", "-n", str(v["nice"]), "-p", str(pid)], check=True, stdout=subprocess.DEVNULL)


class Placement:
    """A coordinator over the sleepers whose next plan always changes values (priorities rotate every call)."""

    def __init__(self, pids: dict[str, int], state_dir: str) -> None:
        self.coord = ResourcePoolCoordinator(HardwareConfig(), state_dir=state_dir)
        self.ids = list(pids)
        self.round = 0
        for i, (aid, pid) in enumerate(pids.items()):
            self.coord.register_agent(aid, {"cpu_cores": 2, "priority": i % 11, "memory_mb": 256}, pid=pid)

    def next_plan(self) -> Any:
        self.round += 1
        for i, aid in enumerate(self.ids):
            self.coord.update_requirements(aid, {"cpu_cores": 2, "priority": (i + self.round) % 11,
                                                 "memory_mb": 256})
        return self.coord.plan("priority")


@pytest.fixture(scope="module")
def placement(sleepers: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Placement]:
    yield Placement(sleepers, str(tmp_path_factory.mktemp("placement")))


def values_of(plan: Any) -> Values:
    """pid -> {knob: value} of a plan's changes, so the anchors write exactly the same values."""
    out: Values = {}
    for ch in plan.changes:
        out.setdefault(ch.pid, {})[ch.knob] = ch.new
    return out


def originals(vals: Values) -> Values:
    return {pid: {"affinity": sorted(os.sched_getaffinity(pid)), "nice": 0, "sched_policy": {"policy": "SCHED_OTHER"},
                  "ionice": {"class": "NONE", "value": 0}} for pid in vals}


@pytest.mark.benchmark(group="placement: 131 agents", **CPU)
@pytest.mark.parametrize("contender", ["plan", "apply", "rollback", "raw os loop", "psutil loop",
                                       "taskset+renice"])
def test_placement(benchmark: Any, placement: Placement, contender: str, smoke: bool) -> None:
    rounds = 1 if smoke else (3 if contender == "taskset+renice" else 7)
    benchmark.extra_info.update(role="ours" if contender in ("plan", "apply", "rollback") else "anchor",
                                agents=len(placement.ids),
                                unit="CPU s for every agent's affinity, nice, policy, ionice")
    coord = placement.coord
    if contender == "plan":
        benchmark.pedantic(placement.next_plan, rounds=rounds)
    elif contender == "apply":
        benchmark.pedantic(coord.apply, setup=lambda: ((placement.next_plan(),), {}),
                           teardown=lambda *a: coord.rollback(), rounds=rounds)
    elif contender == "rollback":
        benchmark.pedantic(coord.rollback, setup=lambda: coord.apply(placement.next_plan()) and None,
                           rounds=rounds)
    else:
        vals = values_of(placement.next_plan())
        back = originals(vals)
        fn = {"raw os loop": raw_loop, "psutil loop": psutil_loop, "taskset+renice": shell_loop}[contender]
        benchmark.pedantic(fn, args=(vals,), teardown=lambda *a: raw_loop(back), rounds=rounds)
        raw_loop(back)


@pytest.mark.benchmark(group="placement: allocate, synthetic 2x32x2 host", **CPU)
def test_allocate_synthetic(benchmark: Any, run_rounds: Any) -> None:
    big = Topology.synthetic(nodes=2, cores_per_node=32, threads_per_core=2)
    demands = [AgentDemand(f"a{i}", i % 11, 2.0, 256, i) for i in range(131)]
    benchmark.extra_info.update(role="ours", unit="CPU s to allocate 131 agents (no kernel call)")
    run_rounds(lambda: allocate(big, demands, HardwareConfig()), rounds=15)
