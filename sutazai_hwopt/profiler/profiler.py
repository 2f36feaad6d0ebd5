"""PerformanceProfiler: sample the host and every agent cheaply, keep bounded history, find bottlenecks.

One pass (:meth:`PerformanceProfiler.sample`) reads the host counters and every agent process and child
through held /proc descriptors (see :mod:`sutazai_hwopt._native.procscan`), derives rates, and appends one
row to numpy ring buffers. Dicts for callers (``system_metrics``, ``agent_profiles``) are built only when
asked for, so the 1 Hz loop itself allocates almost nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import check_agent_id, finite
from ..config import ConfigSource, HardwareSection, section_of
from ..errors import InvalidArgumentError, NotFoundError
from ..logs import get_logger
from .detect import SEVERITIES, Bottleneck, Thresholds, detect_bottlenecks
from .detectors import Detector, DetectorRegistry, most_severe_first
from .host import HOST_COLUMNS, H, HostSampler
from .predict import anomaly_scores, time_to_exhaustion
from .ring import Ring
from .sampler import AGENT_COLUMNS, A, AgentSampler

__all__ = ["PerformanceProfiler", "Sample"]

log = get_logger("profiler")

_ANOMALY_FEATURES = [A[c] for c in ("cpu_percent", "rss_bytes", "run_wait_ratio", "read_bps", "write_bps",
                                    "ctx_switches_ps", "major_faults_ps")]
_RSS_STEP = 64 * 1024.0  # growth below this between two samples is noise, not a trend


def _column_fit(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and R^2 of every column of ``y`` against ``t``, ignoring NaNs (NaN if < 3 points)."""
    m = np.isfinite(y)
    n = m.sum(axis=0)
    tt = np.where(m, (t - t[0])[:, None], 0.0)
    yy = np.where(m, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tm = tt.sum(axis=0) / n
        ym = yy.sum(axis=0) / n
        dt = np.where(m, tt - tm, 0.0)
        dy = np.where(m, yy - ym, 0.0)
        var = (dt * dt).sum(axis=0)
        slope = (dt * dy).sum(axis=0) / var
        ss_tot = (dy * dy).sum(axis=0)
        resid = np.where(m, dy - slope * dt, 0.0)
        r2 = np.where(ss_tot > 0, 1.0 - (resid * resid).sum(axis=0) / ss_tot, 1.0)
    ok = (n >= 3) & (var > 0)
    return np.where(ok, slope, np.nan), np.where(ok, r2, np.nan)


def _column_slopes(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of every column of ``y`` against ``t``, ignoring NaNs (NaN if < 3 points)."""
    return _column_fit(t, y)[0]


class Sample:
    """One sampling pass. ``system_metrics`` is ready; ``agent_profiles`` is built on first access."""

    def __init__(self, profiler: PerformanceProfiler, t: float, system_metrics: dict[str, Any]) -> None:
        self._profiler = profiler
        self.timestamp = t
        self.system_metrics = system_metrics
        self._profiles: dict[str, dict[str, Any]] | None = None

    @property
    def agent_profiles(self) -> dict[str, dict[str, Any]]:
        if self._profiles is None:
            self._profiles = self._profiler.agent_profiles()
        return self._profiles


def _agent_records(coordinator: Any) -> dict[str, int]:
    """agent id -> pid from a coordinator's ``agents()`` (objects with agent_id/pid, or mappings)."""
    out: dict[str, int] = {}
    for rec in coordinator.agents():
        if isinstance(rec, Mapping):
            aid, pid = rec.get("agent_id"), rec.get("pid")
        else:
            aid, pid = getattr(rec, "agent_id", None), getattr(rec, "pid", None)
        if isinstance(aid, str) and isinstance(pid, int) and pid > 0:
            out[aid] = pid
    return out


class PerformanceProfiler:
    """Measures the host and the agents; detects and predicts bottlenecks.

    Args:
        coordinator: a ``ResourcePoolCoordinator``; its registered agents are profiled (re-read every pass).
        agents: ``{"agent_001": pid, ...}`` when there is no coordinator.
        interval_s: sampling period of :meth:`run_comprehensive_analysis` (default: the config's
            ``sample_interval_s``, 1 s).
        history: samples kept in the ring buffers (constant memory however long the run).
        slow_budget_s: CPU seconds per pass for the slow path (USS/PSS, open files, cgroup).
        thresholds: detection thresholds.
        disk_paths: file systems watched for free space (disk-fill prediction).
        clock: monotonic clock (tests pass ``FakeClock``).

    Raises:
        InvalidArgumentError: malformed ``agents`` or numbers. NotFoundError: an agent's pid does not exist.

    Example:
        >>> import os
        >>> with PerformanceProfiler(agents={"me": os.getpid()}) as prof:
        ...     _ = prof.sample(); s = prof.sample()
        ...     sorted(s.agent_profiles) == ["me"]
        True
    """

    def __init__(self, coordinator: Any = None, *, agents: Mapping[str, int] | None = None,
                 interval_s: float | None = None, history: int = 600, slow_budget_s: float = 0.0005,
                 thresholds: Thresholds | None = None, disk_paths: Iterable[str] = ("/",),
                 config: HardwareSection | ConfigSource = None, clock: Callable[[], float] = time.monotonic,
                 seed: int = 0) -> None:
        if agents is not None and not isinstance(agents, Mapping):
            raise InvalidArgumentError(f"agents must be a mapping of agent id -> pid, got {type(agents).__name__}")
        for aid, pid in (agents or {}).items():
            if not isinstance(aid, str) or not aid:
                raise InvalidArgumentError(f"agents keys must be non-empty strings, got {aid!r}")
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
                raise InvalidArgumentError(f"agents[{aid!r}] must be a positive pid, got {pid!r}")
        if coordinator is not None and not callable(getattr(coordinator, "agents", None)):
            raise InvalidArgumentError("coordinator must have an agents() method (a ResourcePoolCoordinator)")
        if interval_s is None:
            interval_s = section_of(config, HardwareSection).sample_interval_s
        if not isinstance(interval_s, (int, float)) or not (0 < interval_s <= 3600):
            raise InvalidArgumentError(f"interval_s must be in (0, 3600] seconds, got {interval_s!r}")
        if not isinstance(slow_budget_s, (int, float)) or not (0 <= slow_budget_s <= 1):
            raise InvalidArgumentError(f"slow_budget_s must be in [0, 1], got {slow_budget_s!r}")
        for aid, pid in (agents or {}).items():
            if not os.path.exists(f"/proc/{pid}"):
                raise NotFoundError(f"agents[{aid!r}]: no process with pid {pid}")
        self.coordinator = coordinator
        self.interval_s = float(interval_s)
        self.thresholds = thresholds or Thresholds.for_config(section_of(config, HardwareSection))
        self.seed = seed
        self.detectors = DetectorRegistry()   # custom bottleneck types (register_detector)
        self._clock = clock
        self._host = HostSampler(disk_paths=tuple(disk_paths), clock=clock)
        self._agents = AgentSampler(capacity=max(16, 2 * len(agents or {})), slow_budget_s=slow_budget_s,
                                    clock=clock)
        self._host_ring = Ring(history, (len(HOST_COLUMNS),), np.float64)
        self._agent_ring = Ring(history, (max(8, len(agents or {})), len(AGENT_COLUMNS)), np.float32)
        self._last_metrics: dict[str, Any] = {}
        self._closed = False
        self.passes = 0
        self.cpu_seconds = 0.0  # CPU time spent inside sample()
        for aid, pid in (agents or {}).items():
            self._add(aid, pid)

    # -- lifecycle and registry -------------------------------------------------------------------------
    def __enter__(self) -> PerformanceProfiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every held /proc descriptor (idempotent)."""
        if not self._closed:
            self._agents.close()
            self._host.close()
            self._closed = True

    def _add(self, agent_id: str, pid: int) -> bool:
        st = self._agents.add(agent_id, pid)
        if st is None:
            log.warning("agent %s: pid %d is gone; not profiled", agent_id, pid)
            return False
        self._agent_ring.widen(self._agents.n_index)
        return True

    def add_agent(self, agent_id: str, pid: int) -> None:
        """Start profiling one more agent process (and, from the next pass, its children)."""
        check_agent_id(agent_id)
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidArgumentError(f"pid must be a positive integer, got {pid!r}")
        if agent_id in self._agents.agents:
            self._agents.remove(agent_id)
        if not self._add(agent_id, pid):
            raise NotFoundError(f"agent {agent_id!r}: no process with pid {pid}")

    def remove_agent(self, agent_id: str) -> None:
        """Stop profiling ``agent_id``."""
        if agent_id not in self._agents.agents:
            raise NotFoundError(f"agent {agent_id!r} is not profiled; known: {sorted(self._agents.agents)[:10]}")
        self._agents.remove(agent_id)

    @property
    def agents(self) -> dict[str, int]:
        """The live profiled agents: id -> pid."""
        return {a: s.pid for a, s in self._agents.agents.items() if s.alive}

    def _sync_registry(self) -> None:
        if self.coordinator is None:
            return
        want = _agent_records(self.coordinator)
        have = {a: s.pid for a, s in self._agents.agents.items()}
        for aid in have.keys() - want.keys():
            self._agents.remove(aid)
        for aid, pid in want.items():
            if have.get(aid) != pid:
                if aid in have:
                    self._agents.remove(aid)
                self._add(aid, pid)

    # -- sampling ---------------------------------------------------------------------------------------
    def sample(self) -> Sample:
        """Take one sampling pass of the host and every agent; returns it (and keeps it in the rings)."""
        if self._closed:
            from ..errors import StateError

            raise StateError("the profiler is closed")
        c0 = time.thread_time()
        self._sync_registry()
        t, hrow, metrics = self._host.sample()
        _, amat = self._agents.sample()
        self._host_ring.push(t, hrow)
        self._agent_ring.widen(amat.shape[0])
        row = np.full(self._agent_ring.row_shape, np.nan, dtype=np.float32)
        row[: amat.shape[0]] = amat
        self._agent_ring.push(t, row)
        self._last_metrics = metrics
        self.passes += 1
        self.cpu_seconds += time.thread_time() - c0
        return Sample(self, t, metrics)

    @property
    def slow_path_cpu_seconds(self) -> float:
        return self._agents.slow_cpu_s

    def system_metrics(self) -> dict[str, Any]:
        """The host metrics of the latest pass ({} before the first)."""
        return self._last_metrics

    def agent_profiles(self, window: int = 60) -> dict[str, dict[str, Any]]:
        """Per-agent metrics of the latest pass plus trends over the last ``window`` passes."""
        times, rows = self._agent_ring.window(window)
        out: dict[str, dict[str, Any]] = {}
        if len(times) == 0:
            return out
        rss = rows[:, :, A["rss_bytes"]].astype(np.float64)
        grew = np.diff(rss, axis=0) > _RSS_STEP if len(times) > 1 else np.zeros((0, rss.shape[1]), bool)
        run = np.cumprod(grew[::-1], axis=0).sum(axis=0) if len(grew) else np.zeros(rss.shape[1])
        slopes = _column_slopes(times, rss)
        # long trend over the whole ring: slow leaks that never reach the fast rule's rate
        lt, lrows = self._agent_ring.window()
        lrss = lrows[:, :, A["rss_bytes"]].astype(np.float64)
        lslope, lr2 = _column_fit(lt, lrss)
        lspan = float(lt[-1] - lt[0]) if len(lt) > 1 else 0.0
        latest = rows[-1]
        for st in list(self._agents.agents.values()):
            i = st.index
            if i >= latest.shape[0]:
                continue
            p: dict[str, Any] = {c: float(latest[i, k]) for k, c in enumerate(AGENT_COLUMNS)}
            p["alive"] = bool(st.alive)
            k = int(run[i])
            if k > 0:
                growth = float(rss[-1, i] - rss[-1 - k, i])
                span = float(times[-1] - times[-1 - k])
                slope = growth / span if span > 0 else math.nan
            else:
                growth, slope = 0.0, float(slopes[i])
            p.update({"rss_trend_bps": float(lslope[i]), "rss_trend_r2": float(lr2[i]), "rss_trend_span_s": lspan})
            p.update({"pid": st.pid, "pids": [st.pid, *st.children], "rss_growth_intervals": float(k),
                      "rss_growth_bytes": growth, "rss_slope_bps": slope, "uss_bytes": st.uss_bytes,
                      "pss_bytes": st.pss_bytes, "swap_bytes": st.swap_bytes, "open_files": st.open_files,
                      "cgroup": st.cgroup.path if st.cgroup else None,
                      "container": self._agents.container_of(st),
                      "container_id": st.cgroup.container_id if st.cgroup else None})
            out[st.agent_id] = p
        return out

    # -- analysis ---------------------------------------------------------------------------------------
    def detect_bottlenecks(self, system_metrics: Mapping[str, Any] | None = None,
                           agent_profiles: Mapping[str, Mapping[str, Any]] | None = None) -> list[Bottleneck]:
        """USE-method and per-agent findings (see :func:`~sutazai_hwopt.profiler.detect.detect_bottlenecks`);
        without arguments, over the latest pass."""
        if system_metrics is None and agent_profiles is None:
            system_metrics, agent_profiles = self._last_metrics, self.agent_profiles()
        found = detect_bottlenecks(system_metrics, agent_profiles, self.thresholds)
        if len(self.detectors):
            found = most_severe_first(found + self.detectors.run(system_metrics, agent_profiles))
        return found

    def register_detector(self, name: str, fn: Detector) -> None:
        """Add the bottleneck type ``name``, found by ``fn(system_metrics, agent_profiles)`` on every detection
        pass (see :mod:`.detectors`); a detector that raises is logged and skipped, the others still run."""
        self.detectors.register(name, fn)

    def predict(self, window: int = 120, *, anomalies: bool = True) -> dict[str, Any]:
        """Time to exhaustion of memory and disk from the recent trend, per-agent RSS trends, anomaly scores."""
        t, h = self._host_ring.window(window)
        out: dict[str, Any] = {"memory": None, "disk": None, "agents": {}, "anomalies": {}}
        if len(t) >= 3:
            out["memory"] = time_to_exhaustion(t, h[:, H["mem_available"]])
            out["disk"] = time_to_exhaustion(t, h[:, H["disk_free"]])
        profiles = self.agent_profiles(window)
        avail = self._last_metrics.get("memory", {}).get("available", math.nan)
        for aid, p in profiles.items():
            slope = p["rss_slope_bps"]
            out["agents"][aid] = {"rss_slope_bps": slope,
                                  "seconds_to_exhaust_memory": avail / slope if slope > 0 and avail == avail
                                  else None}
        if anomalies:
            ta, rows = self._agent_ring.window(window)
            ids = [self._agents.state_at(i).agent_id for i in range(min(rows.shape[1], self._agents.n_index))]
            live = [i for i, a in enumerate(ids) if a in self._agents.agents and self._agents.agents[a].alive]
            if len(ta) >= 5 and live:
                win = rows[1:, live][:, :, _ANOMALY_FEATURES]  # first row has no rates yet
                out["anomalies"] = anomaly_scores(win, [ids[i] for i in live], seed=self.seed)
        return out

    def profile_agent_containers(self) -> dict[str, dict[str, Any]]:
        """Agents grouped by container (or by cgroup path when not in one), with summed CPU and memory."""
        groups: dict[str, dict[str, Any]] = {}
        for aid, p in self.agent_profiles(1).items():
            key = p["container"] or p["cgroup"] or "/"
            g = groups.setdefault(key, {"container": p["container"], "container_id": p["container_id"],
                                        "cgroup": p["cgroup"], "agents": [], "cpu_percent": 0.0,
                                        "rss_bytes": 0.0, "pss_bytes": 0.0})
            g["agents"].append(aid)
            for k in ("cpu_percent", "rss_bytes", "pss_bytes"):
                if p[k] == p[k]:
                    g[k] += p[k]
        return groups

    async def run_comprehensive_analysis(self, duration: float = 300.0, *,
                                         progress: Callable[[int, int], None] | None = None,
                                         interval_s: float | None = None) -> dict[str, Any]:
        """Sample for ``duration`` seconds, then return the report (findings seen, predictions, summary).

        ``progress(done, total)`` is called after every pass (the CLI draws a bar with it).
        """
        if not isinstance(duration, (int, float)) or not (0 <= duration <= 7 * 86400):
            raise InvalidArgumentError(f"duration must be in [0, 604800] seconds, got {duration!r}")
        step = self.interval_s if interval_s is None else float(interval_s)
        if not step > 0:
            raise InvalidArgumentError(f"interval_s must be > 0, got {interval_s!r}")
        total = max(1, round(duration / step) + 1)
        seen: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        start = self._clock()
        for i in range(total):
            s = self.sample()
            if i > 0:
                self._merge(seen, self.detect_bottlenecks(s.system_metrics, s.agent_profiles), s.timestamp)
            if progress is not None:
                progress(i + 1, total)
            if i + 1 < total:
                await asyncio.sleep(max(0.0, start + (i + 1) * step - self._clock()))
        self.last_report = self.report(list(seen.values()))
        return self.last_report

    @staticmethod
    def _merge(seen: dict[tuple[str, tuple[str, ...]], dict[str, Any]], found: list[Bottleneck], t: float) -> None:
        rank = {s: i for i, s in enumerate(SEVERITIES)}
        for b in found:
            key = (b.type, tuple(b.agents))
            e = seen.get(key)
            if e is None:
                seen[key] = {**b.to_dict(), "first_seen": t, "last_seen": t, "count": 1}
            else:
                e.update(last_seen=t, count=e["count"] + 1, evidence=b.evidence)
                if rank[b.severity] > rank[e["severity"]]:
                    e["severity"] = b.severity

    def report(self, bottlenecks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A JSON-ready summary: host statistics, agent summaries, findings, predictions, containers."""
        t, h = self._host_ring.window()
        host: dict[str, Any] = {}
        for k, c in enumerate(HOST_COLUMNS):
            col = h[:, k]
            col = col[np.isfinite(col)]
            if len(col):
                host[c] = {"mean": float(col.mean()), "p95": float(np.percentile(col, 95)), "max": float(col.max())}
        _, rows = self._agent_ring.window()
        agents: dict[str, Any] = {}
        for st in self._agents.agents.values():
            if st.index >= rows.shape[1]:
                continue
            r = rows[:, st.index]
            with np.errstate(all="ignore"):
                agents[st.agent_id] = {c: {"mean": float(np.nanmean(r[:, k])) if np.isfinite(r[:, k]).any() else None,
                                           "max": float(np.nanmax(r[:, k])) if np.isfinite(r[:, k]).any() else None}
                                       for k, c in enumerate(AGENT_COLUMNS)}
        if bottlenecks is None:
            bottlenecks = [dict(b.to_dict(), first_seen=self._last_metrics.get("timestamp"))
                           for b in self.detect_bottlenecks()] if self.passes > 1 else []
        return finite({
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "samples": len(t), "duration_s": float(t[-1] - t[0]) if len(t) > 1 else 0.0,
            "interval_s": self.interval_s, "host": host, "system_metrics": self._last_metrics,
            "agent_profiles": self.agent_profiles(), "agent_summary": agents, "bottlenecks": bottlenecks,
            "predictions": self.predict() if len(t) >= 3 else {},
            "containers": self.profile_agent_containers() if len(t) else {},
            "sampler": {"passes": self.passes, "cpu_seconds": self.cpu_seconds,
                        "slow_path_cpu_seconds": self.slow_path_cpu_seconds, "open_fds": self._agents.open_fds,
                        "ring_bytes": self._host_ring.nbytes + self._agent_ring.nbytes},
        })

    def export_results(self, path: str | os.PathLike[str], report: Mapping[str, Any] | None = None) -> Path:
        """Write ``report`` (default: the last analysis, else a fresh :meth:`report`) as JSON, mode 0600."""
        data = report if report is not None else getattr(self, "last_report", None) or self.report()
        p = Path(path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(finite(data), fh, indent=2, allow_nan=False)
        os.chmod(p, 0o600)
        return p
