"""The host's CPU and memory topology as this process may use it.

Read from sysfs (``/sys/devices/system/cpu/cpu*/topology``, ``.../cache/index*``, ``/sys/devices/system/node``;
see the kernel's Documentation/admin-guide/cputopology.rst and ABI/stable/sysfs-devices-node) and psutil. Inside
a container the answer is narrowed to what the process may actually use: the CPUs of its affinity mask (which
the cpuset cgroup already restricts) and the cgroup ``cpu.max`` / ``cpu.cfs_quota_us`` and ``memory.max`` /
``memory.limit_in_bytes`` limits. Without NUMA files the host is one node holding every CPU and all memory.

:meth:`Topology.synthetic` builds made-up machines for tests and planning experiments.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import CgroupLayout, detect_cgroups, read_int_file

__all__ = ["CacheInfo", "NumaNode", "Topology", "format_cpulist", "parse_cpulist", "read_topology"]

_SYS_CPU = "/sys/devices/system/cpu"
_SYS_NODE = "/sys/devices/system/node"


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse the kernel's list format (``0-3,8,10-11``) into a set of ints."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def format_cpulist(cpus: object) -> str:
    """The kernel's list format for a set of ints (``{0, 1, 2, 5}`` -> ``0-2,5``)."""
    out: list[list[int]] = []
    for c in sorted(cpus):  # type: ignore[call-overload]
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


@dataclass(frozen=True)
class CacheInfo:
    """One CPU cache: level, kind (Data/Instruction/Unified), size and the CPUs sharing it."""

    level: int
    type: str
    size_kb: int
    cpus: frozenset[int]


@dataclass(frozen=True)
class NumaNode:
    """A NUMA node: its allowed CPUs and memory (bytes)."""

    node_id: int
    cpus: frozenset[int]
    memory_total: int
    memory_free: int


@dataclass(frozen=True)
class Topology:
    """CPUs, physical cores (SMT sibling sets), NUMA nodes, caches and memory this process may use.

    Attributes:
        cpus: logical CPUs allowed to this process (online and in its affinity mask).
        cores: physical cores, each the set of its allowed SMT siblings, sorted by lowest CPU.
        nodes: NUMA nodes restricted to allowed CPUs (nodes without an allowed CPU are dropped).
        caches: distinct caches (deduplicated by level, type and CPU set).
        memory_total / memory_available: bytes, narrowed by a cgroup memory limit where one is set.
        cpu_limit: cores' worth of CPU time the cgroup quota allows (``None``: no quota).
        memory_limit: the cgroup memory limit in bytes (``None``: none).
    """

    cpus: frozenset[int]
    cores: tuple[frozenset[int], ...]
    nodes: tuple[NumaNode, ...]
    caches: tuple[CacheInfo, ...] = ()
    memory_total: int = 0
    memory_available: int = 0
    cpu_limit: float | None = None
    memory_limit: int | None = None
    cgroups: CgroupLayout = field(default_factory=CgroupLayout, compare=False)

    @property
    def threads_per_core(self) -> int:
        """The largest number of allowed SMT siblings on one core (1 without SMT)."""
        return max((len(c) for c in self.cores), default=1)

    def node_of(self, cpu: int) -> int:
        """The NUMA node holding ``cpu``."""
        for node in self.nodes:
            if cpu in node.cpus:
                return node.node_id
        raise KeyError(cpu)

    def core_of(self, cpu: int) -> frozenset[int]:
        """The SMT sibling set ``cpu`` belongs to."""
        for core in self.cores:
            if cpu in core:
                return core
        raise KeyError(cpu)

    def capacity(self) -> float:
        """Usable CPU capacity in cores: the allowed CPUs, capped by a cgroup quota."""
        n = float(len(self.cpus))
        return min(n, self.cpu_limit) if self.cpu_limit is not None else n

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary."""
        return {
            "cpus": sorted(self.cpus),
            "cores": [sorted(c) for c in self.cores],
            "nodes": [{"node": n.node_id, "cpus": sorted(n.cpus), "memory_total": n.memory_total,
                       "memory_free": n.memory_free} for n in self.nodes],
            "caches": [{"level": c.level, "type": c.type, "size_kb": c.size_kb, "cpus": sorted(c.cpus)}
                       for c in self.caches],
            "memory_total": self.memory_total,
            "memory_available": self.memory_available,
            "cpu_limit": self.cpu_limit,
            "memory_limit": self.memory_limit,
            "cgroups": self.cgroups.describe(),
        }

    @classmethod
    def synthetic(cls, nodes: int = 1, cores_per_node: int = 2, threads_per_core: int = 1,
                  memory_per_node_mb: int = 4096) -> Topology:
        """A made-up machine with CPUs numbered node by node, core by core (siblings adjacent)."""
        cores: list[frozenset[int]] = []
        node_list: list[NumaNode] = []
        cpu = 0
        for n in range(nodes):
            node_cpus: set[int] = set()
            for _ in range(cores_per_node):
                sib = frozenset(range(cpu, cpu + threads_per_core))
                cores.append(sib)
                node_cpus |= sib
                cpu += threads_per_core
            mem = memory_per_node_mb * 1024**2
            node_list.append(NumaNode(n, frozenset(node_cpus), mem, mem))
        total = memory_per_node_mb * 1024**2 * nodes
        return cls(frozenset(range(cpu)), tuple(cores), tuple(node_list), (), total, total)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _node_memory(node_dir: str) -> tuple[int, int]:
    total = free = 0
    text = _read(os.path.join(node_dir, "meminfo")) or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "MemTotal:":
            total = int(parts[3]) * 1024
        elif len(parts) >= 4 and parts[2] == "MemFree:":
            free = int(parts[3]) * 1024
    return total, free


def _cgroup_limits(layout: CgroupLayout) -> tuple[float | None, int | None]:
    """CPU quota (cores) and memory limit (bytes) of this process's own cgroups, v2 first then v1."""
    cpu_limit: float | None = None
    mem_limit: int | None = None
    v2 = layout.v2
    if v2 is not None:
        own = v2.path_of()
        if own is not None:
            text = _read(os.path.join(own, "cpu.max"))
            if text:
                quota, _, period = text.partition(" ")
                if quota != "max" and period:
                    cpu_limit = int(quota) / int(period)
            mem = _read(os.path.join(own, "memory.max"))
            if mem and mem != "max":
                mem_limit = int(mem)
    cpu_h = layout.v1("cpu")
    if cpu_limit is None and cpu_h is not None:
        own = cpu_h.path_of()
        if own is not None:
            q1 = read_int_file(os.path.join(own, "cpu.cfs_quota_us"))
            p1 = read_int_file(os.path.join(own, "cpu.cfs_period_us"))
            if q1 is not None and q1 > 0 and p1:
                cpu_limit = q1 / p1
    mem_h = layout.v1("memory")
    if mem_limit is None and mem_h is not None:
        own = mem_h.path_of()
        if own is not None:
            limit = read_int_file(os.path.join(own, "memory.limit_in_bytes"))
            # v1 reports "unlimited" as a huge page-aligned number.
            if limit is not None and limit < (1 << 60):
                mem_limit = limit
    return cpu_limit, mem_limit


