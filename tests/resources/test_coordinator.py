"""Coordinator features: cgroups, verify/heal, load-based rebalancing, custom strategies, knob report."""

from __future__ import annotations

import os

import pytest

from sutazai_hwopt import errors
from sutazai_hwopt.config import HardwareConfig
from sutazai_hwopt.resources import (
    Allocation,
    Placement,
    ResourcePoolCoordinator,
    SchedSettings,
)
from sutazai_hwopt.resources.cgroups import detect_cgroups
from sutazai_hwopt.testing import FakeClock

# Restoring a lowered priority (and lowering one) needs CAP_SYS_NICE.
pytestmark = pytest.mark.root

CPUS = sorted(os.sched_getaffinity(0))


def _cg(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            out[c] = path
    return out


def test_knob_report_names_every_knob(coord, spawn):
    """knob_report() says available / not permitted / not available / disabled for each knob, with reasons."""
    p = spawn()
    report = coord.knob_report(pid=p.pid)
    assert report["affinity"]["status"] == "available"
    assert report["thp_disabled"]["status"] == "not available"
    for name in ("cgroup v1 cpu.shares", "cgroup v1 cpu.cfs_quota_us", "cgroup v1 cpuset.cpus",
                 "cgroup v2 cpu.max", "cgroup v2 cpu.weight", "cgroup v2 cpuset.cpus", "cgroup v2 memory.high"):
        assert report[name]["status"] in ("available", "not permitted", "not available", "disabled")
        assert report[name]["status"] == "available" or report[name]["reason"]


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def _v1_writable(ctrl: str) -> bool:
    h = detect_cgroups().v1(ctrl)
    return h is not None and h.writable() and os.geteuid() == 0


@pytest.mark.skipif(not (_v1_writable("cpu") and _v1_writable("cpuset")), reason="needs writable v1 cpu+cpuset")
def test_cgroup_v1_applied_and_rolled_back(state_dir, spawn):
    """With use_cgroups, agents move into per-agent v1 cpu/cpuset groups with shares/quota; rollback undoes all."""
    name = f"hwopt_test_{os.getpid()}"
    cfg = HardwareConfig(use_cgroups=True, cgroup_name=name)
    c = ResourcePoolCoordinator(cfg, state_dir=state_dir)
    procs = [spawn() for _ in range(3)]
    before = [_cg(p.pid) for p in procs]
    try:
        for i, p in enumerate(procs):
            c.register_agent(f"agent/{i}", {"cpu_cores": 1, "priority": [9, 5, 1][i]}, pid=p.pid)
        plan = c.rebalance_resources(strategy="priority")
        status = plan.knob_status()
        assert status["cgroup_member"] == {"applied": 6}
        for i, p in enumerate(procs):
            groups = _cg(p.pid)
            assert groups["cpu"] == groups["cpuset"] == f"/{name}/agent_{i}"
            d = f"/sys/fs/cgroup/cpu/{name}/agent_{i}"
            assert _read_int(f"{d}/cpu.shares") == plan.placements[f"agent/{i}"].weight
            quota = _read_int(f"{d}/cpu.cfs_quota_us")
            assert quota == -1 if plan.placements[f"agent/{i}"].exclusive else quota > 0
        # Re-planning the same thing changes nothing.
        again = c.rebalance_resources(strategy="priority")
        assert set(again.knob_status()["cgroup_file"]) == {"unchanged"}
        # Unregistering one agent moves it back and removes its groups; the others stay.
        c.unregister_agent("agent/2")
        assert _cg(procs[2].pid) == before[2]
        assert not os.path.exists(f"/sys/fs/cgroup/cpu/{name}/agent_2")
        assert _cg(procs[0].pid)["cpu"] == f"/{name}/agent_0"
        c.rollback()
        assert [_cg(p.pid) for p in procs] == before
        assert not os.path.exists(f"/sys/fs/cgroup/cpu/{name}")
        assert not os.path.exists(f"/sys/fs/cgroup/cpuset/{name}")
    finally:
        c.rollback()
        for p in procs:
            p.kill()
            p.wait()
        for ctrl in ("cpu", "cpuset"):
            base = f"/sys/fs/cgroup/{ctrl}/{name}"
            if os.path.isdir(base):
                for sub in os.listdir(base):
                    if os.path.isdir(f"{base}/{sub}"):
                        os.rmdir(f"{base}/{sub}")
                os.rmdir(base)


def test_verify_reports_drift_and_heal_repairs(coord, spawn, kstate):
    """verify() shows expected vs kernel value per knob and agent; heal() re-applies drifted ones."""
    p = spawn()
    coord.register_agent("a", {"priority": 2}, pid=p.pid)
    plan = coord.rebalance_resources(strategy="priority")
    assert not any(d.drifted for d in coord.verify())
    want = plan.settings["a"].nice
    os.setpriority(os.PRIO_PROCESS, p.pid, 19)          # someone renices the agent
    os.sched_setaffinity(p.pid, {CPUS[0]})              # and pins it
    drift = {d.knob: d for d in coord.verify() if d.drifted}
    assert drift["nice"].expected == want and drift["nice"].actual == 19 and drift["nice"].agent_id == "a"
    if len(CPUS) > 1:
        assert drift["affinity"].actual == [CPUS[0]]
    coord.heal()
    assert kstate(p.pid)[1] == want and kstate(p.pid)[0] == plan.placements["a"].cpus
    assert not any(d.drifted for d in coord.verify())
    assert coord.heal() is None


def test_load_based_uses_measured_load(state_dir, spawn):
    """rebalance(strategy='load_based') sizes agents from the load source and reports the oversubscription."""
    loads = {"busy": 1.0, "idle": 0.0}
    c = ResourcePoolCoordinator(HardwareConfig(exclusive_priority=5), state_dir=state_dir,
                                load_source=lambda agents: {a.agent_id: loads[a.agent_id] for a in agents})
    c.register_agent("busy", {"cpu_cores": 1, "priority": 5}, pid=spawn().pid)
    c.register_agent("idle", {"cpu_cores": 1, "priority": 1}, pid=spawn().pid)
    plan = c.rebalance_resources(strategy="load_based", dry_run=True)
    assert plan.placements["idle"].demand < 0.1
    assert plan.placements["busy"].demand == 1.0


def test_proc_sampler_with_fake_clock(state_dir, spawn):
    """The built-in sampler turns utime+stime deltas into cores over the (fake) clock delta."""
    from sutazai_hwopt.resources.strategies import ProcLoadSampler

    clock = FakeClock(100.0)
    c = ResourcePoolCoordinator(state_dir=state_dir, clock=clock)
    p = spawn()
    c.register_agent("a", {}, pid=p.pid)
    assert c.measure_loads() == {}  # first sample: no delta yet
    clock.advance(10.0)
    load = c.measure_loads()["a"]
    ticks = ProcLoadSampler.cpu_ticks(p.pid)
    assert ticks is not None and load == pytest.approx(0.0, abs=ticks / os.sysconf("SC_CLK_TCK") / 10 + 1e-9)


class OneCpuEach:
    """A custom allocator: every agent on the first allowed CPU, shared."""

    needs_load = False

    def allocate(self, topology, demands, config):
        cpu = min(topology.cpus)
        return Allocation({d.agent_id: Placement(d.agent_id, frozenset({cpu}), False, 0, 1.0, 1.0, 1024)
                           for d in demands}, shared_pool=frozenset({cpu}))


class Broken:
    needs_load = False

    def allocate(self, topology, demands, config):
        return Allocation({d.agent_id: Placement(d.agent_id, frozenset({10_000}), True, 0, 1.0, 1.0, 1)
                           for d in demands})


class NiceFive:
    def settings(self, demand, placement, config):
        return SchedSettings(nice=5)


def test_custom_allocator_and_scheduler(coord, spawn, kstate):
    """register_custom_allocator/scheduler plug strategies in; their output is applied."""
    coord.register_custom_allocator("first_cpu", OneCpuEach())
    coord.register_custom_scheduler("nice5", NiceFive())
    p = spawn()
    coord.register_agent("a", {}, pid=p.pid)
    coord.rebalance_resources(strategy="first_cpu", scheduler="nice5")
    assert kstate(p.pid)[:2] == (frozenset({CPUS[0]}), 5)
    assert "first_cpu" in coord.strategies()["allocators"]


class GpuAllocator(OneCpuEach):
    """Named by its ``name`` attribute when registered with one argument (the seed's form)."""

    name = "gpu"


def ml_scheduler(demand, placement, config):
    """A bare function: it has a ``__name__`` but no ``settings`` method, so it is not a Scheduler."""
    return SchedSettings(nice=7)


class MlScheduler:
    def settings(self, demand, placement, config):
        return SchedSettings(nice=7)


def test_custom_strategies_one_argument_form(coord, spawn, kstate):
    """The seed's register_custom_allocator(obj) / register_custom_scheduler(obj): the name comes from the object
    (``name``, else ``__name__``, else the class name), and the registered strategies are the ones applied."""
    assert coord.register_custom_allocator(GpuAllocator()) == "gpu"
    assert coord.register_custom_scheduler(MlScheduler()) == "MlScheduler"
    assert coord.register_custom_allocator("also_first_cpu", OneCpuEach()) == "also_first_cpu"   # two-arg form
    p = spawn()
    coord.register_agent("a", {}, pid=p.pid)
    plan = coord.rebalance_resources(strategy="gpu", scheduler="MlScheduler")
    assert plan.strategy == "gpu" and kstate(p.pid)[:2] == (frozenset({CPUS[0]}), 7)
    with pytest.raises(errors.AlreadyExistsError):
        coord.register_custom_allocator(GpuAllocator())
    with pytest.raises(errors.InvalidArgumentError, match="protocol"):
        coord.register_custom_scheduler(ml_scheduler)       # named "ml_scheduler", but not a Scheduler


def test_bad_custom_strategies_are_refused(coord, spawn, kstate):
    """A non-conforming strategy, a duplicate name, or an invalid allocation raise and change nothing."""
    with pytest.raises(errors.InvalidArgumentError, match="protocol"):
        coord.register_custom_allocator("x", object())
    with pytest.raises(errors.AlreadyExistsError):
        coord.register_custom_allocator("priority", OneCpuEach())
    coord.register_custom_allocator("broken", Broken())
    p = spawn()
    coord.register_agent("a", {}, pid=p.pid)
    before = kstate(p.pid)
    with pytest.raises(errors.InvalidArgumentError, match="broken"):
        coord.rebalance_resources(strategy="broken")
    with pytest.raises(errors.InvalidArgumentError, match="unknown"):
        coord.rebalance_resources(strategy="nope")
    assert kstate(p.pid) == before


def test_rebalance_with_dead_agent_changes_nothing(coord, spawn, kstate):
    """A plan whose agent died raises NotFoundError before writing; prune_dead() then lets it proceed."""
    live, dies = spawn(), spawn()
    coord.register_agent("live", {"priority": 1}, pid=live.pid)
    coord.register_agent("dies", {}, pid=dies.pid)
    before = kstate(live.pid)
    dies.kill()
    dies.wait()
    with pytest.raises(errors.NotFoundError, match="dies"):
        coord.rebalance_resources(strategy="priority")
    assert kstate(live.pid) == before
    coord.prune_dead()
    coord.rebalance_resources(strategy="priority")
    assert kstate(live.pid) != before


def test_unregister_restores_agent(coord, spawn, kstate):
    """unregister_agent() rolls back that agent's settings and keeps the others'."""
    a, b = spawn(), spawn()
    before_a = kstate(a.pid)
    coord.register_agent("a", {"priority": 0}, pid=a.pid)
    coord.register_agent("b", {"priority": 0}, pid=b.pid)
    coord.rebalance_resources(strategy="priority")
    changed_b = kstate(b.pid)
    coord.unregister_agent("a")
    assert kstate(a.pid) == before_a and kstate(b.pid) == changed_b


def test_realtime_requires_allow(state_dir):
    """scheduler_policy SCHED_FIFO without allow_realtime is a ConfigError."""
    with pytest.raises(errors.ConfigError, match="allow_realtime"):
        ResourcePoolCoordinator(HardwareConfig(scheduler_policy="SCHED_FIFO"), state_dir=state_dir)


def test_resize_in_place(coord, spawn, kstate):
    """update_requirements + rebalance changes a running agent's placement without restarting it."""
    if len(CPUS) < 2:
        pytest.skip("needs 2 CPUs")
    p = spawn()
    coord.register_agent("a", {"cpu_cores": 1, "priority": 9}, pid=p.pid)
    plan = coord.rebalance_resources(strategy="priority")
    assert plan.placements["a"].exclusive and len(kstate(p.pid)[0]) == 1
    coord.update_requirements("a", {"cpu_cores": 1, "priority": 3})
    plan = coord.rebalance_resources(strategy="priority")
    assert not plan.placements["a"].exclusive and kstate(p.pid)[0] == frozenset(CPUS)
    assert p.poll() is None


def test_verify_after_restart_uses_journal(state_dir, spawn, kstate):
    """A new coordinator verifies (and heals) what an earlier one applied, from the journal."""
    p = spawn()
    first = ResourcePoolCoordinator(state_dir=state_dir)
    first.register_agent("a", {"priority": 0}, pid=p.pid)
    plan = first.rebalance_resources(strategy="priority")
    os.setpriority(os.PRIO_PROCESS, p.pid, 0)
    fresh = ResourcePoolCoordinator(state_dir=state_dir)
    drift = [d for d in fresh.verify() if d.drifted]
    assert [(d.knob, d.agent_id, d.expected, d.actual) for d in drift] == [("nice", "a", plan.settings["a"].nice, 0)]
    fresh.heal()
    assert kstate(p.pid)[1] == plan.settings["a"].nice
    fresh.rollback()
    assert kstate(p.pid)[1] == 0
