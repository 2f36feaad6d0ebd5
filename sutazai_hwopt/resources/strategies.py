"""Allocation and scheduling strategies: two small protocols and the built-ins beside them.

* :class:`Allocator` decides *where* agents run (``allocate(topology, demands, config) -> Allocation``).
  Built-ins: ``priority`` (requested cores, strict priority order), ``load_based`` (sized by measured load
  with 25% headroom, so idle high-priority agents give exclusive cores back and busy ones grow, in place) and
  ``numa`` (never splits an exclusive agent across nodes; shared agents placed node-locally by memory).
* :class:`Scheduler` decides *how* each placed agent is scheduled (nice, policy, I/O class, THP). Built-in:
  ``priority`` (nice from priority over the mode's nice range, the mode's policy, best-effort I/O level from
  priority, SCHED_IDLE + idle I/O for agents at or below ``idle_priority_max``).

:class:`ProcLoadSampler` measures per-agent CPU load from ``/proc/<pid>/stat`` utime+stime deltas (the cheapest
probe in the anchors: 0.2% of a core at 1 Hz for 131 processes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..config import HardwareConfig
from .allocation import AgentDemand, Allocation, Placement, allocate, nice_for_priority
from .topology import Topology

__all__ = [
    "Allocator", "LoadBasedAllocator", "NumaAllocator", "PriorityAllocator", "PriorityScheduler",
    "ProcLoadSampler", "SchedSettings", "Scheduler", "builtin_allocators", "builtin_schedulers", "plugin_name",
]


def plugin_name(obj: object) -> str:
    """The name a plug-in registered without one goes by: its ``name`` attribute, else its ``__name__`` (a
    function or class), else its class name (the seed's ``register_custom_allocator(gpu_allocator)``)."""
    for attr in ("name", "__name__"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(obj).__name__


@runtime_checkable
class Allocator(Protocol):
    """Where agents run. ``needs_load = True`` makes the coordinator measure ``AgentDemand.load`` first."""

    needs_load: bool

    def allocate(self, topology: Topology, demands: Sequence[AgentDemand], config: HardwareConfig
                 ) -> Allocation:
        """Return a placement for every demand."""
        ...


@dataclass(frozen=True)
class SchedSettings:
    """Per-agent scheduling values; ``None`` leaves that knob alone."""

    nice: int | None = None
    policy: str | None = None
    rt_priority: int = 0
    ionice: tuple[str, int] | None = None
    thp_disabled: bool | None = None


@runtime_checkable
class Scheduler(Protocol):
    """How one placed agent is scheduled."""

    def settings(self, demand: AgentDemand, placement: Placement, config: HardwareConfig) -> SchedSettings:
        """The knob values for this agent."""
        ...


class PriorityAllocator:
    """Requested cores, exclusive pool by strict priority order."""

    needs_load = False

    def allocate(self, topology: Topology, demands: Sequence[AgentDemand], config: HardwareConfig
                 ) -> Allocation:
        return allocate(topology, demands, config)


class LoadBasedAllocator:
    """Sized by measured load x ``headroom`` (bounded by the request); unknown load counts as the request."""

    needs_load = True

    def __init__(self, headroom: float = 1.25, floor: float = 0.05) -> None:
        self.headroom = headroom
        self.floor = floor

    def size(self, d: AgentDemand) -> float:
        if d.load is None:
            return d.cpu_cores
        return min(d.cpu_cores, max(self.floor, d.load * self.headroom))

    def allocate(self, topology: Topology, demands: Sequence[AgentDemand], config: HardwareConfig
                 ) -> Allocation:
        return allocate(topology, demands, config, demand_of=self.size)


class NumaAllocator:
    """Strict NUMA locality: exclusive agents never span nodes; shared agents go node-local."""

    needs_load = False

    def allocate(self, topology: Topology, demands: Sequence[AgentDemand], config: HardwareConfig
                 ) -> Allocation:
        import dataclasses

        return allocate(topology, demands, dataclasses.replace(config, enable_numa=True), strict_numa=True)


class PriorityScheduler:
    """Nice, policy, I/O class and THP from priority and the mode (see the module docstring)."""

    def settings(self, demand: AgentDemand, placement: Placement, config: HardwareConfig) -> SchedSettings:
        idle = demand.priority <= config.idle_priority_max
        nice = nice_for_priority(demand.priority, config) if config.manage_nice else None
        policy = config.scheduler_policy
        rt = 0
        if policy in ("SCHED_FIFO", "SCHED_RR"):
            # Real time only on cores the agent owns: on shared cores it could starve everyone else.
            if config.allow_realtime and placement.exclusive:
                rt = max(1, min(99, demand.priority * 9))
            else:
                policy = "SCHED_OTHER"
        if idle:
            policy, rt = "SCHED_IDLE", 0
        ionice = None
        if config.manage_ionice:
            ionice = ("IDLE", 0) if idle else ("BE", round(7 * (10 - demand.priority) / 10))
        thp = False if config.enable_transparent_hugepages else None
        return SchedSettings(nice, policy, rt, ionice, thp)


def builtin_allocators() -> dict[str, Any]:
    return {"priority": PriorityAllocator(), "load_based": LoadBasedAllocator(), "numa": NumaAllocator()}


def builtin_schedulers() -> dict[str, Any]:
    return {"priority": PriorityScheduler()}


class ProcLoadSampler:
    """CPU load per agent in cores: utime+stime delta between two calls over the clock delta.

    The first call for an agent has no earlier sample and returns nothing for it (the load-based strategy then
    sizes it by its request). Pass a fake clock in tests.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._last: dict[tuple[int, int], tuple[float, int]] = {}
        self._hz = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def cpu_ticks(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(rest[11]) + int(rest[12])

    def sample(self, agents: Sequence[Any]) -> dict[str, float]:
        now = self.clock()
        out: dict[str, float] = {}
        seen = set()
        for a in agents:
            key = (a.pid, a.start_time)
            seen.add(key)
            ticks = self.cpu_ticks(a.pid)
            if ticks is None:
                continue
            prev = self._last.get(key)
            self._last[key] = (now, ticks)
            if prev is not None and now > prev[0]:
                out[a.agent_id] = max(0.0, (ticks - prev[1]) / self._hz / (now - prev[0]))
        for key in set(self._last) - seen:
            del self._last[key]
        return out
