"""The agent registry: which processes are agents, what each asks for, and what each was given.

An agent is a process identity (:class:`~.identity.AgentProcess`: pid + start time) with validated
:class:`Requirements`. Requirements are checked against the host (a request for more CPUs than this process may
use, or GPU memory on a host without a GPU, is an error naming the field) before anything is stored.
"""

from __future__ import annotations

import glob
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._validate import check_agent_id
from ..errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from .identity import AgentProcess
from .topology import Topology

__all__ = ["Agent", "AgentRegistry", "Requirements", "host_has_gpu"]

_FIELDS = ("cpu_cores", "memory_mb", "priority", "gpu_memory_mb")


def host_has_gpu() -> bool:
    """Whether any GPU device node exists (NVIDIA, AMD KFD or a DRM render node)."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or glob.glob("/dev/dri/renderD*"))


@dataclass(frozen=True)
class Requirements:
    """What an agent asks for.

    Attributes:
        cpu_cores: CPUs wanted (fractions allowed for the shared pool; exclusive cores are whole).
        memory_mb: memory it expects to use (planning and NUMA placement).
        priority: 0 (lowest) .. 10 (highest); at or above ``exclusive_priority`` it may get exclusive cores.
        gpu_memory_mb: must be 0 on a host without a GPU.
    """

    cpu_cores: float = 1.0
    memory_mb: int = 0
    priority: int = 5
    gpu_memory_mb: int = 0

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | Requirements | None, topology: Topology | None = None,
              *, gpu: bool | None = None) -> Requirements:
        """Validate a requirements mapping; every error names the field, the value and what is allowed."""
        if isinstance(spec, Requirements):
            spec = spec.to_dict()
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            raise InvalidArgumentError(f"requirements must be a mapping, got {type(spec).__name__}")
        unknown = sorted(set(spec) - set(_FIELDS))
        if unknown:
            raise InvalidArgumentError(f"requirements: unknown field(s) {', '.join(map(repr, unknown))}; "
                                       f"allowed: {', '.join(_FIELDS)}")
        cores = spec.get("cpu_cores", 1.0)
        if isinstance(cores, bool) or not isinstance(cores, (int, float)) or not math.isfinite(cores) \
                or cores <= 0:
            raise InvalidArgumentError(f"requirements: cpu_cores={cores!r} must be a number > 0")
        if topology is not None and cores > len(topology.cpus):
            raise InvalidArgumentError(f"requirements: cpu_cores={cores!r} is impossible; this process may use "
                                       f"{len(topology.cpus)} CPU(s) {sorted(topology.cpus)}")
        ints: dict[str, int] = {}
        for name, lo, hi in (("memory_mb", 0, None), ("priority", 0, 10), ("gpu_memory_mb", 0, None)):
            v = spec.get(name, getattr(cls, name))
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise InvalidArgumentError(f"requirements: {name}={v!r} must be an integer {rng}")
            ints[name] = v
        if topology is not None and ints["memory_mb"] * 1024**2 > topology.memory_total:
            raise InvalidArgumentError(f"requirements: memory_mb={ints['memory_mb']} is impossible; the host "
                                       f"has {topology.memory_total // 1024**2} MiB")
        if ints["gpu_memory_mb"] > 0 and not (host_has_gpu() if gpu is None else gpu):
            raise InvalidArgumentError(f"requirements: gpu_memory_mb={ints['gpu_memory_mb']} but this host has "
                                       "no GPU; use 0")
        return cls(float(cores), ints["memory_mb"], ints["priority"], ints["gpu_memory_mb"])

    @property
    def whole_cores(self) -> int:
        """CPUs rounded up: what an exclusive placement needs."""
        return max(1, math.ceil(self.cpu_cores - 1e-9))

    def to_dict(self) -> dict[str, Any]:
        return {"cpu_cores": self.cpu_cores, "memory_mb": self.memory_mb, "priority": self.priority,
                "gpu_memory_mb": self.gpu_memory_mb}


@dataclass(frozen=True)
class Agent:
    """A registered agent as seen at one moment (a snapshot; registry calls return fresh ones).

    Attributes:
        agent_id / process / requirements: as registered.
        cpus: CPUs it is allowed to run on after the last applied plan (``None`` before any plan).
        exclusive: whether those CPUs are its alone.
        numa_node: node of its placement (``None`` if it spans nodes or was never placed).
        registered_at: wall-clock seconds.
    """

    agent_id: str
    process: AgentProcess
    requirements: Requirements
    registered_at: float
    cpus: frozenset[int] | None = None
    exclusive: bool = False
    numa_node: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def start_time(self) -> int:
        return self.process.start_time

    @property
    def priority(self) -> int:
        return self.requirements.priority

    def to_dict(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "pid": self.pid, "start_time": self.start_time,
                "requirements": self.requirements.to_dict(), "registered_at": self.registered_at,
                "cpus": None if self.cpus is None else sorted(self.cpus), "exclusive": self.exclusive,
                "numa_node": self.numa_node}


class AgentRegistry:
    """Thread-safe id -> :class:`Agent` map with pid-reuse-safe identities."""

    def __init__(self, topology: Topology | None = None, *, gpu: bool | None = None) -> None:
        self.topology = topology
        self._gpu = gpu
        self._agents: dict[str, Agent] = {}
        self._lock = threading.RLock()

    def register(self, agent_id: str, requirements: Mapping[str, Any] | Requirements | None,
                 pid: int) -> Agent:
        """Add an agent; errors leave the registry unchanged.

        Raises:
            InvalidArgumentError: bad id or requirements. AlreadyExistsError: the id is taken.
            NotFoundError: ``pid`` is not a live process.
        """
        check_agent_id(agent_id)
        reqs = Requirements.parse(requirements, self.topology, gpu=self._gpu)
        proc = AgentProcess.of(pid)
        with self._lock:
            if agent_id in self._agents:
                old = self._agents[agent_id]
                raise AlreadyExistsError(f"agent_id {agent_id!r} is already registered (pid {old.pid})")
            agent = Agent(agent_id, proc, reqs, time.time())
            self._agents[agent_id] = agent
            return agent

    def unregister(self, agent_id: str) -> Agent:
        """Remove and return an agent. Raises :class:`NotFoundError` for an unknown id."""
        with self._lock:
            try:
                return self._agents.pop(agent_id)
            except KeyError:
                raise NotFoundError(f"agent_id {agent_id!r} is not registered") from None

    def get(self, agent_id: str) -> Agent:
        with self._lock:
            try:
                return self._agents[agent_id]
            except KeyError:
                known = ", ".join(sorted(self._agents)[:5]) or "none"
                raise NotFoundError(f"agent_id {agent_id!r} is not registered (known: {known}"
                                    f"{', ...' if len(self._agents) > 5 else ''})") from None

    def update(self, agent_id: str, **changes: Any) -> Agent:
        """Replace fields of the stored snapshot (placement after a plan is applied)."""
        with self._lock:
            agent = replace(self.get(agent_id), **changes)
            self._agents[agent_id] = agent
            return agent

    def set_requirements(self, agent_id: str, requirements: Mapping[str, Any] | Requirements) -> Agent:
        """Validate and replace an agent's requirements (resizing happens at the next rebalance)."""
        reqs = Requirements.parse(requirements, self.topology, gpu=self._gpu)
        return self.update(agent_id, requirements=reqs)

    def all(self) -> list[Agent]:
        """Agents in registration order."""
        with self._lock:
            return list(self._agents.values())

    def dead(self) -> list[Agent]:
        """Agents whose process exited (or whose pid was reused)."""
        return [a for a in self.all() if not a.process.is_alive()]

    def __len__(self) -> int:
        return len(self._agents)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents
