"""Turn an allocation plus scheduling settings into a plan of knob changes and check it.

A :class:`Plan` is inspectable before anything happens (``rebalance_resources(dry_run=True)`` returns it;
``apply(plan, dry_run=True)`` prints it). A plan is a function of the topology, configuration, agents and
strategies it is given, nothing else: no owner is read or written here. Applying is the owner's side effect
(:meth:`~.coordinator.ResourcePoolCoordinator.apply`): all changes as one journaled transaction, the per-knob
outcome (applied / unchanged / not permitted / not available) stored on the plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import HardwareConfig
from ..errors import InvalidArgumentError
from .allocation import AgentDemand, Allocation, Placement
from .cgroups_plan import cgroup_changes
from .registry import Agent
from .strategies import Allocator, SchedSettings, Scheduler
from .topology import Topology, format_cpulist
from .transactions import Change, KnobResult

__all__ = ["Plan", "exited_agents", "make_plan", "validate_allocation"]


@dataclass
class Plan:
    """A computed placement: per-agent placement and settings, the knob changes, and after applying, results."""

    strategy: str
    allocation: Allocation
    settings: dict[str, SchedSettings]
    changes: list[Change]
    agents: dict[str, Agent]
    results: list[KnobResult] = field(default_factory=list)
    applied: bool = False
    dry_run: bool = True
    txn: str | None = None

    @property
    def placements(self) -> dict[str, Placement]:
        return self.allocation.placements

    @property
    def warnings(self) -> list[str]:
        return self.allocation.warnings

    def knob_status(self) -> dict[str, dict[str, int]]:
        """Per knob: how many changes ended in each status."""
        out: dict[str, Counter[str]] = {}
        for r in self.results:
            out.setdefault(r.knob, Counter())[r.status] += 1
        return {k: dict(v) for k, v in out.items()}

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest."""
        a = self.allocation
        return {
            "strategy": self.strategy, "applied": self.applied, "dry_run": self.dry_run, "txn": self.txn,
            "agents": len(self.placements), "exclusive_agents": len(a.exclusive_order),
            "exclusive_pool": sorted(a.exclusive_pool), "shared_pool": sorted(a.shared_pool),
            "shared_demand_cores": round(a.shared_demand, 3), "shared_capacity_cores": a.shared_capacity,
            "oversubscription": round(a.oversubscription, 3),
            "permitted_oversubscription": a.permitted_oversubscription,
            "warnings": list(a.warnings), "changes": len(self.changes), "knobs": self.knob_status(),
        }

    def format(self) -> str:
        """A human-readable table of the plan (what ``apply(plan, dry_run=True)`` prints)."""
        lines = [f"plan ({self.strategy}): {len(self.placements)} agent(s), exclusive pool "
                 f"{sorted(self.allocation.exclusive_pool)}, shared pool {sorted(self.allocation.shared_pool)}, "
                 f"oversubscription {self.allocation.oversubscription:.2f} "
                 f"(permitted {self.allocation.permitted_oversubscription:.2f})"]
        lines += [f"  warning: {w}" for w in self.allocation.warnings]
        lines.append(f"  {'agent':<16} {'pid':>7} {'cpus':<12} {'excl':<5} {'node':<4} {'quota':>6} "
                     f"{'nice':>4} {'policy':<11} ionice  note")
        for aid, p in self.placements.items():
            s = self.settings.get(aid, SchedSettings())
            pid = self.agents[aid].pid if aid in self.agents else "-"
            cpus = _cpulist(p.cpus)
            io = f"{s.ionice[0]}{s.ionice[1]}" if s.ionice else "-"
            lines.append(f"  {aid:<16} {pid:>7} {cpus:<12} {'yes' if p.exclusive else 'no':<5} "
                         f"{'-' if p.numa_node is None else p.numa_node!s:<4} {p.quota:>6.2f} "
                         f"{'-' if s.nice is None else s.nice!s:>4} {s.policy or '-':<11} {io:<7} {p.note}")
        if self.results:
            lines.append("  knobs: " + ", ".join(f"{k}: {v}" for k, v in self.knob_status().items()))
        return "\n".join(lines)


def _cpulist(cpus: frozenset[int]) -> str:
    return format_cpulist(cpus)


