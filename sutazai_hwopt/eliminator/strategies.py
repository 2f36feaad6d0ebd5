"""Elimination strategies: the protocol and the built-ins (CPU, memory, I/O, backend overload).

A strategy turns one bottleneck into a ladder of :class:`~.actions.Action` objects, least risky first; the
eliminator tries them in that order and keeps the first one that measurably helps. Strategies only *propose*:
they read the context the eliminator adds to the metrics (``agents``, ``agent_profiles``,
``agent_priorities``, ``agent_pids``, ``hooks``, ``cpus``, ``settings``) and never touch the kernel.

Remedies follow the usual Linux playbook (sched(7), setpriority(2), ioprio_set(2)): deprioritise background
CPU hogs with nice, move batch work to ``SCHED_BATCH`` (no wake-up preemption, fewer involuntary switches),
confine hogs to fewer CPUs, lower the I/O class of heavy writers, and ask the memory-owning components
(cache tiers, shared pools) and the load balancer to shed through hooks they register. Note that with
``sched_autogroup`` on (the default on desktop-style kernels, and on this host) nice only orders the tasks
of one session; affinity, SCHED_BATCH/IDLE and ionice act across sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from .actions import Action, KernelChange

__all__ = ["BackendOverloadStrategy", "CpuContentionStrategy", "EliminationStrategy", "IoSaturationStrategy",
           "MemoryPressureStrategy", "builtin_strategies"]


@runtime_checkable
class EliminationStrategy(Protocol):
    """Proposes actions for the bottleneck types it handles."""

    name: str

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool: ...

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]: ...


def _pids(agent: str, metrics: Mapping[str, Any]) -> list[int]:
    prof = metrics.get("agent_profiles", {}).get(agent, {})
    pids = prof.get("pids") or []
    if not pids and agent in metrics.get("agent_pids", {}):
        pids = [metrics["agent_pids"][agent]]
    return [int(p) for p in pids]


def _background(agents: list[str], metrics: Mapping[str, Any]) -> list[str]:
    """Agents below the exclusive priority (unknown priority counts as background)."""
    prio = metrics.get("agent_priorities", {})
    limit = metrics.get("settings", {}).get("exclusive_priority", 8)
    return [a for a in agents if prio.get(a, 0) < limit]


def _changes(agents: list[str], metrics: Mapping[str, Any], knob: str, new: Any) -> list[KernelChange]:
    return [KernelChange(knob, new, pid, a) for a in agents for pid in _pids(a, metrics)]


def _ids(agents: list[str]) -> str:
    return ",".join(sorted(agents))


class CpuContentionStrategy:
    """high_cpu_usage, cpu_starvation, context_switch_storm: nice, SCHED_BATCH, affinity."""

    name = "cpu_contention"
    TYPES = frozenset({"high_cpu_usage", "cpu_starvation", "context_switch_storm"})

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool:
        return bottleneck_type in self.TYPES and bool(metrics.get("agents"))

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]:
        agents = list(metrics.get("agents", []))
        settings = metrics.get("settings", {})
        bg_nice = int(settings.get("background_nice", 10))
        out: list[Action] = []
        if bottleneck_type == "high_cpu_usage":
            hogs = _background(agents, metrics)
            if not hogs:
                return out
            target = f"agents_except:{_ids(hogs)}:run_wait_ratio"
            out.append(Action("renice_background", f"nice {bg_nice} for background CPU consumers {hogs}",
                              "low", target, changes=_changes(hogs, metrics, "nice", bg_nice), agents=hogs))
            out.append(Action("sched_batch", f"SCHED_BATCH for {hogs} (treated as batch work)", "medium", target,
                              changes=_changes(hogs, metrics, "sched_policy", {"policy": "SCHED_BATCH",
                                                                               "priority": 0}), agents=hogs))
            cpus = sorted(metrics.get("cpus") or [])
            if len(cpus) >= 2:
                confine = cpus[len(cpus) // 2:]
                out.append(Action("confine_hogs", f"affinity {confine} for {hogs}, freeing the other CPUs",
                                  "high", target, changes=_changes(hogs, metrics, "affinity", confine),
                                  agents=hogs))
        elif bottleneck_type == "cpu_starvation":
            victims = agents
            profiles = metrics.get("agent_profiles", {})
            hogs = sorted((a for a, p in profiles.items() if a not in victims and p.get("alive", True)
                           and float(p.get("cpu_percent") or 0.0) >= 25.0),
                          key=lambda a: -float(profiles[a].get("cpu_percent") or 0.0))
            hogs = _background(hogs, metrics)[:5]
            target = f"agents:{_ids(victims)}:run_wait_ratio"
            if hogs:
                out.append(Action("renice_competitors", f"nice {bg_nice} for the CPU consumers {hogs} that "
                                  f"starve {victims}", "low", target,
                                  changes=_changes(hogs, metrics, "nice", bg_nice), agents=hogs))
            boost = int(settings.get("boost_nice", -5))
            out.append(Action("boost_starved", f"nice {boost} for the starved {victims}", "medium", target,
                              changes=_changes(victims, metrics, "nice", boost), agents=victims))
        else:  # context_switch_storm
            target = f"agents:{_ids(agents)}:ctx_switches_ps"
            out.append(Action("sched_batch_storm", f"SCHED_BATCH for {agents}: no wake-up preemption",
                              "medium", target, changes=_changes(agents, metrics, "sched_policy",
                                                                 {"policy": "SCHED_BATCH", "priority": 0}),
                              agents=agents))
        return out


class MemoryPressureStrategy:
    """memory_pressure, memory_leak, predicted exhaustion: hooks of the cache tiers and shared pools."""

    name = "memory_pressure"
    TYPES = frozenset({"memory_pressure", "memory_leak", "memory_exhaustion_predicted"})
    #: hook name -> (risk, what it does); offered only when a component registered the hook.
    HOOKS = (("pool.collect_dead", "low", "free the blocks of agents that exited"),
             ("cache.shrink", "low", "shrink the cache tiers"),
             ("pool.compress", "medium", "compress cold pool blocks"),
             ("pool.evict", "medium", "evict cold pool blocks"))

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool:
        return bottleneck_type in self.TYPES

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]:
        hooks = metrics.get("hooks", ())
        agents = list(metrics.get("agents", []))
        out = [Action(f"hook:{h}", desc, risk, "memory.available", increase=True, hook=h,
                      hook_args={"bottleneck_type": bottleneck_type, "agents": agents})
               for h, risk, desc in self.HOOKS if h in hooks]
        if bottleneck_type == "memory_leak":
            for a in agents:
                out.append(Action("restart_agent", f"{a} keeps growing; restart it or find the leak", "high",
                                  f"agents:{a}:rss_bytes", agents=[a], advisory=True))
        return out


class IoSaturationStrategy:
    """io_saturation, io_thrashing: lower the I/O class of the heavy agents (ioprio_set)."""

    name = "io_saturation"
    TYPES = frozenset({"io_saturation", "io_thrashing"})

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool:
        return bottleneck_type in self.TYPES and bool(_background(list(metrics.get("agents", [])), metrics))

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]:
        agents = _background(list(metrics.get("agents", [])), metrics)
        target = "pressure.io.some"
        return [
            Action("ionice_best_effort_low", f"I/O class best-effort, level 7 for {agents}", "low", target,
                   changes=_changes(agents, metrics, "ionice", {"class": "BE", "value": 7}), agents=agents),
            Action("ionice_idle", f"I/O class idle for {agents} (only when the disk is otherwise idle)",
                   "medium", target, changes=_changes(agents, metrics, "ionice", {"class": "IDLE", "value": 0}),
                   agents=agents),
        ]


class BackendOverloadStrategy:
    """backend_overload: ask the load balancer (through its hooks) to shed load or drain the backend."""

    name = "backend_overload"
    TYPES = frozenset({"backend_overload"})

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool:
        hooks = metrics.get("hooks", ())
        return bottleneck_type in self.TYPES and ("balancer.shed" in hooks or "balancer.drain" in hooks)

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]:
        hooks = metrics.get("hooks", ())
        backend = metrics.get("backend")
        target = str(metrics.get("target_metric") or "custom:balancer.load")
        out = []
        if "balancer.shed" in hooks:
            out.append(Action("shed_load", f"shed part of the load of backend {backend!r}", "medium", target,
                              hook="balancer.shed", hook_args={"backend": backend}))
        if "balancer.drain" in hooks:
            out.append(Action("drain_backend", f"drain backend {backend!r} (no new requests)", "high", target,
                              hook="balancer.drain", hook_args={"backend": backend}))
        return out


def builtin_strategies() -> list[EliminationStrategy]:
    """The built-in strategies, in the order the eliminator consults them."""
    return [CpuContentionStrategy(), MemoryPressureStrategy(), IoSaturationStrategy(), BackendOverloadStrategy()]
