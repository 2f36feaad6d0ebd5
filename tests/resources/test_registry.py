"""Agent registry and process identity."""

from __future__ import annotations

import os

import pytest

from sutazai_hwopt import errors
from sutazai_hwopt.resources import AgentProcess, Requirements, ResourcePoolCoordinator, Topology
from sutazai_hwopt.resources.identity import read_start_time


def test_identity_is_pid_plus_start_time(spawn):
    """An AgentProcess carries the start time from /proc/<pid>/stat and notices pid reuse."""
    p = spawn()
    ident = AgentProcess.of(p.pid)
    assert ident.start_time == read_start_time(p.pid) > 0
    assert ident.is_alive()
    impostor = AgentProcess(p.pid, ident.start_time + 1)  # same pid, another process
    assert not impostor.is_alive()
    with pytest.raises(errors.NotFoundError, match="reused"):
        impostor.check()
    p.kill()
    p.wait()
    assert not ident.is_alive()


def test_dead_pid_is_not_found(spawn):
    """Registering an exited pid raises NotFoundError naming the pid."""
    p = spawn(["true"])
    p.wait()
    with pytest.raises(errors.NotFoundError, match=str(p.pid)):
        AgentProcess.of(p.pid)


def test_register_list_unregister(coord, spawn):
    """register_agent / agents() / unregister_agent keep id, pid, start time and requirements."""
    p = spawn()
    a = coord.register_agent("agent_001", {"cpu_cores": 2, "memory_mb": 1024, "priority": 8,
                                           "gpu_memory_mb": 0}, pid=p.pid)
    assert (a.agent_id, a.pid, a.priority) == ("agent_001", p.pid, 8)
    assert a.start_time == read_start_time(p.pid)
    assert a.requirements == Requirements(2.0, 1024, 8, 0)
    assert a.cpus is None
    assert [x.agent_id for x in coord.agents()] == ["agent_001"]
    assert coord.unregister_agent("agent_001").agent_id == "agent_001"
    assert coord.agents() == []
    with pytest.raises(errors.NotFoundError, match="agent_001"):
        coord.unregister_agent("agent_001")


@pytest.mark.parametrize(("req", "field"), [
    ({"cpu_cores": 0}, "cpu_cores"),
    ({"cpu_cores": -1}, "cpu_cores"),
    ({"cpu_cores": 10_000}, "cpu_cores"),
    ({"memory_mb": -5}, "memory_mb"),
    ({"memory_mb": 1 << 40}, "memory_mb"),
    ({"priority": 11}, "priority"),
    ({"priority": "high"}, "priority"),
    ({"gpu_memory_mb": 512}, "gpu_memory_mb"),
    ({"cpus": 2}, "cpus"),
])
def test_bad_requirements_name_the_field(coord, spawn, req, field):
    """Unknown, negative or impossible requirements raise InvalidArgumentError naming the field; nothing stored."""
    p = spawn()
    with pytest.raises(errors.InvalidArgumentError, match=field):
        coord.register_agent("a", req, pid=p.pid)
    assert coord.agents() == []


def test_gpu_memory_allowed_when_gpu_present(state_dir, spawn):
    """gpu_memory_mb > 0 is accepted on a host that has a GPU (detection overridden)."""
    c = ResourcePoolCoordinator(state_dir=state_dir, gpu=True, topology=Topology.synthetic())
    assert c.register_agent("g", {"gpu_memory_mb": 512}, pid=spawn().pid).requirements.gpu_memory_mb == 512


def test_duplicate_id_and_dead_pid_keep_registry(coord, spawn):
    """A duplicate id or a dead pid is refused and the existing agent stays as it was."""
    p = spawn()
    coord.register_agent("a", {"priority": 3}, pid=p.pid)
    with pytest.raises(errors.AlreadyExistsError, match="'a'"):
        coord.register_agent("a", {}, pid=spawn().pid)
    dead = spawn(["true"])
    dead.wait()
    with pytest.raises(errors.NotFoundError):
        coord.register_agent("b", {}, pid=dead.pid)
    assert [(x.agent_id, x.pid, x.priority) for x in coord.agents()] == [("a", p.pid, 3)]


