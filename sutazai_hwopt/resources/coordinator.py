"""ResourcePoolCoordinator: registers agent processes, plans their placement and enforces it through the kernel.

Everything it changes goes through one :class:`~.transactions.Transactor` and the write-ahead
:class:`~.journal.Journal`, so ``rollback()`` — here, or on a new coordinator after this process was killed —
restores every previous value. Other components (the bottleneck eliminator) use the same path through
:meth:`ResourcePoolCoordinator.apply_change`. Planning is in :mod:`.allocation`, :mod:`.strategies` and
:mod:`.planning`, drift detection in :mod:`.verify`: functions of data; this class gathers their inputs and does
the side effects (applying, remembering the last plan).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

from ..config import ConfigSource, HardwareSection, section_of
from ..errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from ..logs import get_logger
from .identity import AgentProcess
from .journal import Journal
from .knobs import AVAILABLE, Knob, default_knobs
from .planning import Plan, exited_agents, make_plan
from .registry import Agent, AgentRegistry, Requirements
from .strategies import (
    Allocator,
    ProcLoadSampler,
    Scheduler,
    builtin_allocators,
    builtin_schedulers,
    plugin_name,
)
from .topology import Topology, read_topology
from .transactions import Change, ChangeHandle, KnobResult, Transactor
from .verify import Drift, SettingKey, find_drifts, heal_changes, read_settings

__all__ = ["ResourcePoolCoordinator"]

log = get_logger("resources")


class ResourcePoolCoordinator:
    """Place agent processes on this host's CPUs and undo every change it made.

    Args:
        config: the whole config or its ``hardware`` section (``None``: defaults, mode ``balanced``).
        topology: the machine to plan for (``None``: read this host).
        state_dir: journal directory (overrides ``config.state_dir``; ``None``: per-user default).
        knobs: extra knobs (name -> object with the :class:`~.knobs.Knob` protocol).
        load_source: ``f(agents) -> {agent_id: cores}`` measured CPU load for ``strategy="load_based"``
            (``None``: the built-in /proc sampler, see :mod:`.strategies`).
        clock: monotonic clock (tests pass :class:`~sutazai_hwopt.testing.FakeClock`).
        gpu: override GPU detection (tests).

    Example:
        >>> coord = ResourcePoolCoordinator(state_dir=tmp)                     # doctest: +SKIP
        >>> coord.register_agent("agent_001", {"cpu_cores": 2, "priority": 8}, pid=pid)  # doctest: +SKIP
        >>> plan = coord.rebalance_resources(strategy="priority")            # doctest: +SKIP
        >>> coord.rollback()                                                  # doctest: +SKIP
    """

    def __init__(self, config: HardwareSection | ConfigSource = None, *, topology: Topology | None = None,
                 state_dir: str | None = None, knobs: Mapping[str, Knob] | None = None,
                 load_source: Callable[[Sequence[Agent]], Mapping[str, float]] | None = None,
                 clock: Callable[[], float] = time.monotonic, gpu: bool | None = None) -> None:
        self.config = section_of(config, HardwareSection)
        if self.config.scheduler_policy in ("SCHED_FIFO", "SCHED_RR") and not self.config.allow_realtime:
            from ..errors import ConfigError

            raise ConfigError(f"scheduler_policy {self.config.scheduler_policy!r} is real-time; set "
                              "allow_realtime=true to permit it", key="scheduler_policy")
        self.topology = topology if topology is not None else read_topology()
        self.journal = Journal(state_dir if state_dir is not None else self.config.state_dir)
        table = default_knobs(self.config.allow_realtime)
        table.update(knobs or {})
        self.transactor = Transactor(self.journal, table)
        self.registry = AgentRegistry(self.topology, gpu=gpu)
        self.clock = clock
        self._load_source = load_source
        self._lock = threading.RLock()
        self._allocators: dict[str, Allocator] = dict(builtin_allocators())
        self._schedulers: dict[str, Scheduler] = dict(builtin_schedulers())
        self._expected: dict[SettingKey, tuple[str | None, Any]] = {}
        self._last_plan: Plan | None = None

    # -- registry ------------------------------------------------------------------------------------------
    def register_agent(self, agent_id: str, requirements: Mapping[str, Any] | Requirements | None = None,
                       *, pid: int | None = None) -> Agent:
        """Register process ``pid`` as agent ``agent_id``; nothing is changed on the process yet.

        ``pid`` defaults to the calling process, as in the seed's ``coordinator.register_agent("agent_001", {...})``
        (an agent registering itself; the same default as ``HardwareOptimizationMaster.assign_cores``).

        Raises:
            InvalidArgumentError: unknown/negative/impossible requirement (the message names the field).
            AlreadyExistsError: ``agent_id`` is taken. NotFoundError: ``pid`` is not a live process.
        """
        agent = self.registry.register(agent_id, requirements, os.getpid() if pid is None else pid)
        log.info("registered %s pid %d %s", agent_id, agent.pid, agent.requirements.to_dict())
        return agent

    def unregister_agent(self, agent_id: str, *, restore: bool = True) -> Agent:
        """Forget an agent; with ``restore`` (default) first roll back what was changed on its process."""
        agent = self.registry.get(agent_id)
        if restore:
            # Its process's knobs and its own cgroup files/dirs (path changes carry the agent id, no pid).
            ids = [e.id for e in self.journal.active()
                   if e.agent_id == agent_id and (e.pid is None or e.pid == agent.pid)]
            if ids:
                self.transactor.rollback(ids=ids)
        with self._lock:
            self._expected = {k: v for k, v in self._expected.items() if v[0] != agent_id}
        return self.registry.unregister(agent_id)

    def agents(self) -> list[Agent]:
        """Registered agents (snapshots) in registration order."""
        return self.registry.all()

    def agent(self, agent_id: str) -> Agent:
        """One agent. Raises :class:`NotFoundError` for an unknown id."""
        return self.registry.get(agent_id)

    def update_requirements(self, agent_id: str, requirements: Mapping[str, Any] | Requirements) -> Agent:
        """Change what an agent asks for; the next rebalance resizes it in place (no restart)."""
        return self.registry.set_requirements(agent_id, requirements)

    def prune_dead(self) -> list[str]:
        """Unregister agents whose process exited; returns their ids."""
        gone = [a.agent_id for a in self.registry.dead()]
        for agent_id in gone:
            self.unregister_agent(agent_id, restore=True)
        return gone

    # -- generic, journaled changes (also for other components) --------------------------------------------
    def register_knob(self, knob: Knob) -> None:
        """Add a custom knob (must also be registered in a process that rolls it back)."""
        if knob.name in self.transactor.knobs:
            raise AlreadyExistsError(f"knob {knob.name!r} is already registered")
        self.transactor.knobs[knob.name] = knob

    def apply_change(self, change: Change, *, dry_run: bool = False) -> ChangeHandle:
        """Apply one journaled change; ``handle.rollback()`` undoes exactly it. See :meth:`apply_changes`."""
        return self.apply_changes([change], dry_run=dry_run)

    def apply_changes(self, changes: Iterable[Change], *, dry_run: bool = False) -> ChangeHandle:
        """Apply changes all-or-nothing through the journal (knobs not permitted/available are reported).

        Raises:
            InvalidArgumentError, NotFoundError, KernelPermissionError, PlatformError: see
            :meth:`.transactions.Transactor.apply`; on any of them no change of the set remains applied.
        """
        handle = self.transactor.apply(changes, dry_run=dry_run)
        if not dry_run:
            self._remember(handle.results)
        return handle

    def _remember(self, results: Sequence[KnobResult]) -> None:
        with self._lock:
            for r in results:
                if r.status in ("applied", "unchanged"):
                    self._expected[(r.knob, r.pid, r.path)] = (r.agent_id, r.new)

    def rollback(self, *, owner: str | None = None, txn: str | None = None,
                 agent_id: str | None = None) -> list[KnobResult]:
        """Restore every previous value still in the journal (all, or one owner's / transaction's / agent's).

        Works on a new coordinator after the one that applied the changes was killed: the journal is on disk.
        Raises :class:`~sutazai_hwopt.errors.PlatformError` if some values could not be restored.
        """
        ids = None
        if agent_id is not None:
            ids = [e.id for e in self.journal.active() if e.agent_id == agent_id]
        results = self.transactor.rollback(ids=ids, owner=owner, txn=txn)
        with self._lock:
            undone = {(r.knob, r.pid, r.path) for r in results}
            self._expected = {k: v for k, v in self._expected.items() if k not in undone}
        return results

    # -- capabilities --------------------------------------------------------------------------------------
    def knob_report(self, pid: int | None = None) -> dict[str, dict[str, str]]:
        """Per knob: ``available`` / ``not permitted`` / ``not available`` on this host, with the reason.

        ``pid``: probe against that process (default: a registered agent if any, else this process).
        """
        from .cgroups_plan import cgroup_report

        if pid is None:
            agents = self.agents()
            pid = agents[0].pid if agents else None
        proc = AgentProcess.of(pid) if pid is not None else None
        out: dict[str, dict[str, str]] = {}
        for name in ("affinity", "nice", "sched_policy", "ionice", "thp_disabled"):
            knob = self.transactor.knobs[name]
            if proc is None:
                out[name] = {"status": AVAILABLE, "reason": "no process given to probe"}
                continue
            status, why = knob.probe(proc, None)
            out[name] = {"status": status, "reason": why}
        out.update(cgroup_report(self.topology.cgroups, self.config))
        return out

    # -- planning and applying -----------------------------------------------------------------------------
    def register_custom_allocator(self, name: Any, allocator: Any = None) -> str:
        """Add an allocation strategy usable as ``rebalance_resources(strategy=name)``; returns the name.

        Two forms: ``register_custom_allocator(name, allocator)``, or the seed's ``register_custom_allocator(
        allocator)``, whose name is the object's ``name`` attribute, else its ``__name__``, else its class name.
        ``allocator`` follows :class:`~.strategies.Allocator`: ``allocate(topology, demands, config)`` returns
        an :class:`~.allocation.Allocation`. Its result is validated (CPUs allowed, none empty, exclusive CPUs
        not shared) before anything is applied.
        """
        return self._register(self._allocators, "allocator", name, allocator, Allocator)

    def register_custom_scheduler(self, name: Any, scheduler: Any = None) -> str:
        """Add a scheduling strategy (nice / policy / I/O class per agent), chosen by ``scheduler=name``;
        returns the name.

        Two forms, as :meth:`register_custom_allocator`: ``(name, scheduler)`` or the seed's ``(scheduler)``.
        ``scheduler`` follows :class:`~.strategies.Scheduler`: ``settings(demand, placement, config)`` returns
        :class:`~.strategies.SchedSettings`.
        """
        return self._register(self._schedulers, "scheduler", name, scheduler, Scheduler)

    @staticmethod
    def _register(table: dict[str, Any], kind: str, name: Any, obj: Any, proto: Any) -> str:
        if obj is None and not isinstance(name, str):   # the one-argument form: the name comes from the object
            name, obj = plugin_name(name), name
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"{kind} name must be a non-empty string, got {name!r}")
        if name in table:
            raise AlreadyExistsError(f"{kind} {name!r} is already registered")
        if not isinstance(obj, proto):
            raise InvalidArgumentError(f"{kind} {name!r} ({type(obj).__name__}) does not follow the "
                                       f"{proto.__name__} protocol")
        table[name] = obj
        return name

    def strategies(self) -> dict[str, list[str]]:
        """Names of the allocators and schedulers available."""
        return {"allocators": sorted(self._allocators), "schedulers": sorted(self._schedulers)}

    def plan(self, strategy: str = "priority", *, scheduler: str = "priority") -> Plan:
        """Compute a :class:`~.planning.Plan` for the registered agents without touching anything."""
        if strategy not in self._allocators:
            raise InvalidArgumentError(f"strategy {strategy!r} is unknown; known: "
                                       f"{', '.join(sorted(self._allocators))}")
        if scheduler not in self._schedulers:
            raise InvalidArgumentError(f"scheduler {scheduler!r} is unknown; known: "
                                       f"{', '.join(sorted(self._schedulers))}")
        allocator = self._allocators[strategy]
        agents = self.agents()
        loads = self.measure_loads(agents) if getattr(allocator, "needs_load", False) else {}
        return make_plan(self.topology, self.config, agents, strategy, allocator, self._schedulers[scheduler],
                         loads)

    def measure_loads(self, agents: Sequence[Agent] | None = None) -> dict[str, float]:
        """Measured CPU load per agent in cores (from ``load_source`` or the built-in sampler)."""
        agents = self.agents() if agents is None else agents
        if self._load_source is not None:
            return dict(self._load_source(agents))
        sampler = getattr(self, "_sampler", None)
        if sampler is None:
            sampler = self._sampler = ProcLoadSampler(self.clock)
        return sampler.sample(agents)

    def apply(self, plan: Plan, *, dry_run: bool = False, file: TextIO | None = None) -> Plan:
        """Apply a plan as one transaction; ``dry_run`` prints it (to ``file``, default stdout) and touches
        nothing. Returns the plan with per-knob results filled in.

        Raises:
            NotFoundError: an agent of the plan has exited since it was computed (nothing is applied).
        """
        result = self._apply_plan(plan, dry_run=dry_run)
        if dry_run:
            print(result.format(), file=file if file is not None else sys.stdout)
        return result

    def rebalance_resources(self, strategy: str = "load_based", dry_run: bool = False, *,
                            scheduler: str = "priority") -> Plan:
        """Compute a placement with ``strategy`` (``load_based``, ``priority``, ``numa`` or a registered
        one) and apply it; with ``dry_run`` only return the plan (with what each knob would do).
        """
        return self._apply_plan(self.plan(strategy, scheduler=scheduler), dry_run=dry_run)

    def _apply_plan(self, plan: Plan, *, dry_run: bool) -> Plan:
        """Apply (or with ``dry_run`` only probe) every change of ``plan``; on success record the placement."""
        exited = exited_agents(plan)
        if exited:
            aid = exited[0]
            raise NotFoundError(f"agent {aid!r}: pid {plan.agents[aid].pid} has exited; unregister it "
                                "(or call prune_dead()) and plan again")
        handle = self.apply_changes(plan.changes, dry_run=dry_run)
        plan.results, plan.dry_run, plan.applied, plan.txn = handle.results, dry_run, not dry_run, handle.txn
        if not dry_run:
            for aid, p in plan.placements.items():
                if aid in self.registry:
                    self.registry.update(aid, cpus=p.cpus, exclusive=p.exclusive, numa_node=p.numa_node)
            with self._lock:
                self._last_plan = plan
            log.info("plan %s applied: %s", plan.strategy, plan.knob_status())
            for w in plan.warnings:
                log.warning("%s", w)
        return plan

    # -- verify / heal -------------------------------------------------------------------------------------
    def verify(self) -> list[Drift]:
        """Per knob and agent: expected value, value the kernel holds now, and whether it drifted.

        Covers every knob applied through this coordinator, and those of an earlier run still in the journal.
        """
        expected = self.expected_values()
        processes = {a.pid: a.process for a in self.agents()}
        for e in self.journal.active():  # processes known only from the journal (applied by an earlier run)
            if e.pid is not None and e.start_time is not None:
                processes.setdefault(e.pid, AgentProcess(e.pid, e.start_time))
        observed = read_settings(list(expected), self.transactor.knobs, processes)
        return find_drifts(expected, observed)

    def heal(self) -> ChangeHandle | None:
        """Re-apply every drifted knob (one journaled transaction); ``None`` when nothing drifted.

        The transaction's undo restores the drifted value, then older ones.
        """
        drifted = [d for d in self.verify() if d.drifted and not d.error]
        if not drifted:
            return None
        for d in drifted:
            log.warning("drift: %s of %s (pid %s) is %r, expected %r; re-applying", d.knob, d.agent_id, d.pid,
                        d.actual, d.expected)
        return self.apply_changes(heal_changes(drifted))

    def expected_values(self) -> dict[SettingKey, tuple[str | None, Any]]:
        """What was last applied: (knob, pid, path) -> (agent_id, value).

        Starts from the journal's active changes (latest per setting), so a new coordinator — after a restart —
        verifies what a previous one applied; values applied in this process take precedence.
        """
        out: dict[SettingKey, tuple[str | None, Any]] = {}
        for e in self.journal.active():
            out[(e.knob, e.pid, e.path)] = (e.agent_id, e.new)
        with self._lock:
            out.update(self._expected)
        return out

    def stats(self) -> dict[str, Any]:
        """A JSON-ready summary: topology, agents, last plan, journal size."""
        plan = self._last_plan
        return {
            "topology": self.topology.describe(),
            "agents": [a.to_dict() for a in self.agents()],
            "last_plan": None if plan is None else plan.summary(),
            "journal_active_changes": len(self.journal.active()),
            "mode": self.config.mode,
        }

    def close(self) -> None:
        """Nothing to release today (the journal holds no open file); kept for symmetry with other parts."""

    def __enter__(self) -> ResourcePoolCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_agent(self, agent_id: str) -> Agent:
        try:
            return self.registry.get(agent_id)
        except NotFoundError:
            raise
