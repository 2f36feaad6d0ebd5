"""What a strategy sees: one frozen :class:`EliminationContext` per call, built by the eliminator.

It replaces the dict of magic keys strategies used to receive. The typed attributes are the interface; the
read-only mapping view (``ctx["agents"]``, ``ctx.get("settings")``, the caller's system metrics by key) keeps
strategies written against that dict working.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EliminationContext"]

_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, eq=False)
class EliminationContext(Mapping[str, Any]):
    """The facts one elimination call gives every strategy.

    Attributes:
        bottleneck_type: the type being eliminated.
        agents: the finding's agents (validated: each is known to the coordinator or the profiler).
        agent_profiles: agent id -> profile (``pids`` includes forked children, ``cpu_percent``, ``alive`` ...).
        agent_pids: agent id -> main pid (from the coordinator's registry, the profiles and the caller).
        agent_priorities: agent id -> priority (unknown agents count as 0, i.e. background).
        hooks: names of the hooks registered on the eliminator (an action may call only these).
        cpus: the CPUs this process may use (``sched_getaffinity``), sorted.
        background_nice, boost_nice: from the eliminator's settings.
        exclusive_priority: agents at or above it are never deprioritised (the placement config's).
        backend: the overloaded backend, for ``backend_overload``.
        target_metric: a caller-chosen metric key to validate against (``backend_overload``), or None.
        metrics: the caller's system metrics as given (e.g. ``PerformanceProfiler.system_metrics()``).
    """

    bottleneck_type: str
    agents: tuple[str, ...] = ()
    agent_profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    agent_pids: Mapping[str, int] = field(default_factory=dict)
    agent_priorities: Mapping[str, int] = field(default_factory=dict)
    hooks: frozenset[str] = frozenset()
    cpus: tuple[int, ...] = ()
    background_nice: int = 10
    boost_nice: int = -5
    exclusive_priority: int = 8
    backend: str | None = None
    target_metric: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def pids(self, agent: str) -> list[int]:
        """Every process of ``agent``: its profile's pids (children included), else its main pid."""
        pids = list(self.agent_profiles.get(agent, _EMPTY).get("pids") or [])
        if not pids and agent in self.agent_pids:
            pids = [self.agent_pids[agent]]
        return [int(p) for p in pids]

    def background(self, agents: Iterable[str]) -> list[str]:
        """The agents below the exclusive priority (an unknown priority counts as background)."""
        return [a for a in agents if self.agent_priorities.get(a, 0) < self.exclusive_priority]

    # -- the read-only mapping view of the former dict (kept for strategies written against it) -----------
    def _view(self) -> dict[str, Any]:
        return {**self.metrics, "agents": list(self.agents), "agent_profiles": self.agent_profiles,
                "agent_pids": self.agent_pids, "agent_priorities": self.agent_priorities, "hooks": self.hooks,
                "cpus": list(self.cpus),
                "settings": {"background_nice": self.background_nice, "boost_nice": self.boost_nice,
                             "exclusive_priority": self.exclusive_priority}}

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())