def read_topology(sys_cpu: str = _SYS_CPU, sys_node: str = _SYS_NODE) -> Topology:
    """Read this host's topology as seen by the calling process.

    Args:
        sys_cpu / sys_node: sysfs roots (tests point them at a fake tree).
    """
    import psutil

    online_text = _read(os.path.join(sys_cpu, "online"))
    online = parse_cpulist(online_text) if online_text else frozenset(range(os.cpu_count() or 1))
    allowed = frozenset(os.sched_getaffinity(0)) & online or online

    seen_cores: dict[frozenset[int], None] = {}
    caches: dict[tuple[int, str, frozenset[int]], CacheInfo] = {}
    for cpu in sorted(allowed):
        base = os.path.join(sys_cpu, f"cpu{cpu}")
        sib_text = _read(os.path.join(base, "topology", "thread_siblings_list"))
        sib = (parse_cpulist(sib_text) if sib_text else frozenset({cpu})) & allowed
        seen_cores.setdefault(sib or frozenset({cpu}), None)
        cache_dir = os.path.join(base, "cache")
        try:
            indices = sorted(d for d in os.listdir(cache_dir) if d.startswith("index"))
        except OSError:
            indices = []
        for idx in indices:
            d = os.path.join(cache_dir, idx)
            level, ctype = _read(os.path.join(d, "level")), _read(os.path.join(d, "type"))
            size, shared = _read(os.path.join(d, "size")), _read(os.path.join(d, "shared_cpu_list"))
            if not (level and ctype and size and shared):
                continue
            key = (int(level), ctype, parse_cpulist(shared))
            size_kb = int(size.rstrip("K")) if size.endswith("K") else int(size.rstrip("M")) * 1024
            caches.setdefault(key, CacheInfo(key[0], ctype, size_kb, key[2]))
    cores = tuple(sorted(seen_cores, key=min))

    vm = psutil.virtual_memory()
    nodes: list[NumaNode] = []
    try:
        node_dirs = sorted((d for d in os.listdir(sys_node) if d.startswith("node") and d[4:].isdigit()),
                           key=lambda d: int(d[4:]))
    except OSError:
        node_dirs = []
    by_node: dict[int, set[int]] = defaultdict(set)
    for d in node_dirs:
        text = _read(os.path.join(sys_node, d, "cpulist"))
        cpus = (parse_cpulist(text) if text else frozenset()) & allowed
        if cpus:
            nid = int(d[4:])
            by_node[nid] |= cpus
            total, free = _node_memory(os.path.join(sys_node, d))
            nodes.append(NumaNode(nid, frozenset(cpus), total or vm.total, free or vm.available))
    covered = frozenset().union(*by_node.values()) if by_node else frozenset()
    if not nodes or covered != allowed:
        # No NUMA information (or it misses CPUs): one node with everything.
        nodes = [NumaNode(0, allowed, int(vm.total), int(vm.available))]

    layout = detect_cgroups()
    cpu_limit, mem_limit = _cgroup_limits(layout)
    total, available = int(vm.total), int(vm.available)
    if mem_limit is not None:
        total, available = min(total, mem_limit), min(available, mem_limit)
    return Topology(allowed, cores, tuple(nodes), tuple(sorted(caches.values(), key=lambda c: (c.level, c.type))),
                    total, available, cpu_limit, mem_limit, layout)
