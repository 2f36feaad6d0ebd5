"""Every key of the ``hardware`` and ``eliminator`` sections acts: one ``test_key__<section>__<key>`` each.

Each test writes the key into a configuration directory (the JSON file a user writes), resolves it with
:func:`~sutazai_hwopt.config.load_config` and observes what the part built from that configuration *does*: the
plan the coordinator computes or applies to a real process, what detection reports, what the eliminator keeps or
rolls back, which remedies the host service attaches, what the deployed daemon listens on and logs. Parts are
built directly from the configuration; only the daemon-only keys (``bind_host``, ``port``, ``log_dir``,
``log_level``) deploy one, once for the module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sutazai_hwopt import BottleneckEliminator, IntelligentCacheSystem
from sutazai_hwopt.config import SECTION_FILES, HwoptConfig, load_config
from sutazai_hwopt.errors import ConfigError
from sutazai_hwopt.host.runtime import RuntimeDir
from sutazai_hwopt.profiler import PerformanceProfiler
from sutazai_hwopt.resources import ResourcePoolCoordinator, Topology
from sutazai_hwopt.resources.cgroups import CgroupHierarchy, CgroupLayout
from sutazai_hwopt.resources.planning import Plan
from sutazai_hwopt.testing import FakeClock, throwaway_namespace

from .test_switches import _found, _predicted_per_access, cli

MiB = 1 << 20
#: two NUMA nodes of four single-thread cores: CPUs 0-3 on node 0, 4-7 on node 1 (plans only, never applied)
TOPO = Topology.synthetic(nodes=2, cores_per_node=4, threads_per_core=1, memory_per_node_mb=4096)


def configured(tmp_path: Path, *, mode: str | None = None, **sections: Mapping[str, Any]) -> HwoptConfig:
    """The configuration a user gets from a directory holding ``sections`` (section name -> its JSON file)."""
    d = tmp_path / f"conf{time.monotonic_ns()}"
    d.mkdir()
    for name, values in sections.items():
        (d / SECTION_FILES[name].FILE).write_text(json.dumps(values))
    return load_config(d, mode=mode)


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("keys") as name:
        yield name


# == hardware: detection ======================================================================================
def test_key__hardware__mode(tmp_path: Path) -> None:
    """The file's mode picks the preset: conservative reports memory stall time that aggressive tolerates."""
    stalled = {"pressure": {"memory": {"some": 9.0}}}
    assert "memory_pressure" in _found(configured(tmp_path, hardware={"mode": "conservative"}), stalled)
    aggressive = configured(tmp_path, hardware={"mode": "aggressive"})
    assert "memory_pressure" not in _found(aggressive, stalled)
    assert aggressive.eliminator.mode == "aggressive"        # the preset reaches every section


def test_key__hardware__max_cpu_usage(tmp_path: Path) -> None:
    busy = {"cpu": {"utilization": 45.0, "count": 2}, "pressure": {"cpu": {"some": 30.0}}}
    assert "high_cpu_usage" in _found(configured(tmp_path, hardware={"max_cpu_usage": 0.85}), busy)
    assert "high_cpu_usage" not in _found(configured(tmp_path, hardware={"max_cpu_usage": 100}), busy)


def test_key__hardware__max_memory_usage(tmp_path: Path) -> None:
    used = {"memory": {"used_percent": 80.0}}
    assert "memory_pressure" in _found(configured(tmp_path, hardware={"max_memory_usage": 0.75}), used)
    assert "memory_pressure" not in _found(configured(tmp_path, hardware={"max_memory_usage": 85}), used)


def test_key__hardware__sample_interval_s(tmp_path: Path) -> None:
    """The profiler's analysis takes one pass per period: 0.1 s at 0.05 s is three passes, at 1 s one."""
    for interval, passes in ((0.05, 3), (1.0, 1)):
        done: list[int] = []

        def progress(i: int, n: int, _done: list[int] = done) -> None:
            _done.append(n)

        with PerformanceProfiler(agents={}, config=configured(
                tmp_path, hardware={"sample_interval_s": interval})) as prof:
            asyncio.run(prof.run_comprehensive_analysis(0.1, progress=progress))
        assert done[-1] == len(done) == passes


# == hardware: the namespace the host service creates, agents' caches and pools =================================
def test_key__hardware__cache_size_mb(tmp_path: Path, ns: str) -> None:
    """L2 + L3 are fitted into cache_size_mb, L3 giving way: 3 + 4 MiB asked in 4 MiB leaves L3 1 MiB."""
    from sutazai_hwopt.host.namespace import OwnedNamespace

    config = configured(tmp_path, hardware={"cache_size_mb": 4, "shared_memory_size_mb": 1},
                        cache={"namespace": ns, "l2_size": 3 * MiB, "l3_size": 4 * MiB, "enable_prefetch": False})
    owned = OwnedNamespace(config)
    try:
        with IntelligentCacheSystem({"namespace": ns, "enable_prefetch": False}) as agent:
            levels = agent.stats()["levels"]
            assert (levels["L2"]["budget"], levels["L3"]["budget"]) == (3 * MiB, MiB)
    finally:
        owned.close()