def test_prune_dead_unregisters_exited(coord, spawn):
    """prune_dead() drops agents whose process exited."""
    p, q = spawn(), spawn()
    coord.register_agent("live", {}, pid=p.pid)
    coord.register_agent("dies", {}, pid=q.pid)
    q.kill()
    q.wait()
    assert coord.prune_dead() == ["dies"]
    assert [a.agent_id for a in coord.agents()] == ["live"]


def test_topology_of_this_host():
    """The topology covers exactly the CPUs this process may use, with cores and one or more nodes."""
    from sutazai_hwopt.resources import read_topology

    t = read_topology()
    assert t.cpus == frozenset(os.sched_getaffinity(0))
    assert frozenset().union(*t.cores) == t.cpus
    assert frozenset().union(*(n.cpus for n in t.nodes)) == t.cpus
    assert t.memory_total > 0


def test_topology_without_numa_files(tmp_path):
    """Without /sys/devices/system/node the host is one node with every allowed CPU."""
    from sutazai_hwopt.resources import read_topology

    t = read_topology(sys_node=str(tmp_path / "missing"))
    assert len(t.nodes) == 1 and t.nodes[0].cpus == t.cpus


def test_topology_from_fake_sysfs(tmp_path):
    """SMT siblings form one core and per-node CPU lists form NUMA nodes (fake sysfs tree)."""
    from sutazai_hwopt.resources import read_topology

    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs 2 allowed CPUs")
    a, b = allowed[:2]
    cpu = tmp_path / "cpu"
    (cpu).mkdir()
    (cpu / "online").write_text(f"{a},{b}\n")
    for c in (a, b):
        topo = cpu / f"cpu{c}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(f"{a},{b}\n")
        idx = cpu / f"cpu{c}" / "cache" / "index0"
        idx.mkdir(parents=True)
        for name, val in (("level", "2"), ("type", "Unified"), ("size", "1024K"), ("shared_cpu_list", f"{a},{b}")):
            (idx / name).write_text(val + "\n")
    node = tmp_path / "node"
    for n, c in enumerate((a, b)):
        (node / f"node{n}").mkdir(parents=True)
        (node / f"node{n}" / "cpulist").write_text(f"{c}\n")
        (node / f"node{n}" / "meminfo").write_text(f"Node {n} MemTotal: 1024 kB\nNode {n} MemFree: 512 kB\n")
    t = read_topology(sys_cpu=str(cpu), sys_node=str(node))
    assert t.cores == (frozenset({a, b}),) and t.threads_per_core == 2
    assert [(n.node_id, n.cpus, n.memory_total) for n in t.nodes] == [(0, {a}, 1024 * 1024), (1, {b}, 1024 * 1024)]
    assert [(c.level, c.size_kb, c.cpus) for c in t.caches] == [(2, 1024, {a, b})]


def test_cgroup_limits_narrow_capacity(tmp_path):
    """cgroup v2 cpu.max and memory.max of the process's own group become cpu_limit and memory_limit."""
    from sutazai_hwopt.resources.cgroups import CgroupHierarchy, CgroupLayout
    from sutazai_hwopt.resources.topology import _cgroup_limits

    with open("/proc/self/cgroup") as f:
        v2 = [line.split(":", 2)[2].strip() for line in f if line.startswith("0::")]
    if not v2:
        pytest.skip("process is not listed in a v2 hierarchy")
    group = tmp_path / v2[0].lstrip("/")
    group.mkdir(parents=True, exist_ok=True)
    (group / "cpu.max").write_text("150000 100000\n")
    (group / "memory.max").write_text(f"{512 * 1024**2}\n")
    layout = CgroupLayout((CgroupHierarchy(2, str(tmp_path), frozenset({"cpu", "memory"})),))
    assert _cgroup_limits(layout) == (1.5, 512 * 1024**2)
    (group / "cpu.max").write_text("max 100000\n")
    (group / "memory.max").write_text("max\n")
    assert _cgroup_limits(layout) == (None, None)
