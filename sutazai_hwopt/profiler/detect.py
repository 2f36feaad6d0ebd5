"""Bottleneck detection: the USE method per resource plus per-agent findings.

USE (Brendan Gregg, "Thinking Methodically about Performance", CACM 56(2), 2013): for each resource check
Utilization, Saturation and Errors. Saturation comes first from Linux pressure stall information
(Documentation/accounting/psi.rst): the share of wall time in which some (or all) runnable tasks were
stalled on CPU, memory or I/O. The profiler computes it over its own sampling interval from the PSI
``total`` counters, so it reacts within one interval instead of the ~10 s of ``avg10``; where PSI is
missing, run-queue length over CPU count and swap activity stand in.

Per agent: *cpu_starvation* from run-queue wait (``/proc/<pid>/schedstat``: time runnable but not running),
*memory_leak* from a sustained RSS rise, *io_thrashing* from storage bytes and major faults, and
*context_switch_storm* from the switch rate. Detection is a pure function of the two metric dicts, so tests
feed it recorded or synthetic numbers without timing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import HardwareSection
from ..errors import InvalidArgumentError

__all__ = ["AGENT_TYPES", "BOTTLENECK_TYPES", "HOST_TYPES", "MODE_PSI_SCALE", "SEVERITIES", "Bottleneck",
           "Thresholds", "detect_bottlenecks"]

SEVERITIES = ("low", "medium", "high", "critical")
HOST_TYPES = ("high_cpu_usage", "memory_pressure", "io_saturation", "cpu_steal", "network_errors")
AGENT_TYPES = ("cpu_starvation", "memory_leak", "io_thrashing", "context_switch_storm")
#: Every type the detector can report (the eliminator also accepts its own extra types).
BOTTLENECK_TYPES = HOST_TYPES + AGENT_TYPES

MiB = 1024.0**2


@dataclass(frozen=True)
class Thresholds:
    """Detection thresholds; the defaults are tuned on the fault-injection suite (benches/fault_injection.py)."""

    cpu_psi_some_pct: float = 25.0  # share of time some task waited for a CPU
    cpu_util_pct: float = 85.0  # utilisation that, with any CPU pressure, counts as saturated (max_cpu_usage)
    cpu_hog_percent: float = 25.0  # an agent above this (% of one core) is named as a consumer, never starved
    mem_psi_some_pct: float = 10.0
    mem_psi_full_pct: float = 5.0
    mem_used_pct: float = 85.0  # hardware.max_memory_usage of the balanced mode
    io_psi_full_pct: float = 20.0
    io_psi_some_pct: float = 40.0
    io_agent_bps: float = 4 * MiB  # an agent above this is named as an I/O consumer
    steal_pct: float = 20.0
    starvation_wait_share: float = 0.5  # waited at least as long as it ran
    starvation_wait_ratio: float = 0.5  # seconds of run-queue wait per second (main thread)
    leak_min_intervals: int = 2  # consecutive growing intervals
    leak_min_growth_bytes: float = 16 * MiB
    leak_min_rate_bps: float = 1 * MiB
    slow_leak_rate_bps: float = 8 * 1024.0  # long-window trend (~0.7 GB/day)
    slow_leak_r2: float = 0.8
    slow_leak_span_s: float = 120.0
    slow_leak_growth_bytes: float = 16 * MiB
    io_thrash_bps: float = 16 * MiB
    io_thrash_major_faults_ps: float = 200.0
    ctx_storm_ps: float = 10_000.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidArgumentError(f"threshold {k} must be a finite number >= 0, got {v!r}")

    @classmethod
    def for_config(cls, hardware: HardwareSection) -> Thresholds:
        """The thresholds a configuration implies: the usage limits and the mode's sensitivity.

        ``max_cpu_usage`` is the utilisation that, with CPU pressure, counts as saturated; ``max_memory_usage``
        the memory use that counts as pressure by itself. The mode scales the pressure (PSI) thresholds:
        conservative reacts to less stall time, aggressive tolerates more (:data:`MODE_PSI_SCALE`); the defaults
        are the balanced mode's.
        """
        scale = MODE_PSI_SCALE[hardware.mode]
        psi = {k: getattr(cls, k) * scale for k in ("cpu_psi_some_pct", "mem_psi_some_pct", "mem_psi_full_pct",
                                                     "io_psi_full_pct", "io_psi_some_pct")}
        return cls(cpu_util_pct=_percent(hardware.max_cpu_usage), mem_used_pct=_percent(hardware.max_memory_usage),
                   **psi)


#: How each mode scales the pressure thresholds (stall-time shares): below 1 reacts earlier.
MODE_PSI_SCALE = {"conservative": 0.75, "balanced": 1.0, "aggressive": 1.5}


def _percent(limit: float) -> float:
    """A usage limit as a percentage: a fraction (0.85, as the reference config writes it) or a percent (85)."""
    return limit * 100.0 if limit <= 1.0 else float(limit)


@dataclass
class Bottleneck:
    """One finding: what, how bad, the numbers behind it and the agents involved."""

    type: str
    severity: str
    resource: str
    evidence: dict[str, float]
    agents: list[str] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sev(value: float, steps: tuple[float, float, float]) -> str:
    """Severity from how far ``value`` is past the threshold: steps are the medium/high/critical cut-offs."""
    if value >= steps[2]:
        return "critical"
    if value >= steps[1]:
        return "high"
    if value >= steps[0]:
        return "medium"
    return "low"


def _num(m: Mapping[str, Any], key: str, where: str) -> float:
    """``m[key]`` as a float; NaN when absent or None; InvalidArgumentError when it is not a number."""
    v = m.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidArgumentError(f"{where}[{key!r}] must be a number, got {v!r}")
    return float(v)


def _section(m: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = m.get(key, {})
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise InvalidArgumentError(f"{where}[{key!r}] must be a mapping, got {type(v).__name__}")
    return v


def _top(profiles: Mapping[str, Mapping[str, float]], key: str, floor: float, n: int = 5) -> list[str]:
    ranked = sorted(((p[key], a) for a, p in profiles.items() if p.get(key, math.nan) >= floor), reverse=True)
    return [a for _, a in ranked[:n]]


def _check_agents(agent_profiles: Any) -> dict[str, dict[str, float]]:
    if agent_profiles is None:
        return {}
    if not isinstance(agent_profiles, Mapping):
        raise InvalidArgumentError(
            f"agent_profiles must be a mapping of agent id -> metrics, got {type(agent_profiles).__name__}")
    out: dict[str, dict[str, float]] = {}
    for aid, prof in agent_profiles.items():
        if not isinstance(aid, str):
            raise InvalidArgumentError(f"agent_profiles keys must be agent id strings, got {aid!r}")
        if not isinstance(prof, Mapping):
            raise InvalidArgumentError(f"agent_profiles[{aid!r}] must be a mapping, got {type(prof).__name__}")
        vals: dict[str, float] = {}
        for key in ("cpu_percent", "rss_bytes", "run_wait_ratio", "wait_share", "read_bps", "write_bps",
                    "ctx_switches_ps", "involuntary_ctx_ps", "major_faults_ps", "rss_growth_bytes",
                    "rss_growth_intervals", "rss_slope_bps", "rss_trend_bps", "rss_trend_r2",
                    "rss_trend_span_s"):
            vals[key] = _num(prof, key, f"agent_profiles[{aid!r}]")
        alive = prof.get("alive", True)
        if alive is False or alive == 0:
            continue
        out[aid] = vals
    return out


def detect_bottlenecks(system_metrics: Mapping[str, Any] | None,
                       agent_profiles: Mapping[str, Mapping[str, Any]] | None,
                       thresholds: Thresholds | None = None) -> list[Bottleneck]:
    """Findings for the host (USE per resource) and for each agent, most severe first.

    Args:
        system_metrics: ``{"cpu": {...}, "memory": {...}, "disk": {...}, "network": {...}, "pressure":
            {"cpu": {"some": pct, ...}, ...}}`` as built by :meth:`PerformanceProfiler.sample`; missing
            sections or keys mean "not measured" and skip that check.
        agent_profiles: agent id -> per-agent metrics (see ``docs/profiler.md`` for the keys).
        thresholds: overrides of the defaults.

    Raises:
        InvalidArgumentError: a section is not a mapping or a value is not a number (nothing is reported).
    """
    th = thresholds or Thresholds()
    if system_metrics is None:
        system_metrics = {}
    if not isinstance(system_metrics, Mapping):
        raise InvalidArgumentError(f"system_metrics must be a mapping, got {type(system_metrics).__name__}")
    profiles = _check_agents(agent_profiles)
    cpu = _section(system_metrics, "cpu", "system_metrics")
    mem = _section(system_metrics, "memory", "system_metrics")
    net = _section(system_metrics, "network", "system_metrics")
    psi = _section(system_metrics, "pressure", "system_metrics")
    psi_cpu = _section(psi, "cpu", "system_metrics['pressure']")
    psi_mem = _section(psi, "memory", "system_metrics['pressure']")
    psi_io = _section(psi, "io", "system_metrics['pressure']")
    found: list[Bottleneck] = []

    hogs = set(_top(profiles, "cpu_percent", th.cpu_hog_percent))

    # CPU: utilisation, saturation (PSI some, else run queue / cores), errors (steal)
    util = _num(cpu, "utilization", "system_metrics['cpu']")
    sat = _num(psi_cpu, "some", "system_metrics['pressure']['cpu']")
    ncpu = _num(cpu, "count", "system_metrics['cpu']")
    runq = _num(cpu, "runnable", "system_metrics['cpu']")
    if math.isnan(sat) and ncpu > 0 and runq == runq:
        sat = max(0.0, (runq - ncpu) / ncpu * 100.0)
    if sat >= th.cpu_psi_some_pct and (math.isnan(util) or util >= th.cpu_util_pct * 0.5):
        found.append(Bottleneck(
            "high_cpu_usage", _sev(sat, (40.0, 60.0, 85.0)), "cpu",
            {"cpu_psi_some_pct": sat, "utilization_pct": util, "runnable": runq, "cpus": ncpu},
            _top(profiles, "cpu_percent", th.cpu_hog_percent),
            f"CPU saturated: tasks waited for a CPU {sat:.0f}% of the time"))
    steal = _num(cpu, "steal", "system_metrics['cpu']")
    if steal >= th.steal_pct:
        found.append(Bottleneck("cpu_steal", _sev(steal, (30.0, 50.0, 70.0)), "cpu", {"steal_pct": steal}, [],
                                f"hypervisor steals {steal:.0f}% of CPU time"))

    # Memory: utilisation (used %), saturation (PSI some/full), errors (none exposed cheaply)
    used = _num(mem, "used_percent", "system_metrics['memory']")
    msome = _num(psi_mem, "some", "system_metrics['pressure']['memory']")
    mfull = _num(psi_mem, "full", "system_metrics['pressure']['memory']")
    if msome >= th.mem_psi_some_pct or mfull >= th.mem_psi_full_pct or used >= th.mem_used_pct:
        level = max(msome if msome == msome else 0.0, 2 * (mfull if mfull == mfull else 0.0),
                    (used - th.mem_used_pct) * 5 if used == used else 0.0)
        growers = sorted(profiles, key=lambda a: -(profiles[a]["rss_slope_bps"]
                                                 if profiles[a]["rss_slope_bps"] == profiles[a]["rss_slope_bps"]
                                                 else -1.0))
        big = _top(profiles, "rss_bytes", 0.0, 3)
        agents = [a for a in growers[:3] if profiles[a]["rss_slope_bps"] > 0] or big
        found.append(Bottleneck(
            "memory_pressure", _sev(level, (20.0, 40.0, 60.0)), "memory",
            {"used_pct": used, "memory_psi_some_pct": msome, "memory_psi_full_pct": mfull}, agents,
            "memory is saturated: tasks stall on reclaim or memory is nearly full"))

    # I/O: saturation from PSI (full = every runnable task stalled on I/O)
    isome = _num(psi_io, "some", "system_metrics['pressure']['io']")
    ifull = _num(psi_io, "full", "system_metrics['pressure']['io']")
    if ifull >= th.io_psi_full_pct or isome >= th.io_psi_some_pct:
        found.append(Bottleneck(
            "io_saturation", _sev(max(isome, 2 * ifull if ifull == ifull else 0.0), (50.0, 70.0, 90.0)), "io",
            {"io_psi_some_pct": isome, "io_psi_full_pct": ifull},
            sorted(_top(profiles, "write_bps", th.io_agent_bps) + _top(profiles, "read_bps", th.io_agent_bps),
                   key=lambda a: -(profiles[a]["write_bps"] + profiles[a]["read_bps"]))[:5],
            f"I/O saturated: tasks stalled on I/O {isome:.0f}% of the time"))

    # Network errors (the E of USE for the NICs)
    errs = _num(net, "errors_ps", "system_metrics['network']")
    drops = _num(net, "drops_ps", "system_metrics['network']")
    if errs > 0 or drops > 0:
        found.append(Bottleneck("network_errors", _sev((errs if errs == errs else 0) + (drops if drops == drops
                                                       else 0), (10.0, 100.0, 1000.0)), "network",
                                {"errors_ps": errs, "drops_ps": drops}, [], "NIC errors or drops"))

    # Per-agent findings
    for aid, p in sorted(profiles.items()):
        share, wait = p["wait_share"], p["run_wait_ratio"]
        # a consumer is the cause, not a victim: its waits come from its own parallelism or from being a hog
        if aid not in hogs and share >= th.starvation_wait_share and wait >= th.starvation_wait_ratio:
            found.append(Bottleneck(
                "cpu_starvation", _sev(share, (0.6, 0.75, 0.9)), "cpu",
                {"wait_share": share, "run_wait_ratio": wait, "cpu_percent": p["cpu_percent"]}, [aid],
                f"{aid} waited on a run queue {share * 100:.0f}% of the time it wanted a CPU"))
        growth, intervals, slope = p["rss_growth_bytes"], p["rss_growth_intervals"], p["rss_slope_bps"]
        trend, r2, span = p["rss_trend_bps"], p["rss_trend_r2"], p["rss_trend_span_s"]
        if (intervals >= th.leak_min_intervals and growth >= th.leak_min_growth_bytes
                and slope >= th.leak_min_rate_bps):
            found.append(Bottleneck(
                "memory_leak", _sev(slope, (8 * MiB, 32 * MiB, 128 * MiB)), "memory",
                {"rss_bytes": p["rss_bytes"], "rss_growth_bytes": growth, "rss_slope_bps": slope,
                 "growth_intervals": intervals}, [aid],
                f"{aid} RSS grew {growth / MiB:.0f} MiB over {intervals:.0f} intervals"))
        elif (trend >= th.slow_leak_rate_bps and r2 >= th.slow_leak_r2 and span >= th.slow_leak_span_s
              and trend * span >= th.slow_leak_growth_bytes):
            found.append(Bottleneck(
                "memory_leak", _sev(trend, (256 * 1024.0, MiB, 4 * MiB)), "memory",
                {"rss_bytes": p["rss_bytes"], "rss_trend_bps": trend, "rss_trend_r2": r2, "trend_span_s": span},
                [aid], f"{aid} RSS rises steadily: {trend / 1024:.0f} KiB/s over {span:.0f} s (R^2 {r2:.2f})"))
        io = (p["read_bps"] if p["read_bps"] == p["read_bps"] else 0.0) + (
            p["write_bps"] if p["write_bps"] == p["write_bps"] else 0.0)
        majf = p["major_faults_ps"]
        if io >= th.io_thrash_bps or majf >= th.io_thrash_major_faults_ps:
            found.append(Bottleneck(
                "io_thrashing", _sev(io, (32 * MiB, 96 * MiB, 256 * MiB)), "io",
                {"read_bps": p["read_bps"], "write_bps": p["write_bps"], "major_faults_ps": majf,
                 "io_psi_some_pct": isome}, [aid],
                f"{aid} moves {io / MiB:.0f} MiB/s to or from storage"))
        ctx = p["ctx_switches_ps"]
        if ctx >= th.ctx_storm_ps:
            found.append(Bottleneck(
                "context_switch_storm", _sev(ctx, (3 * th.ctx_storm_ps, 10 * th.ctx_storm_ps,
                                                   30 * th.ctx_storm_ps)), "cpu",
                {"ctx_switches_ps": ctx, "involuntary_ctx_ps": p["involuntary_ctx_ps"]}, [aid],
                f"{aid} switches context {ctx:.0f} times per second"))
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    found.sort(key=lambda b: (order[b.severity], b.type))
    return found