def test_key__hardware__shared_memory_size_mb(tmp_path: Path, ns: str) -> None:
    """The default pools the host service creates hold shared_memory_size_mb, and a pool made without a size too."""
    from sutazai_hwopt.host.namespace import OwnedNamespace
    from sutazai_hwopt.memory import MemoryPoolManager

    config = configured(tmp_path, hardware={"shared_memory_size_mb": 3, "cache_size_mb": 1},
                        cache={"namespace": ns, "l2_size": 0, "l3_size": 0, "enable_prefetch": False})
    owned = OwnedNamespace(config)
    try:
        with MemoryPoolManager(ns, config=config) as pm:
            assert pm.stats("default")["capacity"] == 3 * MiB
            pm.put_bytes("agent_a", bytes(2 * MiB))          # more than a 1 MiB pool would hold
            pm.create_pool("mine")
            assert pm.stats("mine")["capacity"] == 3 * MiB
    finally:
        owned.close()


def test_key__hardware__prefetch_depth(tmp_path: Path, ns: str) -> None:
    """hardware.prefetch_depth (the reference config's name) is how many keys the prefetcher predicts."""
    config = configured(tmp_path, hardware={"prefetch_depth": 4},
                        cache={"namespace": ns, "l1_size": MiB, "l2_size": MiB, "l3_size": 0,
                               "prefetch_inline": True, "prefetch_mode": "always"})
    with IntelligentCacheSystem(config) as cache:
        assert _predicted_per_access(cache) == 4


def test_key__hardware__grant_grace_s(tmp_path: Path, ns: str) -> None:
    """A block granted to an agent that never attaches is reclaimed once grant_grace_s has passed (0: at once)."""
    from sutazai_hwopt.memory import MemoryPoolManager

    for grace, reclaimed in ((0.0, 1), (300.0, 0)):
        with MemoryPoolManager(ns, config=configured(tmp_path, hardware={"grant_grace_s": grace})) as pm:
            pm.create_pool(f"p{int(grace)}", size=MiB)
            bid = pm.put_bytes("owner", b"g" * 4096, pool_id=f"p{int(grace)}")
            pm.share_memory("owner", "never_attached", bid)
            pm.free_memory("owner", bid)                        # only the grant holds it now
            assert pm.collect_garbage()["blocks"] == reclaimed


class _Memory:
    """A namespace's pools as the upkeep sees them: counts the collections."""

    def __init__(self) -> None:
        self.collections = 0

    def collect_garbage(self) -> dict[str, int]:
        self.collections += 1
        return {"agents": 0, "blocks": 0}

    def trim(self) -> int:
        return 0


class _Profiler:
    """Records the upkeep's prediction calls (anomaly scoring or not)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def predict(self, window: int, *, anomalies: bool = False) -> dict[str, Any]:
        self.calls.append(anomalies)
        return {}


def _upkeep(config: HwoptConfig, ns: str, clock: FakeClock) -> Any:
    """The host service's periodic work (:class:`~sutazai_hwopt.host.upkeep.Upkeep`) over stand-ins."""
    from sutazai_hwopt.host.upkeep import Upkeep

    service = SimpleNamespace(
        config=config, coordinator=SimpleNamespace(agents=lambda: []), profiler=_Profiler(),
        master=SimpleNamespace(memory=_Memory(), memory_namespace=ns, _alert=lambda *a, **k: None),
        eliminator=BottleneckEliminator(config))
    return Upkeep(service, clock=clock)


def test_key__hardware__gc_interval_s(tmp_path: Path, ns: str) -> None:
    """The host service collects dead agents' memory every gc_interval_s; 0 never."""
    for interval, expected in ((10.0, [1, 1, 2, 3]), (0.0, [0, 0, 0, 0])):
        clock = FakeClock()
        upkeep = _upkeep(configured(tmp_path, hardware={"gc_interval_s": interval}), ns, clock)
        try:
            seen = []
            for t in (0.0, 5.0, 10.0, 25.0):
                clock.advance(t - clock())
                upkeep.collect_if_due()
                seen.append(upkeep.service.master.memory.collections)
            assert seen == expected
        finally:
            upkeep.close()


