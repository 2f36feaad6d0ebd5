"""HardwareOptimizationMaster: the one-object facade of the reference API over the library's parts.

It wires the parts together rather than re-implementing them: placement goes to the
:class:`~sutazai_hwopt.resources.ResourcePoolCoordinator`, memory to the memory pool manager
(``sutazai_hwopt.memory``) and profiling to the :class:`~sutazai_hwopt.profiler.PerformanceProfiler`. The latter
two are imported when first used, so ``import sutazai_hwopt`` stays light and the master works (with a clear
error for those calls) where a part is not installed.

Callbacks: ``register_metric_callback(f)`` gets a metrics dict after every placement, verification and profile;
``register_alert_callback(f)`` gets an :class:`Alert` for oversubscription, drift, knobs the kernel refused,
exited agents and profiler findings. A callback that raises is logged and does not stop the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._validate import check_agent_id
from .config import HwoptConfig, load_config
from .errors import InvalidArgumentError, StateError
from .logs import get_logger

if TYPE_CHECKING:  # types only: the memory manager and the profiler are imported when first used
    from .memory import MemoryPoolManager
    from .profiler import PerformanceProfiler
    from .resources import ChangeHandle, Drift, KnobResult, Plan

__all__ = ["Alert", "HardwareOptimizationMaster", "auto_pool_bytes"]

log = get_logger("master")

ALERT_LEVELS = ("info", "warning", "critical")


def auto_pool_bytes(size_mb: int) -> int:
    """Heap bytes of a pool :meth:`HardwareOptimizationMaster.allocate_memory` creates: ``size_mb`` MiB plus
    headroom for the allocator's per-chunk headers (64 bytes each), so one block of the whole configured size fits
    (the seed allocates 1024 MiB in balanced mode, whose ``shared_memory_size_mb`` is 1024).

    The headroom is 1/256 of the size, at least 1 MiB: room for the headers of 16,384 blocks per MiB of it.
    """
    size = int(size_mb) * 1024**2
    return size + max(1024**2, size // 256)


@dataclass(frozen=True)
class Alert:
    """Something an operator should know: ``level`` (info/warning/critical), ``kind``, message and data."""

    level: str
    kind: str
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HardwareOptimizationMaster:
    """Facade: assign cores, allocate memory, profile, export statistics, and notify callbacks.

    Args:
        config: a resolved :class:`~sutazai_hwopt.config.HwoptConfig`; ``None`` resolves one from
            ``config_dir`` and ``mode`` (defaults, then the mode preset, then the files).
        mode: ``conservative`` / ``balanced`` / ``aggressive`` (see docs/modes.md).
        config_dir: directory with the JSON config files.
        state_dir: journal directory (default: the per-user state directory).
        coordinator: an existing coordinator to wrap (tests, embedding).
        memory_namespace: the shared-memory namespace of :meth:`allocate_memory`'s pools.

    Example:
        >>> optimizer = HardwareOptimizationMaster(mode="balanced")          # doctest: +SKIP
        >>> optimizer.assign_cores(agent_id="agent_001", num_cores=2, priority=8, pid=pid)  # doctest: +SKIP
        [1]
        >>> optimizer.export_stats("/tmp/stats.json")                          # doctest: +SKIP
    """

    def __init__(self, config: HwoptConfig | None = None, *, mode: str | None = None,
                 config_dir: str | os.PathLike[str] | None = None, state_dir: str | None = None,
                 coordinator: Any = None, memory_namespace: str = "sutazai") -> None:
        if config is None:
            config = load_config(config_dir, mode=mode)
        elif not isinstance(config, HwoptConfig):
            raise InvalidArgumentError(f"config must be an HwoptConfig, got {type(config).__name__}")
        self.config = config
        if coordinator is None:
            from .resources import ResourcePoolCoordinator

            coordinator = ResourcePoolCoordinator(config.hardware, state_dir=state_dir)
        self.coordinator = coordinator
        self._metric_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self._alert_callbacks: list[Callable[[Alert], None]] = []
        self._lock = threading.RLock()
        self._memory: MemoryPoolManager | None = None
        self.memory_namespace = memory_namespace
        self._profiler: PerformanceProfiler | None = None
        self._last_metrics: dict[str, Any] = {}
        self._last_profile: dict[str, Any] | None = None
        self.alerts: list[Alert] = []

    @property
    def mode(self) -> str:
        return self.config.mode

    # -- callbacks -----------------------------------------------------------------------------------------
    def register_metric_callback(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(metrics)`` after every placement, verify and profile; returns an unregister function."""
        return self._add_callback(self._metric_callbacks, callback)

    def register_alert_callback(self, callback: Callable[[Alert], None]) -> Callable[[], None]:
        """Call ``callback(alert)`` for each :class:`Alert`; returns an unregister function."""
        return self._add_callback(self._alert_callbacks, callback)

    def _add_callback(self, table: list[Any], callback: Any) -> Callable[[], None]:
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {type(callback).__name__}")
        with self._lock:
            table.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in table:
                    table.remove(callback)

        return remove

    def _emit_metrics(self, metrics: dict[str, Any]) -> None:
        self._last_metrics = metrics
        for cb in list(self._metric_callbacks):
            try:
                cb(metrics)
            except Exception:
                log.exception("metric callback %r raised; ignored", cb)

    def _alert(self, level: str, kind: str, message: str, **data: Any) -> None:
        alert = Alert(level, kind, message, data)
        with self._lock:
            self.alerts = [*self.alerts[-999:], alert]
        getattr(log, "warning" if level != "info" else "info")("%s: %s", kind, message)
        for cb in list(self._alert_callbacks):
            try:
                cb(alert)
            except Exception:
                log.exception("alert callback %r raised; ignored", cb)

    # -- placement -----------------------------------------------------------------------------------------
    def assign_cores(self, agent_id: str, num_cores: float, priority: int = 5, *, pid: int | None = None,
                     memory_mb: int = 0, strategy: str = "priority") -> list[int]:
        """Register (or resize) an agent and re-plan every agent's placement; returns the agent's CPUs.

        Args:
            agent_id: the agent. num_cores: CPUs wanted. priority: 0..10.
            pid: the agent's process; default the calling process (the reference API is called by each agent
                for itself).
            memory_mb: expected memory (NUMA placement). strategy: ``priority``, ``load_based``, ``numa``...

        Raises:
            InvalidArgumentError: bad requirement (names the field); NotFoundError: dead pid;
            KernelPermissionError / PlatformError: the kernel refused (the whole placement was rolled back).
        """
        reqs = {"cpu_cores": num_cores, "priority": priority, "memory_mb": memory_mb}
        coord = self.coordinator
        if agent_id in coord.registry:
            previous = coord.agent(agent_id).requirements
            coord.update_requirements(agent_id, reqs)
            try:
                plan = coord.rebalance_resources(strategy=strategy)
            except BaseException:
                coord.update_requirements(agent_id, previous)
                raise
        else:
            coord.register_agent(agent_id, reqs, pid=os.getpid() if pid is None else pid)
            try:
                plan = coord.rebalance_resources(strategy=strategy)
            except BaseException:
                coord.unregister_agent(agent_id, restore=False)
                raise
        self._after_plan(plan)
        return sorted(plan.placements[agent_id].cpus)

    def release_agent(self, agent_id: str) -> None:
        """Unregister an agent and restore its process's previous settings."""
        self.coordinator.unregister_agent(agent_id, restore=True)

    def rebalance(self, strategy: str = "load_based", *, dry_run: bool = False) -> Plan:
        """Re-plan every agent (see :meth:`ResourcePoolCoordinator.rebalance_resources`)."""
        plan: Plan = self.coordinator.rebalance_resources(strategy=strategy, dry_run=dry_run)
        if not dry_run:
            self._after_plan(plan)
        return plan

    def _after_plan(self, plan: Plan) -> None:
        for w in plan.warnings:
            self._alert("warning", "oversubscription", w, ratio=plan.allocation.oversubscription)
        refused = [r for r in plan.results if r.status == "not permitted"]
        if refused:
            self._alert("warning", "knob_not_permitted",
                        f"{len(refused)} knob change(s) not permitted by the kernel",
                        knobs=sorted({r.knob for r in refused}))
        self._emit_metrics({"kind": "placement", "timestamp": time.time(), **plan.summary()})

    def verify(self) -> list[Drift]:
        """Check every applied knob against the kernel; alerts on drift and on exited agents."""
        drift: list[Drift] = self.coordinator.verify()
        bad = [d for d in drift if d.drifted]
        if bad:
            self._alert("warning", "drift", f"{len(bad)} knob(s) drifted from the applied value",
                        drift=[d.to_dict() for d in bad[:20]])
        gone = sorted({d.agent_id for d in drift if d.error == "process gone" and d.agent_id})
        if gone:
            self._alert("info", "agent_exited", f"{len(gone)} agent(s) exited: {', '.join(gone[:10])}",
                        agents=gone)
        self._emit_metrics({"kind": "verify", "timestamp": time.time(), "checked": len(drift),
                            "drifted": len(bad)})
        return drift

    def heal(self) -> ChangeHandle | None:
        """Re-apply drifted knobs (one transaction); ``None`` when nothing drifted."""
        handle: ChangeHandle | None = self.coordinator.heal()
        return handle

    def rollback(self) -> list[KnobResult]:
        """Restore every value the library changed (journal-wide)."""
        results: list[KnobResult] = self.coordinator.rollback()
        return results

    # -- memory --------------------------------------------------------------------------------------------
    def _memory_manager(self) -> MemoryPoolManager:
        if self._memory is None:
            try:
                import importlib

                memory = importlib.import_module("sutazai_hwopt.memory")
            except ModuleNotFoundError as exc:
                if exc.name not in ("sutazai_hwopt.memory",):
                    raise
                raise StateError("the memory pool manager (sutazai_hwopt.memory) is not installed; "
                                 "allocate_memory needs it") from None
            cls = getattr(memory, "MemoryPoolManager", None)
            if cls is None:
                raise StateError("sutazai_hwopt.memory has no MemoryPoolManager; allocate_memory needs it")
            self._memory = cls(self.memory_namespace, config=self.config)
        return self._memory

    def allocate_memory(self, agent_id: str, size_mb: int, pool: str = "shared") -> str:
        """Allocate ``size_mb`` MiB for an agent in shared-memory pool ``pool``; returns the block id.

        The pool is created on first use with the mode's ``shared_memory_size_mb`` plus allocator headroom
        (:func:`auto_pool_bytes`), so a block of the whole configured size fits. Fill the block through
        ``master.memory.view(agent_id, block_id)`` and seal it (see docs/memory.md).

        Raises:
            InvalidArgumentError: bad size or pool. StateError: the memory pool manager is not installed.
            PoolExhaustedError: the pool is full.
        """
        if isinstance(size_mb, bool) or not isinstance(size_mb, int) or size_mb <= 0:
            raise InvalidArgumentError(f"size_mb must be a positive integer, got {size_mb!r}")
        if not isinstance(pool, str) or not pool:
            raise InvalidArgumentError(f"pool must be a non-empty string, got {pool!r}")
        check_agent_id(agent_id)
        manager = self._memory_manager()
        from .errors import AlreadyExistsError, NotFoundError

        try:
            return manager.allocate_memory(agent_id, size_mb * 1024**2, pool_id=pool)
        except NotFoundError:
            if pool in manager.pools():
                raise
        try:
            manager.create_pool(pool, size=auto_pool_bytes(self.config.hardware.shared_memory_size_mb))
        except AlreadyExistsError:
            pass  # another process created it meanwhile
        return manager.allocate_memory(agent_id, size_mb * 1024**2, pool_id=pool)

    @property
    def memory(self) -> MemoryPoolManager:
        """The memory pool manager (started on first use)."""
        return self._memory_manager()

    # -- profiling -----------------------------------------------------------------------------------------
    def _profiler_instance(self) -> PerformanceProfiler:
        if self._profiler is None:
            try:
                from .profiler import PerformanceProfiler
            except ModuleNotFoundError as exc:
                if not str(exc.name).startswith("sutazai_hwopt.profiler"):
                    raise
                raise StateError("the profiler (sutazai_hwopt.profiler) is not installed; profile_system "
                                 "needs it") from None
            self._profiler = PerformanceProfiler(self.coordinator, config=self.config)
        return self._profiler

    async def profile_system_async(self, duration: float = 60.0) -> dict[str, Any]:
        """Profile the host and every registered agent for ``duration`` seconds (asyncio version)."""
        report: dict[str, Any] = await self._profiler_instance().run_comprehensive_analysis(duration=duration)
        self._last_profile = report
        for b in report.get("bottlenecks", []):
            level = "critical" if b.get("severity") in ("critical", "high") else "warning"
            self._alert(level, "bottleneck", str(b.get("message") or b.get("description") or b.get("type")),
                        bottleneck=b)
        self._emit_metrics({"kind": "profile", "timestamp": time.time(),
                            "system_metrics": report.get("system_metrics", {})})
        return report

    def register_detector(self, name: str, fn: Callable[..., Any]) -> None:
        """Add the bottleneck type ``name``, found by ``fn(system_metrics, agent_profiles)``, to this master's
        profiler (see :meth:`PerformanceProfiler.register_detector`): :meth:`profile_system` reports its findings
        and raises an alert for each, like the built-in ones."""
        self._profiler_instance().register_detector(name, fn)

    def profile_system(self, duration: float = 60.0) -> dict[str, Any]:
        """Profile for ``duration`` seconds and return the profiler's report (blocking).

        Raises:
            StateError: called inside a running event loop (use :meth:`profile_system_async`) or no profiler.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.profile_system_async(duration))
        raise StateError("profile_system() blocks; inside an event loop await profile_system_async()")

    # -- statistics ----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Everything :meth:`export_stats` writes, as a dict."""
        coord = self.coordinator
        drift = coord.verify()
        return {
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "mode": self.mode,
            "config": self.config.to_dict(),
            "resources": coord.stats(),
            "knobs": coord.knob_report(),
            "verify": {"checked": len(drift), "drifted": sum(d.drifted for d in drift),
                       "drift": [d.to_dict() for d in drift if d.drifted]},
            "last_metrics": self._last_metrics,
            "last_profile_summary": None if self._last_profile is None else
            {k: self._last_profile.get(k) for k in ("samples", "duration_s", "bottlenecks")},
            "alerts": [a.to_dict() for a in self.alerts[-100:]],
        }

    def export_stats(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`stats` as JSON to ``path`` (mode 0600) and return the path."""
        p = Path(path)
        data = json.dumps(self.stats(), indent=2, default=str)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.chmod(p, 0o600)
        return p

    def close(self) -> None:
        """Close the profiler and memory manager if they were started (placement stays; see rollback())."""
        for part in (self._profiler, self._memory):
            close = getattr(part, "close", None)
            if close is not None:
                close()
        self._profiler = self._memory = None
        self.coordinator.close()

    def __enter__(self) -> HardwareOptimizationMaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
