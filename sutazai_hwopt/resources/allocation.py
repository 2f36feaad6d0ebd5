"""CPU allocation: a small exclusive pool for high-priority agents, a weighted shared pool for the rest.

Model: the Kubernetes CPU manager's ``static`` policy (kubelet ``cpumanager``, KEP-375 and the
``takeByTopology`` packing of ``cpu_assignment.go``): whole physical cores are handed out exclusively, the
shared pool is never emptied, and cores are taken from one NUMA node (best fit, so large free nodes stay whole)
before spilling across nodes. Beyond it:

* the exclusive pool is bounded (``exclusive_pool_fraction``, ``shared_pool_min_cores``) because 131 agents
  asking for 2 cores each cannot all be exclusive on a small host;
* candidates are served strictly by priority, so a lower-priority agent only gets exclusive cores a
  higher-priority one could not have used;
* SMT siblings always go together to one agent (no two agents share a physical core's execution units);
* shared agents are spread over the NUMA nodes by longest-processing-time-first greedy (Graham 1969) on their
  demand, weighted by each node's shared capacity, preferring nodes with room for their memory;
* shared-pool weights follow the kernel's CFS nice-to-weight table (``sched_prio_to_weight``, 1.25x per nice
  step); each agent's quota is its demand, scaled down when the total exceeds ``oversubscription`` times the
  shared capacity — the oversubscription the mode permits — and the excess is reported.

``allocate()`` is a pure function over a :class:`~.topology.Topology`, so it runs on synthetic machines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import HardwareConfig
from .topology import Topology

__all__ = ["AgentDemand", "Allocation", "Placement", "allocate", "nice_for_priority", "nice_weight"]


@dataclass(frozen=True)
class AgentDemand:
    """What the allocator sees of one agent.

    Attributes:
        agent_id / priority / cpu_cores / memory_mb: from the registry.
        order: registration order (ties in priority go to the earlier agent).
        load: measured CPU load in cores, or ``None`` if unknown.
    """

    agent_id: str
    priority: int
    cpu_cores: float
    memory_mb: int = 0
    order: int = 0
    load: float | None = None


@dataclass(frozen=True)
class Placement:
    """Where one agent runs.

    Attributes:
        cpus: CPUs it may run on. exclusive: those CPUs are its alone.
        numa_node: node of all its CPUs (``None`` if it spans nodes).
        demand: cores it was sized for; quota: cores' worth of CPU time it is capped at (shared pool).
        weight: relative CPU weight in the shared pool (CFS weight of its nice value).
        note: why it ended where it did (``demoted``: wanted exclusive cores but the pool was short).
    """

    agent_id: str
    cpus: frozenset[int]
    exclusive: bool
    numa_node: int | None
    demand: float
    quota: float
    weight: int
    note: str = ""


@dataclass
class Allocation:
    """An allocator's answer. ``exclusive_order`` lists exclusive grants in the order they were made."""

    placements: dict[str, Placement]
    exclusive_pool: frozenset[int] = frozenset()
    shared_pool: frozenset[int] = frozenset()
    shared_demand: float = 0.0
    shared_capacity: float = 0.0
    permitted_oversubscription: float = 1.0
    exclusive_order: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def oversubscription(self) -> float:
        """Shared-pool demand / supply (1.0 = exactly full)."""
        return self.shared_demand / self.shared_capacity if self.shared_capacity else 0.0


# CFS weights for nice -20..19 (kernel/sched/core.c, sched_prio_to_weight).
_WEIGHTS = (88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100, 4904,
            3906, 3121, 2501, 1991, 1586, 1277, 1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87,
            70, 56, 45, 36, 29, 23, 18, 15)


def nice_weight(nice: int) -> int:
    """The CFS load weight of a nice value."""
    return _WEIGHTS[max(-20, min(19, nice)) + 20]


def nice_for_priority(priority: int, config: HardwareConfig) -> int:
    """Priority 10 -> ``nice_min``, 0 -> ``nice_max``, linear in between."""
    span = config.nice_max - config.nice_min
    return round(config.nice_max - span * priority / 10)


def _node_of_core(topology: Topology, core: frozenset[int]) -> int:
    return topology.node_of(min(core))