# == hardware: placement =======================================================================================
def plan(tmp_path: Path, hardware: Mapping[str, Any], agents: Mapping[str, tuple[int, float]],
         topology: Topology = TOPO) -> Plan:
    """The coordinator's plan (nothing applied) for ``agents`` (id -> (priority, cores)) under ``hardware``."""
    config = configured(tmp_path, hardware=hardware)
    with ResourcePoolCoordinator(config, topology=topology, state_dir=str(tmp_path / "journal"), gpu=False) as c:
        for aid, (priority, cores) in agents.items():
            c.register_agent(aid, {"priority": priority, "cpu_cores": cores}, pid=os.getpid())
        return c.plan("priority")


def knobs(p: Plan, agent: str) -> dict[str, Any]:
    """Knob -> value the plan sets on ``agent``'s process."""
    return {c.knob: c.new for c in p.changes if c.agent_id == agent and c.pid is not None}


def test_key__hardware__enable_numa(tmp_path: Path) -> None:
    """With NUMA on, each shared agent runs on one node's CPUs; off, on the whole shared pool."""
    two = {"a": (1, 2.0), "b": (1, 2.0)}
    on = plan(tmp_path, {"affinity_strategy": "shared", "enable_numa": True}, two)
    assert {frozenset(p.cpus) for p in on.placements.values()} == {frozenset(range(4)), frozenset(range(4, 8))}
    off = plan(tmp_path, {"affinity_strategy": "shared", "enable_numa": False}, two)
    assert all(p.cpus == TOPO.cpus and p.numa_node is None for p in off.placements.values())


def test_key__hardware__enable_transparent_hugepages(tmp_path: Path) -> None:
    assert knobs(plan(tmp_path, {"enable_transparent_hugepages": True}, {"a": (5, 1.0)}), "a")["thp_disabled"] \
        is False
    assert "thp_disabled" not in knobs(plan(tmp_path, {"enable_transparent_hugepages": False}, {"a": (5, 1.0)}), "a")


def test_key__hardware__allow_realtime(tmp_path: Path) -> None:
    """SCHED_FIFO is refused without allow_realtime; with it, an agent on exclusive cores runs real-time."""
    with pytest.raises(ConfigError, match="allow_realtime"):
        plan(tmp_path, {"scheduler_policy": "SCHED_FIFO", "allow_realtime": False}, {})
    p = plan(tmp_path, {"scheduler_policy": "SCHED_FIFO", "allow_realtime": True}, {"hi": (9, 1.0), "lo": (1, 1.0)})
    assert knobs(p, "hi")["sched_policy"] == {"policy": "SCHED_FIFO", "priority": 81}
    assert knobs(p, "lo")["sched_policy"]["policy"] == "SCHED_OTHER"     # never on shared cores


def test_key__hardware__affinity_strategy(tmp_path: Path) -> None:
    agents = {"hi": (9, 1.0), "lo": (1, 1.0)}
    static = plan(tmp_path, {"affinity_strategy": "static"}, agents)
    assert static.placements["hi"].exclusive and not static.placements["lo"].exclusive
    shared = plan(tmp_path, {"affinity_strategy": "shared"}, agents)
    assert not any(p.exclusive for p in shared.placements.values()) and "affinity" in knobs(shared, "hi")
    assert "affinity" not in knobs(plan(tmp_path, {"affinity_strategy": "none"}, agents), "hi")


def test_key__hardware__manage_ionice(tmp_path: Path) -> None:
    assert knobs(plan(tmp_path, {"manage_ionice": True}, {"a": (3, 1.0)}), "a")["ionice"] == {"class": "BE",
                                                                                               "value": 5}
    assert "ionice" not in knobs(plan(tmp_path, {"manage_ionice": False}, {"a": (3, 1.0)}), "a")


def test_key__hardware__idle_priority_max(tmp_path: Path) -> None:
    """Agents at or below idle_priority_max get SCHED_IDLE and the idle I/O class."""
    agents = {"p1": (1, 1.0), "p2": (2, 1.0)}
    p = plan(tmp_path, {"idle_priority_max": 1, "manage_ionice": True}, agents)
    assert knobs(p, "p1")["sched_policy"]["policy"] == "SCHED_IDLE" and knobs(p, "p1")["ionice"]["class"] == "IDLE"
    assert knobs(p, "p2")["sched_policy"]["policy"] == "SCHED_OTHER"
    none = plan(tmp_path, {"idle_priority_max": -1}, agents)
    assert knobs(none, "p1")["sched_policy"]["policy"] == "SCHED_OTHER"


def _exclusive(p: Plan) -> set[str]:
    return {a for a, pl in p.placements.items() if pl.exclusive}