def validate_allocation(name: str, alloc: Any, demands: list[AgentDemand], allowed: frozenset[int]) -> None:
    """Check an allocator's answer: every agent placed once on >= 1 allowed CPU; exclusive CPUs unshared.

    Raises:
        InvalidArgumentError: the strategy ``name`` returned something invalid (nothing is applied).
    """
    if not isinstance(alloc, Allocation):
        raise InvalidArgumentError(f"allocator {name!r} returned {type(alloc).__name__}, expected Allocation")
    ids = {d.agent_id for d in demands}
    if set(alloc.placements) != ids:
        missing, extra = sorted(ids - set(alloc.placements)), sorted(set(alloc.placements) - ids)
        raise InvalidArgumentError(f"allocator {name!r}: placements missing {missing} / unknown {extra}")
    owner: dict[int, str] = {}
    for aid, p in alloc.placements.items():
        if not p.cpus or not p.cpus <= allowed:
            raise InvalidArgumentError(f"allocator {name!r}: agent {aid!r} got cpus {sorted(p.cpus)}; must be a "
                                       f"non-empty subset of the allowed CPUs {sorted(allowed)}")
    for aid, p in alloc.placements.items():
        if p.exclusive:
            for c in p.cpus:
                if c in owner:
                    raise InvalidArgumentError(f"allocator {name!r}: CPU {c} given exclusively to both "
                                               f"{owner[c]!r} and {aid!r}")
                owner[c] = aid
    for aid, p in alloc.placements.items():
        if not p.exclusive and p.cpus & set(owner):
            raise InvalidArgumentError(f"allocator {name!r}: shared agent {aid!r} placed on exclusive CPU(s) "
                                       f"{sorted(p.cpus & set(owner))}")


def make_plan(topology: Topology, config: HardwareConfig, agents: Sequence[Agent], strategy: str,
              allocator: Allocator, scheduler: Scheduler, loads: Mapping[str, float]) -> Plan:
    """The plan of ``agents`` under ``allocator`` (named ``strategy``) and ``scheduler``: placement, settings and
    every knob change. A function of its arguments only: nothing is read from or written to an owner, so a
    plan can be computed, inspected and thrown away; :class:`~.coordinator.ResourcePoolCoordinator` applies it.

    Raises:
        InvalidArgumentError: a strategy returned something invalid (nothing is applied).
    """
    demands = [AgentDemand(a.agent_id, a.priority, a.requirements.cpu_cores, a.requirements.memory_mb, i,
                           loads.get(a.agent_id)) for i, a in enumerate(agents)]
    alloc = allocator.allocate(topology, demands, config)
    validate_allocation(strategy, alloc, demands, topology.cpus)
    by_id = {a.agent_id: a for a in agents}
    settings: dict[str, SchedSettings] = {}
    changes: list[Change] = []
    for d in demands:
        p = alloc.placements[d.agent_id]
        s = scheduler.settings(d, p, config)
        if not isinstance(s, SchedSettings):
            raise InvalidArgumentError(f"scheduler returned {type(s).__name__} for {d.agent_id!r}, "
                                       "expected SchedSettings")
        settings[d.agent_id] = s
        pid = by_id[d.agent_id].pid
        mk = lambda knob, new, _pid=pid, _aid=d.agent_id: Change(knob, new, pid=_pid, agent_id=_aid,  # noqa: E731
                                                                  reason=f"plan {strategy}")
        if config.affinity_strategy != "none":
            changes.append(mk("affinity", sorted(p.cpus)))
        if s.nice is not None:
            changes.append(mk("nice", s.nice))
        if s.policy is not None:
            changes.append(mk("sched_policy", {"policy": s.policy, "priority": s.rt_priority}))
        if s.ionice is not None:
            changes.append(mk("ionice", {"class": s.ionice[0], "value": s.ionice[1]}))
        if s.thp_disabled is not None:
            changes.append(mk("thp_disabled", s.thp_disabled))
    if config.use_cgroups:
        changes += cgroup_changes(topology, config, alloc, by_id)
    return Plan(strategy, alloc, settings, changes, by_id)


def exited_agents(plan: Plan) -> list[str]:
    """Agents of ``plan`` whose process has exited since it was computed (a plan for them must not apply)."""
    return [aid for aid, agent in plan.agents.items() if not agent.process.is_alive()]