def allocate(topology: Topology, demands: Sequence[AgentDemand], config: HardwareConfig, *,
             demand_of: Callable[[AgentDemand], float] | None = None, strict_numa: bool = False,
             exclusive: bool | None = None) -> Allocation:
    """Place ``demands`` on ``topology`` (see the module docstring).

    Args:
        demand_of: cores an agent is sized for (default: its requested ``cpu_cores``; the load-based strategy
            passes its measured load with headroom).
        strict_numa: never split an exclusive agent over nodes (demote it instead).
        exclusive: override whether an exclusive pool is used (default: ``affinity_strategy == "static"``).
    """
    size = demand_of or (lambda d: d.cpu_cores)
    use_excl = config.affinity_strategy == "static" if exclusive is None else exclusive
    cores = list(topology.cores)
    max_excl = 0
    if use_excl:
        max_excl = min(math.floor(len(cores) * config.exclusive_pool_fraction),
                       len(cores) - config.shared_pool_min_cores)
        max_excl = max(0, max_excl)
    # Free cores per node, highest CPU first: CPU 0 (where most IRQs land) stays shared the longest.
    free: dict[int, list[frozenset[int]]] = {n.node_id: [] for n in topology.nodes}
    for core in sorted(cores, key=min, reverse=True):
        free[_node_of_core(topology, core)].append(core)
    placements: dict[str, Placement] = {}
    order: list[str] = []
    warnings: list[str] = []
    notes: dict[str, str] = {}
    used = 0
    ranked = sorted(demands, key=lambda d: (-d.priority, d.order))
    for d in ranked:
        if not use_excl or d.priority < config.exclusive_priority:
            continue
        want = max(1, math.ceil(size(d) - 1e-9))
        fits = {n: cs for n, cs in free.items() if sum(len(c) for c in cs) >= want}
        chosen: list[frozenset[int]] = []
        if fits:
            # Best fit: the node with the fewest free CPUs that still holds the request.
            node = min(fits, key=lambda n: (sum(len(c) for c in fits[n]), n))
            got = 0
            for core in free[node]:
                if got >= want:
                    break
                chosen.append(core)
                got += len(core)
        elif not strict_numa:
            got = 0
            for node in sorted(free, key=lambda n: -sum(len(c) for c in free[n])):
                for core in free[node]:
                    if got >= want:
                        break
                    chosen.append(core)
                    got += len(core)
            if got < want:
                chosen = []
        if not chosen or used + len(chosen) > max_excl:
            notes[d.agent_id] = (f"demoted: wanted {want} exclusive CPU(s), exclusive pool has "
                                 f"{max(0, max_excl - used)} core(s) left")
            continue
        used += len(chosen)
        for core in chosen:
            free[_node_of_core(topology, core)].remove(core)
        cpus = frozenset().union(*chosen)
        nodes = {topology.node_of(c) for c in cpus}
        placements[d.agent_id] = Placement(d.agent_id, cpus, True, nodes.pop() if len(nodes) == 1 else None,
                                           float(len(cpus)), float(len(cpus)),
                                           nice_weight(nice_for_priority(d.priority, config)))
        order.append(d.agent_id)
    excl_pool = frozenset().union(*(p.cpus for p in placements.values())) if placements else frozenset()
    shared_pool = topology.cpus - excl_pool
    by_node = {n.node_id: n.cpus & shared_pool for n in topology.nodes}
    by_node = {n: c for n, c in by_node.items() if c}
    # Shared capacity: the shared CPUs, less what a cgroup CPU quota takes away proportionally.
    cap = float(len(shared_pool))
    if topology.cpu_limit is not None and topology.cpus:
        cap *= min(1.0, topology.cpu_limit / len(topology.cpus))
    shared = [d for d in demands if d.agent_id not in placements]
    node_load = dict.fromkeys(by_node, 0.0)
    node_mem = {n.node_id: 0 for n in topology.nodes}
    node_memcap = {n.node_id: n.memory_total // 1024**2 for n in topology.nodes}
    total = 0.0
    assigned: dict[str, tuple[frozenset[int], int | None]] = {}
    for d in sorted(shared, key=lambda d: (-size(d), d.order)):
        total += size(d)
        if config.enable_numa and len(by_node) > 1:
            roomy = [n for n in by_node if node_mem[n] + d.memory_mb <= node_memcap[n]] or list(by_node)
            node = min(roomy, key=lambda n: ((node_load[n] + size(d)) / len(by_node[n]), n))
            node_load[node] += size(d)
            node_mem[node] += d.memory_mb
            assigned[d.agent_id] = (by_node[node], node)
        else:
            only = list(by_node)
            assigned[d.agent_id] = (shared_pool, only[0] if len(only) == 1 else None)
    permitted = config.oversubscription
    scale = 1.0
    if cap and total > permitted * cap:
        scale = permitted * cap / total
        warnings.append(f"shared pool oversubscribed: demand {total:.1f} cores on {cap:.1f} "
                        f"(ratio {total / cap:.1f} > permitted {permitted:.1f}); quotas scaled by {scale:.3f}")
    for d in shared:
        shared_cpus, home = assigned[d.agent_id]
        quota = min(size(d) * scale, float(len(shared_cpus)))
        placements[d.agent_id] = Placement(d.agent_id, shared_cpus, False, home, size(d), quota,
                                           nice_weight(nice_for_priority(d.priority, config)),
                                           notes.get(d.agent_id, ""))
    return Allocation(placements, excl_pool, shared_pool, total, cap, permitted, order, warnings)