def test_key__hardware__exclusive_pool_fraction(tmp_path: Path) -> None:
    """Of 8 cores, a fraction of 0.25 gives 2 exclusively (the third high-priority agent is demoted)."""
    agents = {"a": (9, 1.0), "b": (9, 1.0), "c": (9, 1.0)}
    assert _exclusive(plan(tmp_path, {"exclusive_pool_fraction": 0.25}, agents)) == {"a", "b"}
    assert _exclusive(plan(tmp_path, {"exclusive_pool_fraction": 0.5}, agents)) == {"a", "b", "c"}


def test_key__hardware__shared_pool_min_cores(tmp_path: Path) -> None:
    agents = {"a": (9, 2.0), "b": (9, 2.0), "c": (9, 2.0)}
    assert _exclusive(plan(tmp_path, {"exclusive_pool_fraction": 1.0, "shared_pool_min_cores": 4}, agents)) \
        == {"a", "b"}
    roomy = plan(tmp_path, {"exclusive_pool_fraction": 1.0, "shared_pool_min_cores": 1}, agents)
    assert _exclusive(roomy) == {"a", "b", "c"} and len(roomy.allocation.shared_pool) == 2


def test_key__hardware__exclusive_priority(tmp_path: Path) -> None:
    assert _exclusive(plan(tmp_path, {"exclusive_priority": 7}, {"a": (7, 1.0)})) == {"a"}
    assert _exclusive(plan(tmp_path, {"exclusive_priority": 8}, {"a": (7, 1.0)})) == set()


def test_key__hardware__oversubscription(tmp_path: Path) -> None:
    """16 cores asked of an 8-core shared pool: permitted 1.0 halves every quota, 2.0 leaves them."""
    agents = {f"a{i}": (1, 4.0) for i in range(4)}
    tight = plan(tmp_path, {"affinity_strategy": "shared", "enable_numa": False, "oversubscription": 1.0}, agents)
    assert {p.quota for p in tight.placements.values()} == {2.0} and tight.warnings
    loose = plan(tmp_path, {"affinity_strategy": "shared", "enable_numa": False, "oversubscription": 2.0}, agents)
    assert {p.quota for p in loose.placements.values()} == {4.0} and not loose.warnings


def _fake_cgroup_topology(tmp_path: Path) -> Topology:
    """TOPO with a writable v1 ``cpu`` hierarchy in a temporary directory (the plan only names paths in it)."""
    mount = tmp_path / "cgroup-cpu"
    mount.mkdir(exist_ok=True)
    layout = CgroupLayout((CgroupHierarchy(1, str(mount), frozenset({"cpu", "cpuacct"})),))
    return dataclasses.replace(TOPO, cgroups=layout)


def _cgroup_dirs(p: Plan) -> set[str]:
    return {c.path for c in p.changes if c.knob == "cgroup_dir" and c.path}


def test_key__hardware__use_cgroups(tmp_path: Path) -> None:
    topo = _fake_cgroup_topology(tmp_path)
    on = plan(tmp_path, {"use_cgroups": True}, {"a": (5, 1.0)}, topo)
    assert _cgroup_dirs(on) and any(c.knob == "cgroup_member" for c in on.changes)
    assert not _cgroup_dirs(plan(tmp_path, {"use_cgroups": False}, {"a": (5, 1.0)}, topo))


def test_key__hardware__cgroup_name(tmp_path: Path) -> None:
    topo = _fake_cgroup_topology(tmp_path)
    p = plan(tmp_path, {"use_cgroups": True, "cgroup_name": "fleet_x"}, {"a": (5, 1.0)}, topo)
    mount = str(tmp_path / "cgroup-cpu")
    assert _cgroup_dirs(p) == {f"{mount}/fleet_x", f"{mount}/fleet_x/a"}


# -- applied to a real process ---------------------------------------------------------------------------------
def _kernel(pid: int) -> tuple[int, int]:
    return os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK


def applied(tmp_path: Path, hardware: Mapping[str, Any], priority: int, pid: int) -> tuple[int, int]:
    """(nice, policy) of ``pid`` after the coordinator built from ``hardware`` placed it; rolled back after."""
    config = configured(tmp_path, hardware=hardware)
    with ResourcePoolCoordinator(config, state_dir=str(tmp_path / "journal"), gpu=False) as c:
        c.register_agent("agent", {"priority": priority}, pid=pid)
        try:
            c.rebalance_resources("priority")
            return _kernel(pid)
        finally:
            c.rollback()
            assert _kernel(pid) == (0, os.SCHED_OTHER)


