"""The host service's state and behaviour, independent of HTTP: what the daemon owns for the whole host.

It holds the :class:`~sutazai_hwopt.resources.ResourcePoolCoordinator` (agents, placement, journal), a
:class:`~sutazai_hwopt.profiler.PerformanceProfiler` over those agents, and the bottleneck eliminator. ``tick()``
is one 1 Hz pass: sample, keep a short history for the dashboard, detect bottlenecks and (with ``auto_fix``) let
the eliminator act. Every method is safe to call from the HTTP thread pool while the sampler runs: one lock
serialises them (each is short; none waits on I/O beyond /proc reads).

It renders nothing: the web layer (:mod:`.api`, :mod:`.dashboard`, :mod:`.metrics`) reads it through its public
methods, so the dependency goes from the presentation to the service and never back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._validate import finite as _finite
from ..config import HwoptConfig
from ..errors import HwoptError, InvalidArgumentError, NotFoundError, StateError
from ..logs import get_logger
from .agent_prefetch import prefetch_view
from .jobs import DroppedError, EliminationJobs, bottleneck_id, without_agents

if TYPE_CHECKING:
    from .namespace import OwnedNamespace

__all__ = ["HostService"]

_HISTORY = 600  # dashboard points (10 minutes at 1 Hz)
#: Detection runs every DETECT_EVERY passes (2 s at 1 Hz: inside the 3 s time-to-detect target, half the cost).
DETECT_EVERY = 2
#: A bottleneck that persists is handed to the eliminator again only after this long (its validation window
#: and the kernel's reaction need time; re-acting every pass would thrash).
ACTION_COOLDOWN_S = 30.0


class HostService:
    """Everything the host service does, callable without a server (the tests drive it directly)."""

    def __init__(self, config: HwoptConfig, *, auto_fix: bool | None = None, enable_all: bool = False,
                 state_dir: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from ..master import HardwareOptimizationMaster
        from ..profiler import PerformanceProfiler

        self.config = config
        self.log: logging.Logger = get_logger("master")
        self.auto_fix = config.eliminator.auto_fix if auto_fix is None else auto_fix
        self.enable_all = enable_all
        self._clock = clock
        self._lock = threading.RLock()
        self.started_at = time.time()
        self._t0 = clock()
        self.master = HardwareOptimizationMaster(config, state_dir=state_dir,
                                                 memory_namespace=config.cache.namespace)
        self.coordinator = self.master.coordinator
        self.profiler = PerformanceProfiler(coordinator=self.coordinator, config=config)
        self._measured: deque[tuple[float, dict[str, Any], dict[str, dict[str, Any]]]] = deque(maxlen=_HISTORY)
        self._measuring = 0  # validation windows open: tick() then also keeps agent profiles for them
        self._pass_done = threading.Condition(self._lock)
        self.eliminator = self._make_eliminator()
        self._work: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._bottlenecks: dict[str, dict[str, Any]] = {}
        self.actions: deque[dict[str, Any]] = deque(maxlen=200)
        self.ticks = 0
        self.baseline: dict[str, Any] = {}
        self.closed = False
        self._placement_dirty = False
        self._cache_tiers: dict[str, Any] = {}
        #: per-agent profiles of the latest pass that built them (every DETECT_EVERY passes); the views reuse
        #: them instead of rebuilding trends over 131 agents on every dashboard poll or scrape.
        self._latest_profiles: dict[str, dict[str, Any]] = {}
        self._last_acted: dict[str, float] = {}
        from .upkeep import Upkeep

        #: remedy providers (attached to the eliminator), periodic GC, predictions, anomaly scores
        self.upkeep = Upkeep(self)
        self.namespace: OwnedNamespace | None = None   # once own_namespace() ran (the daemon, at deploy)
        self.jobs = EliminationJobs(self._run_manual, log=self.log)  # POST /api/eliminate: consent, as a job
        #: what each agent reported about itself (host.agent_threads: thread-pool sizes, p99), until it leaves
        self.agent_reports: dict[str, dict[str, Any]] = {}
        self.effect_baseline: dict[str, Any] = {}  # host.effectiveness figures at deploy

    # -- lifecycle ------------------------------------------------------------------------------------------
    def _make_eliminator(self) -> Any:
        import dataclasses

        from ..eliminator import BottleneckEliminator

        settings = dataclasses.replace(self.config.eliminator, auto_fix=self.auto_fix)
        source = SamplerMetricSource(self)
        eliminator = BottleneckEliminator(settings, coordinator=self.coordinator, profiler=self.profiler,
                                          metric_source=source)
        source.custom = eliminator.custom_metrics
        return eliminator

    def own_namespace(self) -> dict[str, Any]:
        """Create (or take over) the namespace's shared tiers and default pools (:mod:`.namespace`)."""
        from .namespace import OwnedNamespace

        with self._lock:
            if self.namespace is None:
                self.namespace = OwnedNamespace(self.config)
            return self.fleet_config()

    def fleet_config(self) -> dict[str, Any]:
        """The configuration agents of the namespace use (``GET /api/config``), with its tiers and pools."""
        from .namespace import describe_unowned

        with self._lock:
            return self.namespace.describe() if self.namespace is not None else describe_unowned(self.config)

    def establish_baseline(self) -> dict[str, Any]:
        """Take the first samples (rates need two passes) and remember them as the baseline."""
        with self._lock:
            self.tick(detect=False)
            self.tick(detect=False)
            self.baseline = _finite(self.profiler.system_metrics())
            self.effect_baseline = self._effect_now()
            self.log.info("baseline established: %s", json.dumps(self._headline(self.baseline)))
            return self.baseline

    def apply_mode(self) -> dict[str, Any]:
        """Place the registered agents as the mode says (a journaled, reversible change)."""
        with self._lock:
            if not self.coordinator.agents():
                return {"applied": 0, "note": "no agents registered yet; placement happens on registration"}
            return self.optimize("priority", False)

    def close(self, *, rollback: bool = True) -> dict[str, Any]:
        """Stop: roll back every setting this service applied (unless told not to)."""
        with self._lock:
            if self.closed:
                return {"rolled_back": 0}
            self.closed = True
            self._pass_done.notify_all()
        self.jobs.close()
        if self._worker is not None:
            self._work.put(None)
            self._worker.join(timeout=60)
        with self._lock:
            restored = 0
            if rollback:
                restored = len(self.coordinator.rollback() or [])
            for tier in self._cache_tiers.values():
                tier.close()
            self._cache_tiers.clear()
            self.upkeep.close()
            if self.namespace is not None:
                self.namespace.close()   # the segments stay for a restart; `stop --purge` removes them
            self.profiler.close()
            self.master.close()
            self.coordinator.close()
            self.log.info("host service closed; %d settings rolled back", restored)
            return {"rolled_back": restored}

    # -- the 1 Hz pass --------------------------------------------------------------------------------------
    def tick(self, *, detect: bool = True) -> None:
        with self._lock:
            if self.closed:
                raise StateError("the host service is stopped")
            if self.coordinator.prune_dead():
                self._placement_dirty = True
                self._drop_gone()
            if self._placement_dirty and self.coordinator.agents():
                self._placement_dirty = False
                self.coordinator.rebalance_resources(strategy="priority", dry_run=False)
            self.upkeep.collect_if_due()
            sample = self.profiler.sample()
            metrics = sample.system_metrics
            self.ticks += 1
            self.history.append(_finite({"t": time.time(), **self._headline(metrics)}))
            profiles = None
            if self._measuring or self.ticks % DETECT_EVERY == 0:
                profiles = self._latest_profiles = self.profiler.agent_profiles()
            if self._measuring and profiles is not None:
                self._measured.append((self._clock(), metrics, profiles))
            self._pass_done.notify_all()
            if detect and self.ticks >= 3 and profiles is not None and self.ticks % DETECT_EVERY == 0:
                found = [*self.profiler.detect_bottlenecks(metrics, profiles), *self.upkeep.predicted()]
                self._bottlenecks = self._keyed(found)
                self.upkeep.annotate(self._bottlenecks)
                self.jobs.remember(self._bottlenecks)
                if self.auto_fix and self._bottlenecks:
                    self._auto_eliminate()

    @staticmethod
    def _headline(m: dict[str, Any]) -> dict[str, Any]:
        """The few host figures the dashboard charts over time."""
        cpu = m.get("cpu") or {}
        mem = m.get("memory") or {}
        psi = m.get("pressure") or {}
        disk = m.get("disk") or {}
        net = m.get("network") or {}
        return {
            "cpu_percent": cpu.get("utilization"), "iowait_percent": cpu.get("iowait"), "load1": cpu.get("load1"),
            "memory_percent": mem.get("used_percent"),
            "disk_read_bps": disk.get("read_bps"), "disk_write_bps": disk.get("write_bps"),
            "net_rx_bps": net.get("rx_bps"), "net_tx_bps": net.get("tx_bps"),
            "psi_cpu": (psi.get("cpu") or {}).get("some_avg10"),
            "psi_memory": (psi.get("memory") or {}).get("some_avg10"),
            "psi_io": (psi.get("io") or {}).get("some_avg10"),
        }

    @staticmethod
    def _keyed(found: Any) -> dict[str, dict[str, Any]]:
        """Findings as JSON-ready dicts keyed by a stable id (type, resource, agents): a persisting one keeps it."""
        out = {}
        for b in found:
            d = _finite(b.to_dict())
            out[bottleneck_id(d)] = d
        return out

    def _drop_gone(self) -> None:
        """Forget findings about agents that are all unregistered or dead: they are dropped, never retried."""
        registered = {a.agent_id for a in self.coordinator.agents()}
        self._bottlenecks = without_agents(self._bottlenecks, registered)
        self.jobs.forget_agents(registered)
        self.agent_reports = {a: r for a, r in self.agent_reports.items() if a in registered}

    def _live_finding(self, finding: dict[str, Any]) -> dict[str, Any] | None:
        """``finding`` with only its still-registered agents, or None when they are all gone."""
        with self._lock:
            registered = {a.agent_id for a in self.coordinator.agents()}
        return without_agents({"f": finding}, registered).get("f")

    def _auto_eliminate(self) -> None:
        """Queue each finding for the eliminator, at most once per cool-down while it persists.

        Eliminations run on a worker thread, outside the service lock: their validation windows last seconds
        and are measured from this sampler's own passes, which must keep running meanwhile.
        """
        now = self._clock()
        for bid, finding in list(self._bottlenecks.items()):
            if now - self._last_acted.get(bid, -math.inf) < ACTION_COOLDOWN_S:
                continue
            self._last_acted[bid] = now
            if self._worker is None:
                self._worker = threading.Thread(target=self._work_loop, name="hwopt-eliminator", daemon=True)
                self._worker.start()
            self._work.put({"bottleneck_id": bid, **finding})

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            bid = item.pop("bottleneck_id")
            live = self._live_finding(item)
            if live is None:
                self.log.info("auto elimination of %s (%s) dropped: its agents are gone", bid, item.get("type"))
                continue
            try:
                result = self._run_eliminator(live)
            except HwoptError as exc:
                self.log.warning("auto elimination of %s (%s) skipped: %s", bid, item.get("type"), exc)
                continue
            except Exception:  # keep the worker alive; the traceback goes to the log
                self.log.exception("auto elimination of %s failed", bid)
                continue
            with self._lock:
                self.actions.append({"bottleneck_id": bid, "auto": True, **_finite(result)})

    def _run_eliminator(self, finding: dict[str, Any], *, consent: bool = False) -> dict[str, Any]:
        """One elimination (apply, validate, keep or roll back); call it without holding the lock."""
        with self._lock:
            metrics = {**self.profiler.system_metrics(), "agents": finding.get("agents") or []}
        result = asyncio.run(self.eliminator.eliminate_bottleneck(finding["type"], metrics, consent=consent))
        return dict(result.to_dict())

    def _run_manual(self, bid: str, finding: dict[str, Any]) -> dict[str, Any]:
        """The body of one elimination job (:mod:`.jobs`): the operator consented, so the mode's risks run."""
        live = self._live_finding(finding)
        try:
            if live is None:
                raise NotFoundError("its agents are gone")
            result = {"bottleneck_id": bid, "auto": False, **_finite(self._run_eliminator(live, consent=True))}
        except (NotFoundError, InvalidArgumentError) as exc:
            if live is not None and self._live_finding(live) == live:
                raise  # not about departed agents: a real failure
            raise DroppedError(f"bottleneck {bid} dropped: its agents {finding.get('agents')} are no longer "
                               f"registered ({exc})") from None
        with self._lock:
            self.actions.append(result)
        return result

    # -- API operations -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return _finite({
                "running": not self.closed, "pid": os.getpid(), "mode": self.config.mode,
                "auto_fix": self.auto_fix, "uptime_s": self._clock() - self._t0, "started_at": self.started_at,
                "agents": len(self.coordinator.agents()), "samples": self.ticks,
                "bottlenecks": len(self._bottlenecks), "actions": len(self.actions),
                "services": self.services(),
            })

    def services(self) -> dict[str, str]:
        """Health of each component the host service runs."""
        return {"host": "ok" if not self.closed else "stopped",
                "profiler": "ok" if self.ticks else "starting",
                "eliminator": "auto" if self.auto_fix else "recommend"}

    def latest_profiles(self) -> dict[str, dict[str, Any]]:
        """Per-agent profiles as of the latest pass that built them (at most DETECT_EVERY passes old)."""
        with self._lock:
            if not self._latest_profiles and self.ticks:
                self._latest_profiles = self.profiler.agent_profiles()
            return self._latest_profiles

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            return _finite({"system": self.profiler.system_metrics(),
                            "agents": self.latest_profiles(),
                            "baseline": self.baseline, "effectiveness": self.effectiveness(),
                            "prefetch": prefetch_view(self.agent_reports)})

    def agents(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_finite({**a.to_dict(), "report": self.agent_reports.get(a.agent_id)})
                    for a in self.coordinator.agents()]

    def report_agent(self, agent_id: str, report: dict[str, Any]) -> dict[str, Any]:
        """Keep what a registered agent reports about itself (validated by ``agent_threads.check_report``)."""
        with self._lock:
            self.coordinator.agent(agent_id)  # NotFoundError for an unknown agent
            merged = {**self.agent_reports.get(agent_id, {}), **report, "reported_at": time.time()}
            if merged.get("p99_ms") is not None:  # the first p99 an agent reports is its baseline
                merged.setdefault("p99_ms_first", merged["p99_ms"])
            self.agent_reports[agent_id] = merged
            return dict(merged)

    def register_agent(self, agent_id: str, pid: int, requirements: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            agent = self.coordinator.register_agent(agent_id, requirements, pid=pid)
            self._placement_dirty = True  # placed by the next tick: one plan for a burst of registrations
            self.log.info("agent %s registered (pid %d)", agent_id, pid)
            return _finite(agent.to_dict())

    def unregister_agent(self, agent_id: str) -> dict[str, Any]:
        with self._lock:
            agent = self.coordinator.unregister_agent(agent_id, restore=True)
            self._drop_gone()
            return _finite(agent.to_dict())

    def bottlenecks(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._bottlenecks)

    def optimize(self, strategy: str, dry_run: bool) -> dict[str, Any]:
        """One pass: a placement plan (applied unless ``dry_run``) plus detection and the eliminator's advice."""
        with self._lock:
            if self.closed:
                raise StateError("the host service is stopped")
            plan = self.coordinator.rebalance_resources(strategy=strategy, dry_run=dry_run)
            found = self.profiler.detect_bottlenecks() if self.ticks >= 2 else []
            self._bottlenecks = self._keyed(found)
            self.jobs.remember(self._bottlenecks)
            recommended = []
            for bid, finding in self._bottlenecks.items():
                advice = self._recommend(finding)
                recommended.append({"bottleneck_id": bid, "type": finding.get("type"), "actions": advice})
            placement = {**plan.summary(), "placements": {
                aid: {"cpus": sorted(pl.cpus), "exclusive": pl.exclusive, "numa_node": pl.numa_node,
                      "quota": pl.quota, "note": pl.note} for aid, pl in plan.placements.items()}}
            return _finite({"strategy": strategy, "dry_run": dry_run, "placement": placement,
                            "bottlenecks": self._bottlenecks, "recommended": recommended})

    def _recommend(self, finding: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            actions = self.eliminator.recommend(finding["type"], {**self.profiler.system_metrics(),
                                                                  "agents": finding.get("agents") or []})
        except HwoptError as exc:
            return [{"error": str(exc)}]
        return [a.to_dict() for a in actions]

    def eliminate(self, bottleneck_id: str) -> dict[str, Any]:
        """Queue the eliminator on one detected bottleneck, with the operator's consent; returns the job at once.

        The job (``jobs.get(job_id)``, ``GET /api/jobs/{job_id}``) reports the validation outcome when done.
        Raises NotFoundError for an id that is neither in the latest pass nor seen recently.
        """
        with self._lock:
            if self.closed:
                raise StateError("the host service is stopped")
            finding = self._bottlenecks.get(bottleneck_id) or self.jobs.recent(bottleneck_id)
            if finding is None:
                raise NotFoundError(f"unknown bottleneck id {bottleneck_id!r}; GET /api/bottlenecks lists them")
        return self.jobs.submit(bottleneck_id, finding)

    # -- views ----------------------------------------------------------------------------------------------
    def dashboard_data(self) -> dict[str, Any]:
        with self._lock:
            cache, pools = self._cache_figures(), self._pool_figures()
            return _finite({
                "status": self.status(), "history": list(self.history),
                "agents": self.agents(), "load": self.latest_profiles(),
                "bottlenecks": self._bottlenecks, "actions": list(self.actions)[-50:],
                "cache": cache, "pools": pools, "effectiveness": self.effectiveness(cache, pools),
                "jobs": self.jobs.all()[-20:], "predictions": self.upkeep.view(),
                "namespace": {k: v for k, v in self.fleet_config().items() if k != "config"},
            })

    def _effect_now(self, cache: dict[str, Any] | None = None,
                    pools: dict[str, Any] | None = None) -> dict[str, Any]:
        from .effectiveness import snapshot

        return snapshot(self.profiler.system_metrics(), self.latest_profiles(),
                        self._cache_figures() if cache is None else cache,
                        self._pool_figures() if pools is None else pools)

    def effectiveness(self, cache: dict[str, Any] | None = None,
                      pools: dict[str, Any] | None = None) -> dict[str, Any]:
        """The baseline taken at deploy against now (:mod:`.effectiveness`)."""
        from .effectiveness import compare

        with self._lock:
            return _finite(compare(self.effect_baseline, self._effect_now(cache, pools), self.agent_reports))

    def _cache_figures(self) -> dict[str, Any]:
        """Host-wide figures of the namespace's shared cache tiers (L2, L3), read from their shared counters.

        L1 is private to each agent process and is not visible here; the tiers are attached only once an
        agent has created them.
        """
        from ..shm import list_segments

        present = set(list_segments(self.master.memory_namespace, "cache"))
        levels: dict[str, Any] = {}
        for level in ("l2", "l3"):
            if level not in present:
                continue
            try:
                tier = self._cache_tiers.get(level)
                if tier is None:
                    from ..cache.shared_index import MIN_TIER, SharedTier

                    tier = self._cache_tiers[level] = SharedTier(self.master.memory_namespace, level, MIN_TIER)
                st = tier.index.stats()
            except HwoptError as exc:
                levels[level.upper()] = {"error": str(exc)}
                continue
            lookups = st["hits"] + st["misses"]
            levels[level.upper()] = {"hit_ratio": st["hits"] / lookups if lookups else 0.0, "hits": st["hits"],
                                     "misses": st["misses"], "entries": st["entries"], "bytes": st["bytes"],
                                     "budget": tier.size, "evictions": st["evictions"]}
        return {"levels": levels} if levels else {}

    def _pool_figures(self) -> dict[str, Any]:
        """Usage, dedup and compression of every shared pool of the namespace (read from /dev/shm)."""
        from ..shm import list_segments

        names = list_segments(self.master.memory_namespace, "pool")
        if not names:  # attach the pool manager only once a pool exists
            return {}
        out = {}
        keep = ("capacity", "used", "free", "largest_free_block", "fragmentation", "blocks", "dedup_ratio",
                "compression_ratio", "logical_bytes", "physical_bytes")
        for pool_id in names:
            try:
                st = self.master.memory.stats(pool_id)
            except HwoptError as exc:  # destroyed meanwhile, or damaged: show why, keep serving
                out[pool_id] = {"error": str(exc)}
                continue
            out[pool_id] = {k: st[k] for k in keep}
        return out

    def figures(self) -> dict[str, Any]:
        """The headline figures at this moment, one consistent read (what ``GET /metrics`` exposes)."""
        with self._lock:
            return {"running": not self.closed, "agents": len(self.coordinator.agents()),
                    "host": dict(self.history[-1]) if self.history else {},
                    "profiles": self.latest_profiles(), "bottlenecks": dict(self._bottlenecks),
                    "actions": len(self.actions), "effectiveness": self.effectiveness(),
                    "prefetch": prefetch_view(self.agent_reports)}

    # -- measurement windows (the eliminator's validation) -----------------------------------------------
    def measure_window(self, window_s: float) -> list[tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
        """Block for ``window_s`` and return the passes that fell inside it: (system metrics, agent profiles).

        At least one pass falls in the window, however short it is. While a window is open every pass keeps
        the agent profiles. If no sampler loop runs (the service is driven directly, as in tests), the passes
        are taken here.
        """
        with self._lock:
            self._measuring += 1
            start = self._clock()
        try:
            self._wait_for_pass_after(start + max(window_s, 0.0))
            with self._lock:
                return [(m, p) for t, m, p in self._measured if t > start]
        finally:
            with self._lock:
                self._measuring -= 1

    def _wait_for_pass_after(self, until: float) -> None:
        """Block until a pass at or after ``until`` is recorded, taking passes here if no sampler runs."""
        period = self.config.hardware.sample_interval_s
        with self._pass_done:
            while not self.closed:
                last = self._measured[-1][0] if self._measured else -math.inf
                if last >= until:
                    return
                seen = len(self._measured), last
                self._pass_done.wait(timeout=max(0.01, min(until - self._clock(), 2.0 * period)) + 0.01)
                now_last = self._measured[-1][0] if self._measured else -math.inf
                if (len(self._measured), now_last) == seen and self._clock() >= min(until, last + 2.0 * period):
                    self.tick(detect=False)


class SamplerMetricSource:
    """The eliminator's validation windows, measured from the service's own 1 Hz passes.

    The eliminator would otherwise sample the profiler itself, racing the sampler; here it waits for the
    window to pass while the sampler keeps running, then averages the passes that fell inside it.

    Args:
        service: whose passes are measured (:meth:`HostService.measure_window`).
        custom: the ``custom:<name>`` metrics (the eliminator's :attr:`custom_metrics`, bound after it exists).
    """

    def __init__(self, service: HostService,
                 custom: Mapping[str, Callable[[], float]] | None = None) -> None:
        self.service = service
        self.custom: Mapping[str, Callable[[], float]] = custom if custom is not None else {}

    async def measure(self, keys: Sequence[str], window_s: float) -> dict[str, float]:
        from ..eliminator.validation import metric_value

        rows = await asyncio.to_thread(self.service.measure_window, window_s)
        out = {}
        for k in keys:
            vals = [metric_value(k, m, p, self.custom) for m, p in rows]
            vals = [v for v in vals if math.isfinite(v)]
            out[k] = sum(vals) / len(vals) if vals else math.nan
        return out
