"""Validation: measure a window before and after an action and decide whether to keep it.

Metric keys:

* ``pressure.cpu.some``, ``cpu.utilization``, ``memory.used_percent`` ... — a dotted path into the
  profiler's ``system_metrics``;
* ``agents:<id1,id2>:<field>`` — the sum of one agent-profile field over those agents;
* ``agents_except:<id1,id2>:<field>`` — the sum over every other live agent (e.g. how long everyone else
  waited for a CPU, the metric that deprioritising a hog should lower);
* ``custom:<name>`` — a value from a function another component registered; ``custom:<name>:<arg>`` calls
  it with one argument (e.g. ``custom:balancer.load:<backend>``, one backend's host-wide load).

The verdict (:func:`judge`) keeps an action only when its target moved the right way by more than the noise
floor and by at least ``min_improvement`` (relative), and no guard metric got worse by more than
``rollback_threshold`` (relative, plus the same noise floor).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["MetricSource", "ProfilerSource", "Verdict", "judge", "metric_value", "noise_floor"]


@runtime_checkable
class MetricSource(Protocol):
    """Something that can measure metric keys averaged over a window (seconds)."""

    async def measure(self, keys: Sequence[str], window_s: float) -> dict[str, float]: ...


def metric_value(key: str, system_metrics: Mapping[str, Any], agent_profiles: Mapping[str, Mapping[str, Any]],
                 custom: Mapping[str, Callable[[], float]] | None = None) -> float:
    """The value of ``key`` in one pass's metrics; NaN when it cannot be measured."""
    try:
        if key.startswith("custom:"):
            name = key[7:]
            fn = (custom or {}).get(name)
            if fn is None and ":" in name:  # custom:<name>:<arg> calls the metric <name> with <arg>
                base, arg = name.split(":", 1)
                fn2 = (custom or {}).get(base)
                return float(fn2(arg)) if fn2 is not None else math.nan  # type: ignore[call-arg]
            return float(fn()) if fn is not None else math.nan
        if key.startswith(("agents:", "agents_except:")):
            kind, ids, fld = key.split(":", 2)
            names = {i for i in ids.split(",") if i}
            if kind == "agents":
                chosen = [p for a, p in agent_profiles.items() if a in names]
            else:
                chosen = [p for a, p in agent_profiles.items() if a not in names and p.get("alive", True)]
            vals = [float(p[fld]) for p in chosen if isinstance(p.get(fld), (int, float))]
            vals = [v for v in vals if math.isfinite(v)]
            if kind == "agents" and not vals:
                return math.nan
            return float(sum(vals))
        node: Any = system_metrics
        for part in key.split("."):
            node = node[part]
        return float(node)
    except (KeyError, TypeError, ValueError, IndexError):
        return math.nan
    except Exception:  # a custom metric function failed: unmeasurable, not fatal
        return math.nan


def noise_floor(key: str) -> float:
    """Absolute change below which a metric is considered unchanged (sampling noise)."""
    f = key.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    if key.startswith("pressure.") or f in ("utilization", "used_percent", "cpu_percent", "some", "full"):
        return 1.0  # percentage points
    if f in ("wait_share", "run_wait_ratio"):
        return 0.02
    if f.endswith("_ps"):
        return 50.0
    if f.endswith(("_bps", "bytes", "available")):
        return 1024.0**2
    return 1e-9


@dataclass
class Verdict:
    keep: bool
    reason: str


def judge(target: str, increase: bool, guards: Sequence[str], before: Mapping[str, float],
          after: Mapping[str, float], *, rollback_threshold: float, min_improvement: float) -> Verdict:
    """Keep the action only if ``target`` improved and no guard got worse beyond the threshold."""
    b, a = before.get(target, math.nan), after.get(target, math.nan)
    if not (math.isfinite(b) and math.isfinite(a)):
        return Verdict(False, f"target {target} could not be measured (before {b}, after {a})")
    gain = (a - b) if increase else (b - a)
    floor = noise_floor(target)
    if gain <= floor or gain < min_improvement * max(abs(b), floor):
        return Verdict(False, f"target {target} did not improve: {b:.4g} -> {a:.4g}")
    for g in guards:
        if g == target:
            continue
        gb, ga = before.get(g, math.nan), after.get(g, math.nan)
        if math.isfinite(gb) and math.isfinite(ga) and ga > gb * (1 + rollback_threshold) + noise_floor(g):
            return Verdict(False, f"{g} got worse: {gb:.4g} -> {ga:.4g} (threshold {rollback_threshold:.0%})")
    return Verdict(True, f"target {target} improved: {b:.4g} -> {a:.4g}")


class ProfilerSource:
    """Measures keys by sampling a :class:`~sutazai_hwopt.profiler.PerformanceProfiler` over the window.

    The first pass only re-bases the profiler's rates (its previous pass may be old), then one pass every
    ``interval_s``; the window's value of a key is the mean over those passes.
    """

    def __init__(self, profiler: Any, *, interval_s: float = 1.0,
                 custom: Mapping[str, Callable[[], float]] | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.profiler = profiler
        self.interval_s = interval_s
        self.custom = custom if custom is not None else {}
        self._sleep = sleep

    async def measure(self, keys: Sequence[str], window_s: float) -> dict[str, float]:
        passes = max(1, round(window_s / self.interval_s)) if window_s > 0 else 1
        step = window_s / passes if window_s > 0 else 0.05
        self.profiler.sample()
        sums = dict.fromkeys(keys, 0.0)
        counts = dict.fromkeys(keys, 0)
        for _ in range(passes):
            await self._sleep(step)
            s = self.profiler.sample()
            profiles = s.agent_profiles
            for k in keys:
                v = metric_value(k, s.system_metrics, profiles, self.custom)
                if math.isfinite(v):
                    sums[k] += v
                    counts[k] += 1
        return {k: (sums[k] / counts[k] if counts[k] else math.nan) for k in keys}