def test_key__hardware__scheduler_policy(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    assert applied(tmp_path, {"scheduler_policy": "SCHED_BATCH"}, 5, sleeper.pid)[1] == os.SCHED_BATCH
    assert applied(tmp_path, {"scheduler_policy": "SCHED_OTHER"}, 5, sleeper.pid)[1] == os.SCHED_OTHER


def test_key__hardware__manage_nice(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    assert applied(tmp_path, {"manage_nice": True, "nice_max": 7}, 0, sleeper.pid)[0] == 7
    assert applied(tmp_path, {"manage_nice": False, "nice_max": 7}, 0, sleeper.pid)[0] == 0


def test_key__hardware__nice_max(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Priority 0 gets nice_max."""
    assert applied(tmp_path, {"nice_min": 0, "nice_max": 12}, 0, sleeper.pid)[0] == 12
    assert applied(tmp_path, {"nice_min": 0, "nice_max": 3}, 0, sleeper.pid)[0] == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="a negative nice needs CAP_SYS_NICE")
def test_key__hardware__nice_min(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Priority 10 gets nice_min."""
    assert applied(tmp_path, {"nice_min": -7, "nice_max": 10}, 10, sleeper.pid)[0] == -7
    assert applied(tmp_path, {"nice_min": 2, "nice_max": 10}, 10, sleeper.pid)[0] == 2


def test_key__hardware__state_dir(tmp_path: Path, sleeper: subprocess.Popen[bytes],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal lives in state_dir: a coordinator of the same configuration (after a crash) rolls back what
    another one applied; one with another state_dir knows nothing of it."""
    from sutazai_hwopt.resources.transactions import Change

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))   # the default, should the key be ignored

    journal = tmp_path / "journal-here"
    journal.mkdir(mode=0o700)
    config = configured(tmp_path, hardware={"state_dir": str(journal)})
    first = ResourcePoolCoordinator(config, gpu=False)
    first.apply_change(Change("nice", 6, pid=sleeper.pid, reason="test"))
    first.close()                                               # as if its process died: nothing rolled back
    assert _kernel(sleeper.pid)[0] == 6 and any(journal.iterdir())
    other = tmp_path / "journal-elsewhere"
    other.mkdir(mode=0o700)
    with ResourcePoolCoordinator(configured(tmp_path, hardware={"state_dir": str(other)}), gpu=False) as c:
        assert not c.rollback()
    assert _kernel(sleeper.pid)[0] == 6
    with ResourcePoolCoordinator(config, gpu=False) as c:
        assert c.rollback()
    assert _kernel(sleeper.pid)[0] == 0


# -- the deployed daemon: bind_host, port, log_dir, log_level -------------------------------------------------
def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One daemon deployed with a configuration file naming bind_host, port, log_dir and log_level=WARNING.

    Its namespace already holds an L2 tier of another size, so the daemon has a WARNING to log (and its INFO
    lines, such as "namespace ... owned", are left out). Stopped and purged afterwards.
    """
    from sutazai_hwopt.cache.shared_index import SharedTier

    base = tmp_path_factory.mktemp("deployed")
    host, logs, rt = "127.0.0.2", base / "logs", base / "rt"
    port = _free_port(host)
    env = {k: v for k, v in os.environ.items() if k != "SUTAZAI_HWOPT_RUNTIME_DIR"}
    with throwaway_namespace("keysd") as ns:
        SharedTier(ns, "l2", 2 * MiB).close()
        conf = base / "conf"
        conf.mkdir()
        (conf / "hardware_optimization.json").write_text(json.dumps({
            "bind_host": host, "port": port, "log_dir": str(logs), "log_level": "WARNING",
            "shared_memory_size_mb": 1, "cache_size_mb": 1}))
        (conf / "cache_system.json").write_text(json.dumps({"namespace": ns, "l2_size": MiB, "l3_size": 0,
                                                             "enable_prefetch": False}))
        try:
            run = cli("deploy", "--config", str(conf), "--runtime-dir", str(rt), "--namespace", ns,
                       "--mode", "conservative", env=env)
            assert run.returncode == 0, run.stderr
            yield {"host": host, "port": port, "logs": logs, "namespace": ns,
                   "endpoint": RuntimeDir(rt).read_endpoint()}
        finally:
            if RuntimeDir(rt).running() is not None:
                assert cli("stop", "--runtime-dir", str(rt), "--purge", env=env).returncode == 0


def test_key__hardware__bind_host(deployed: dict[str, Any]) -> None:
    assert deployed["endpoint"]["host"] == "127.0.0.2"
    with socket.create_connection(("127.0.0.2", deployed["endpoint"]["port"]), timeout=10):
        pass


def test_key__hardware__port(deployed: dict[str, Any]) -> None:
    assert deployed["endpoint"]["port"] == deployed["port"]


def test_key__hardware__log_dir(deployed: dict[str, Any]) -> None:
    log = deployed["logs"] / "hardware_optimization.log"
    assert log.exists() and deployed["namespace"] in log.read_text()


def test_key__hardware__log_level(deployed: dict[str, Any]) -> None:
    text = (deployed["logs"] / "hardware_optimization.log").read_text()
    assert "already exists with" in text                      # the WARNING is written
    assert "owned" not in text and "listening" not in text    # the INFO lines are not


# == eliminator ================================================================================================
MEM = "memory.available"


class Windows:
    """A metric source: ``windows`` alternate before/after (key -> value; others read 1.0); records the asks."""

    def __init__(self, *windows: Mapping[str, float]) -> None:
        self.windows = list(windows)
        self.lengths: list[float] = []

    async def measure(self, keys: Sequence[str], window_s: float) -> dict[str, float]:
        self.lengths.append(window_s)
        w = self.windows.pop(0) if self.windows else {}
        return {k: float(w.get(k, 1.0)) for k in keys}


class Hooks:
    """Memory remedies that record being called: ``cache.shrink`` (low risk) and ``pool.compress`` (medium)."""

    def __init__(self, elim: BottleneckEliminator, names: Sequence[str] = ("cache.shrink",)) -> None:
        self.calls: list[str] = []
        self.undone: list[str] = []
        for name in names:
            elim.register_hook(name, lambda _n=name, **kw: self._call(_n), undo=self.undone.append)

    def _call(self, name: str) -> str:
        self.calls.append(name)
        return name


def eliminator(tmp_path: Path, source: Any = None, **keys: Any) -> BottleneckEliminator:
    return BottleneckEliminator(configured(tmp_path, eliminator=keys), metric_source=source or Windows())


def memory_pressure(elim: BottleneckEliminator) -> Any:
    return asyncio.run(elim.eliminate_bottleneck("memory_pressure", {}))


def test_key__eliminator__mode(tmp_path: Path) -> None:
    """A medium-risk remedy runs in the balanced mode, and is only recommended in the conservative one."""
    for mode, runs in (("balanced", True), ("conservative", False)):
        elim = eliminator(tmp_path, Windows({MEM: 1e9}, {MEM: 3e9}), mode=mode, auto_fix=True)
        hooks = Hooks(elim, ("pool.compress",))
        res = memory_pressure(elim)
        assert (hooks.calls == ["pool.compress"]) is runs
        assert res.status == ("resolved" if runs else "recommended")


def test_key__eliminator__auto_fix(tmp_path: Path) -> None:
    for auto, runs in ((True, True), (False, False)):
        elim = eliminator(tmp_path, Windows({MEM: 1e9}, {MEM: 3e9}), auto_fix=auto)
        hooks = Hooks(elim)
        assert (memory_pressure(elim).status == "resolved") is runs and bool(hooks.calls) is runs


def test_key__eliminator__rollback_threshold(tmp_path: Path) -> None:
    """Target better, I/O pressure up 40%: kept under a 50% threshold, rolled back under 10%."""
    for threshold, kept in ((0.5, True), (0.1, False)):
        src = Windows({MEM: 1e9, "pressure.io.some": 10.0}, {MEM: 3e9, "pressure.io.some": 14.0})
        elim = eliminator(tmp_path, src, auto_fix=True, rollback_threshold=threshold)
        hooks = Hooks(elim)
        assert memory_pressure(elim).outcomes[0].decision == ("kept" if kept else "rolled_back")
        assert bool(hooks.undone) is not kept


def test_key__eliminator__min_improvement(tmp_path: Path) -> None:
    """Available memory up 20%: enough when 10% is asked, rolled back when 50% is."""
    for least, kept in ((0.1, True), (0.5, False)):
        elim = eliminator(tmp_path, Windows({MEM: 1e9}, {MEM: 1.2e9}), auto_fix=True, min_improvement=least)
        hooks = Hooks(elim)
        assert memory_pressure(elim).outcomes[0].decision == ("kept" if kept else "rolled_back")
        assert bool(hooks.undone) is not kept


def test_key__eliminator__validation_window_s(tmp_path: Path) -> None:
    src = Windows({MEM: 1e9}, {MEM: 3e9})
    elim = eliminator(tmp_path, src, auto_fix=True, validation_window_s=7.5)
    Hooks(elim)
    memory_pressure(elim)
    assert src.lengths == [7.5, 7.5]                          # before and after the action


class _Sampled:
    """A profiler whose passes are counted (what the eliminator's own validation windows sample)."""

    def __init__(self) -> None:
        self.passes = 0

    def sample(self) -> Any:
        self.passes += 1
        return SimpleNamespace(system_metrics={"memory": {"available": 1e9 * self.passes}}, agent_profiles={})

    def agent_profiles(self, n: int) -> dict[str, Any]:
        return {}


def test_key__eliminator__validation_interval_s(tmp_path: Path) -> None:
    """A 1 s window is sampled every validation_interval_s: 4 passes at 0.25 s, 2 at 0.5 s (plus one to re-base)."""
    for interval, passes in ((0.25, 4), (0.5, 2)):
        steps: list[float] = []

        async def sleep(s: float, _steps: list[float] = steps) -> None:
            _steps.append(s)

        prof = _Sampled()
        elim = BottleneckEliminator(configured(tmp_path, eliminator={
            "auto_fix": True, "validation_window_s": 1.0, "validation_interval_s": interval}),
            profiler=prof, sleep=sleep)
        Hooks(elim)
        memory_pressure(elim)
        assert prof.passes == 2 * (passes + 1) and steps == [interval] * (2 * passes)


def test_key__eliminator__prediction_enabled(tmp_path: Path) -> None:
    soon = {"memory": {"seconds": 10.0}}
    on = eliminator(tmp_path, Windows({MEM: 1e9}, {MEM: 3e9}), prediction_enabled=True, auto_fix=True)
    hooks = Hooks(on)
    assert on.predicted_bottlenecks(soon) == ["memory_exhaustion_predicted"]
    assert asyncio.run(on.eliminate_bottleneck("memory_exhaustion_predicted", {})).status == "resolved"
    assert hooks.calls == ["cache.shrink"]
    off = eliminator(tmp_path, prediction_enabled=False, auto_fix=True)
    hooks = Hooks(off)
    assert off.predicted_bottlenecks(soon) == []
    assert asyncio.run(off.eliminate_bottleneck("memory_exhaustion_predicted", {})).status == "skipped"
    assert hooks.calls == []


def test_key__eliminator__prediction_horizon_s(tmp_path: Path) -> None:
    in_100s = {"memory": {"seconds": 100.0}}
    assert eliminator(tmp_path, prediction_horizon_s=200).predicted_bottlenecks(in_100s) == [
        "memory_exhaustion_predicted"]
    assert eliminator(tmp_path, prediction_horizon_s=50).predicted_bottlenecks(in_100s) == []


def test_key__eliminator__audit_size(tmp_path: Path) -> None:
    """The audit keeps the newest audit_size decisions."""
    elim = eliminator(tmp_path, audit_size=3, auto_fix=False)
    Hooks(elim)
    for _ in range(5):
        memory_pressure(elim)                                   # one "recommended" decision each
    audit = elim.audit_log()
    assert len(audit) == 3 and all(e["decision"] == "recommended" for e in audit)


def _agents_coordinator(tmp_path: Path, config: HwoptConfig, **pids: int) -> ResourcePoolCoordinator:
    c = ResourcePoolCoordinator(config, state_dir=str(tmp_path / f"journal{time.monotonic_ns()}"), gpu=False)
    for aid, pid in pids.items():
        c.register_agent(aid, {"priority": 2}, pid=pid)
    return c


def test_key__eliminator__background_nice(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A background CPU hog is reniced to background_nice (and back when undone)."""
    config = configured(tmp_path, eliminator={"auto_fix": True, "background_nice": 13})
    with _agents_coordinator(tmp_path, config, hog=sleeper.pid) as coord:
        target = "agents_except:hog:run_wait_ratio"
        elim = BottleneckEliminator(config, coordinator=coord,
                                    metric_source=Windows({target: 0.8}, {target: 0.1}))
        res = asyncio.run(elim.eliminate_bottleneck("high_cpu_usage", {"agents": ["hog"]}))
        assert res.status == "resolved" and res.outcomes[0].action.name == "renice_background"
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 13
        elim.rollback_all()
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 0


def test_key__eliminator__boost_nice(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """A starved agent is boosted to boost_nice (a medium-risk action, allowed in the balanced mode)."""
    config = configured(tmp_path, eliminator={"auto_fix": True, "mode": "balanced", "boost_nice": -3})
    with _agents_coordinator(tmp_path, config, victim=sleeper.pid) as coord:
        target = "agents:victim:run_wait_ratio"
        elim = BottleneckEliminator(config, coordinator=coord,
                                    metric_source=Windows({target: 0.8}, {target: 0.1}))
        if os.geteuid() != 0:       # lowering nice needs CAP_SYS_NICE: the proposed change shows the value
            [action] = elim.recommend("cpu_starvation", {"agents": ["victim"]})
            assert [c.new for c in action.changes] == [-3]
            return
        res = asyncio.run(elim.eliminate_bottleneck("cpu_starvation", {"agents": ["victim"]}))
        assert res.status == "resolved" and res.outcomes[0].action.name == "boost_starved"
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == -3
        elim.rollback_all()
        assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == 0


def _providers(config: HwoptConfig, namespace: str, pid_of: Any = lambda agent: None) -> list[Any]:
    """The remedy providers the host service attaches for ``config``."""
    from sutazai_hwopt.eliminator.providers import host_providers

    return host_providers(config, memory=None, namespace=namespace, pid_of=pid_of)


def _hooks(providers: list[Any]) -> dict[str, Any]:
    return {name: fn for p in providers for name, fn in p.hooks().items()}


def test_key__eliminator__restart_leaking_agents(tmp_path: Path, ns: str) -> None:
    """With the operator's consent, a leaking agent may be restarted (SIGTERM for its supervisor); without, the
    restart is only advised."""
    leaky = subprocess.Popen(["sleep", "600"])
    try:
        for consent in (False, True):
            config = configured(tmp_path, eliminator={"restart_leaking_agents": consent, "mode": "aggressive",
                                                            "auto_fix": True})
            providers = _providers(config, ns, pid_of=lambda agent: leaky.pid)
            try:
                elim = BottleneckEliminator(config)
                for p in providers:
                    elim.attach_provider(p)
                [restart] = [a for a in elim.recommend("memory_leak", {"agents": ["leaky"],
                                                                       "agent_pids": {"leaky": leaky.pid}})
                             if a.name == "restart_agent"]
                assert elim.allowed(restart) is consent and restart.advisory is not consent
                if consent:
                    _hooks(providers)["agent.restart"](agent="leaky")
                    assert leaky.wait(timeout=30) == -15
                else:
                    assert "agent.restart" not in _hooks(providers)
            finally:
                for p in providers:
                    p.close()
    finally:
        if leaky.poll() is None:
            leaky.kill()
        leaky.wait()


def test_key__eliminator__cache_shrink_fraction(tmp_path: Path, ns: str) -> None:
    """cache.shrink evicts cache_shrink_fraction of the shared tier's entries."""
    config = configured(tmp_path, eliminator={"cache_shrink_fraction": 0.25},
                        cache={"namespace": ns, "l1_size": 0, "l2_size": 2 * MiB, "l3_size": 0,
                               "enable_prefetch": False})
    with IntelligentCacheSystem(config) as cache:
        for i in range(40):
            cache.put(f"k{i}", bytes(100))
        providers = _providers(config, ns)
        try:
            tier = next(p for p in providers if hasattr(p, "shrink_cache"))
            assert len(tier.tiers()["l2"].index) == 40
            result = _hooks(providers)["cache.shrink"]()
            assert result.details["evicted"] == {"l2": 10} and len(tier.tiers()["l2"].index) == 30
        finally:
            for p in providers:
                p.close()


def _balancer_table(name: str) -> Any:
    from sutazai_hwopt.balancer.shared import SharedState

    return SharedState.create(name)


def test_key__eliminator__balancer_table(tmp_path: Path, ns: str) -> None:
    """balancer.drain publishes its ejection in the table named balancer_table, not the cache namespace's."""
    table = _balancer_table(ns)
    try:
        config = configured(tmp_path, eliminator={"balancer_table": ns})
        providers = _providers(config, "keys-not-this-one")
        try:
            assert table.ejected_until("b1") == 0
            _hooks(providers)["balancer.drain"](backend="b1")
            assert table.ejected_until("b1") > time.monotonic()
        finally:
            for p in providers:
                p.close()
    finally:
        table.close()


def test_key__eliminator__drain_s(tmp_path: Path, ns: str) -> None:
    """A drained backend is ejected host-wide for drain_s."""
    table = _balancer_table(ns)
    try:
        config = configured(tmp_path, eliminator={"balancer_table": ns, "drain_s": 90.0})
        providers = _providers(config, ns)
        try:
            before = time.monotonic()
            result = _hooks(providers)["balancer.drain"](backend="b1")
            after = time.monotonic()
            assert before + 90.0 <= table.ejected_until("b1") <= after + 90.0
            assert result.details["drained_for_s"] == 90.0
        finally:
            for p in providers:
                p.close()
    finally:
        table.close()


def test_key__eliminator__anomaly_interval_s(tmp_path: Path, ns: str) -> None:
    """The host service scores agents for anomalies every anomaly_interval_s; 0 never."""
    for interval, expected in ((30.0, [True, True]), (0.0, [])):
        clock = FakeClock()
        config = configured(tmp_path, eliminator={"anomaly_interval_s": interval, "prediction_enabled": False})
        upkeep = _upkeep(config, ns, clock)
        try:
            for t in (0.0, 10.0, 29.0, 30.0, 40.0):
                clock.advance(t - clock())
                upkeep.predicted()
            assert upkeep.service.profiler.calls == expected
        finally:
            upkeep.close()
