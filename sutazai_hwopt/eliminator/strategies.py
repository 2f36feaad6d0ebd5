"""Elimination strategies: the protocol and the built-ins (CPU, memory, I/O, backend overload).

A strategy turns one bottleneck into a ladder of :class:`~.actions.Action` objects, least risky first; the
eliminator tries them in that order and keeps the first one that measurably helps. Strategies only *propose*:
they read the :class:`~.context.EliminationContext` the eliminator builds (agents, their profiles, pids and
priorities, hooks, cpus, settings) and never touch the kernel; kernel changes are ``resources.Change`` objects.

Remedies follow the usual Linux playbook (sched(7), setpriority(2), ioprio_set(2)): deprioritise background
CPU hogs with nice, move batch work to ``SCHED_BATCH`` (no wake-up preemption, fewer involuntary switches),
confine hogs to fewer CPUs, lower the I/O class of heavy writers, and ask the memory-owning components
(cache tiers, shared pools) and the load balancer to shed through hooks they register. Note that with
``sched_autogroup`` on (the default on desktop-style kernels, and on this host) nice only orders the tasks
of one session; affinity, SCHED_BATCH/IDLE and ionice act across sessions.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..resources import Change
from .actions import Action
from .context import EliminationContext

__all__ = ["BackendOverloadStrategy", "CpuContentionStrategy", "EliminationStrategy", "IoSaturationStrategy",
           "MemoryPressureStrategy", "builtin_strategies"]


@runtime_checkable
class EliminationStrategy(Protocol):
    """Proposes actions for the bottleneck types it handles.

    A strategy may handle types no detector of the library reports (the seed's ``CustomBottleneckStrategy``
    handles ``"custom_pattern..."``): the eliminator accepts any type some strategy's ``can_handle`` claims, and
    types added with ``register_detector`` reach it from the profiler. ``name`` is optional; without it the
    strategy goes by its class name (:func:`~sutazai_hwopt.resources.plugin_name`).
    """

    name: str

    def can_handle(self, bottleneck_type: str, context: EliminationContext) -> bool: ...

    def generate_actions(self, bottleneck_type: str, context: EliminationContext) -> list[Action]: ...


def _changes(agents: list[str], ctx: EliminationContext, knob: str, new: Any) -> list[Change]:
    """One change per process of each agent (the eliminator sets owner and reason when it applies them)."""
    return [Change(knob, new, pid=pid, agent_id=a) for a in agents for pid in ctx.pids(a)]


def _ids(agents: list[str]) -> str:
    return ",".join(sorted(agents))


class CpuContentionStrategy:
    """high_cpu_usage, cpu_starvation, context_switch_storm: nice, SCHED_BATCH, affinity."""

    name = "cpu_contention"
    TYPES = frozenset({"high_cpu_usage", "cpu_starvation", "context_switch_storm"})

    def can_handle(self, bottleneck_type: str, ctx: EliminationContext) -> bool:
        return bottleneck_type in self.TYPES and bool(ctx.agents)

    def generate_actions(self, bottleneck_type: str, ctx: EliminationContext) -> list[Action]:
        agents = list(ctx.agents)
        bg_nice = ctx.background_nice
        out: list[Action] = []
        if bottleneck_type == "high_cpu_usage":
            hogs = ctx.background(agents)
            if not hogs:
                return out
            target = f"agents_except:{_ids(hogs)}:run_wait_ratio"
            out.append(Action("renice_background", f"nice {bg_nice} for background CPU consumers {hogs}",
                              "low", target, changes=_changes(hogs, ctx, "nice", bg_nice), agents=hogs))
            out.append(Action("sched_batch", f"SCHED_BATCH for {hogs} (treated as batch work)", "medium", target,
                              changes=_changes(hogs, ctx, "sched_policy", {"policy": "SCHED_BATCH",
                                                                               "priority": 0}), agents=hogs))
            cpus = sorted(ctx.cpus)
            if len(cpus) >= 2:
                confine = cpus[len(cpus) // 2:]
                out.append(Action("confine_hogs", f"affinity {confine} for {hogs}, freeing the other CPUs",
                                  "high", target, changes=_changes(hogs, ctx, "affinity", confine),
                                  agents=hogs))
        elif bottleneck_type == "cpu_starvation":
            victims = agents
            profiles = ctx.agent_profiles
            hogs = sorted((a for a, p in profiles.items() if a not in victims and p.get("alive", True)
                           and float(p.get("cpu_percent") or 0.0) >= 25.0),
                          key=lambda a: -float(profiles[a].get("cpu_percent") or 0.0))
            hogs = ctx.background(hogs)[:5]
            target = f"agents:{_ids(victims)}:run_wait_ratio"
            if hogs:
                out.append(Action("renice_competitors", f"nice {bg_nice} for the CPU consumers {hogs} that "
                                  f"starve {victims}", "low", target,
                                  changes=_changes(hogs, ctx, "nice", bg_nice), agents=hogs))
            boost = ctx.boost_nice
            out.append(Action("boost_starved", f"nice {boost} for the starved {victims}", "medium", target,
                              changes=_changes(victims, ctx, "nice", boost), agents=victims))
        else:  # context_switch_storm
            target = f"agents:{_ids(agents)}:ctx_switches_ps"
            out.append(Action("sched_batch_storm", f"SCHED_BATCH for {agents}: no wake-up preemption",
                              "medium", target, changes=_changes(agents, ctx, "sched_policy",
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

    def can_handle(self, bottleneck_type: str, ctx: EliminationContext) -> bool:
        return bottleneck_type in self.TYPES

    def generate_actions(self, bottleneck_type: str, ctx: EliminationContext) -> list[Action]:
        hooks = ctx.hooks
        agents = list(ctx.agents)
        out = [Action(f"hook:{h}", desc, risk, "memory.available", increase=True, hook=h,
                      hook_args={"bottleneck_type": bottleneck_type, "agents": agents})
               for h, risk, desc in self.HOOKS if h in hooks]
        if bottleneck_type == "memory_leak":
            for a in agents:
                if "agent.restart" in hooks:  # registered only with the operator's consent
                    out.append(Action("restart_agent", f"{a} keeps growing; restart it", "high",
                                      f"agents:{a}:rss_bytes", agents=[a], hook="agent.restart",
                                      hook_args={"agent": a}))
                    continue
                out.append(Action("restart_agent", f"{a} keeps growing; restart it or find the leak", "high",
                                  f"agents:{a}:rss_bytes", agents=[a], advisory=True))
        return out


class IoSaturationStrategy:
    """io_saturation, io_thrashing: lower the I/O class of the heavy agents (ioprio_set)."""

    name = "io_saturation"
    TYPES = frozenset({"io_saturation", "io_thrashing"})

    def can_handle(self, bottleneck_type: str, ctx: EliminationContext) -> bool:
        return bottleneck_type in self.TYPES and bool(ctx.background(ctx.agents))

    def generate_actions(self, bottleneck_type: str, ctx: EliminationContext) -> list[Action]:
        agents = ctx.background(ctx.agents)
        target = "pressure.io.some"
        return [
            Action("ionice_best_effort_low", f"I/O class best-effort, level 7 for {agents}", "low", target,
                   changes=_changes(agents, ctx, "ionice", {"class": "BE", "value": 7}), agents=agents),
            Action("ionice_idle", f"I/O class idle for {agents} (only when the disk is otherwise idle)",
                   "medium", target, changes=_changes(agents, ctx, "ionice", {"class": "IDLE", "value": 0}),
                   agents=agents),
        ]


class BackendOverloadStrategy:
    """backend_overload: ask the load balancer (through its hooks) to shed load or drain the backend."""

    name = "backend_overload"
    TYPES = frozenset({"backend_overload"})

    def can_handle(self, bottleneck_type: str, ctx: EliminationContext) -> bool:
        hooks = ctx.hooks
        return bottleneck_type in self.TYPES and ("balancer.shed" in hooks or "balancer.drain" in hooks)

    def generate_actions(self, bottleneck_type: str, ctx: EliminationContext) -> list[Action]:
        hooks = ctx.hooks
        backend = ctx.backend
        target = ctx.target_metric or "custom:balancer.load"
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
