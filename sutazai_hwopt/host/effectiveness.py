"""Optimization effectiveness: the figures taken at deploy (the baseline) against the same figures now.

The seed's dashboard promises this view. The figures are the ones the optimizer is meant to move: CPU
run-queue wait (the agents' schedstat wait share, and runnable tasks per CPU), pressure stall (PSI some avg10
of CPU, memory, I/O), memory in use and the bytes the pools' dedup saves, the hit ratio of each shared cache
level, and each agent's p99 latency where the agent reports one (``PUT /api/agents/{id}/report``).

Pure functions over what the service already reads, so ``/api/metrics``, ``/api/dashboard`` and ``/metrics``
show one computation. Cache hit ratios "now" are over the lookups made since the baseline (the tiers' counters
are cumulative); an agent's p99 baseline is its first report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["FIGURES", "compare", "snapshot"]

#: figure -> (what it is, True when lower is better). The order is the order shown.
FIGURES: dict[str, tuple[str, bool]] = {
    "cpu_run_wait_ratio": ("agents' mean share of time waiting for a CPU (schedstat)", True),
    "cpu_runnable_per_cpu": ("runnable tasks per CPU", True),
    "psi_cpu": ("CPU pressure stall, some avg10 (%)", True),
    "psi_memory": ("memory pressure stall, some avg10 (%)", True),
    "psi_io": ("I/O pressure stall, some avg10 (%)", True),
    "memory_used_bytes": ("memory in use (total - available)", True),
    "dedup_saved_bytes": ("bytes the pools' dedup saves (logical - stored)", False),
}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def snapshot(system: Mapping[str, Any], profiles: Mapping[str, Mapping[str, Any]],
             cache: Mapping[str, Any], pools: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The effectiveness figures at this moment, from the service's views (missing ones are None)."""
    cpu = system.get("cpu") or {}
    mem = system.get("memory") or {}
    psi = system.get("pressure") or {}
    waits = [w for p in profiles.values() if (w := _num(p.get("run_wait_ratio"))) is not None]
    runnable, count = _num(cpu.get("runnable")), _num(cpu.get("count"))
    total, available = _num(mem.get("total")), _num(mem.get("available"))
    saved = [_num(p.get("logical_bytes")) for p in pools.values() if "error" not in p]
    stored = [_num(p.get("physical_bytes")) for p in pools.values() if "error" not in p]
    figures: dict[str, Any] = {
        "cpu_run_wait_ratio": sum(waits) / len(waits) if waits else None,
        "cpu_runnable_per_cpu": runnable / count if runnable is not None and count else None,
        "psi_cpu": _num((psi.get("cpu") or {}).get("some_avg10")),
        "psi_memory": _num((psi.get("memory") or {}).get("some_avg10")),
        "psi_io": _num((psi.get("io") or {}).get("some_avg10")),
        "memory_used_bytes": total - available if total is not None and available is not None else None,
        "dedup_saved_bytes": (sum(s or 0.0 for s in saved) - sum(s or 0.0 for s in stored)) if pools else 0.0,
    }
    levels = {}
    for level, f in ((cache or {}).get("levels") or {}).items():
        if "error" not in f:
            levels[level] = {"hits": int(f.get("hits") or 0), "misses": int(f.get("misses") or 0)}
    figures["cache"] = levels
    return figures


def _hit_ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses else None


def compare(baseline: Mapping[str, Any], now: Mapping[str, Any],
            reports: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Baseline against now: per figure ``{baseline, now, change, better}`` plus cache levels and agents' p99.

    ``better`` is True when the figure moved the good way, False when the bad way, None when either side is
    unknown or it did not move. ``reports`` are the agents' reports (``p99_ms`` and ``p99_ms_first``).
    """
    rows: dict[str, Any] = {}
    for key, (what, lower_better) in FIGURES.items():
        rows[key] = _row(what, lower_better, _num(baseline.get(key)), _num(now.get(key)))
    base_cache = baseline.get("cache") or {}
    for level, c in (now.get("cache") or {}).items():
        b = base_cache.get(level, {"hits": 0, "misses": 0})
        before = _hit_ratio(b["hits"], b["misses"])
        since = _hit_ratio(max(0, c["hits"] - b["hits"]), max(0, c["misses"] - b["misses"]))
        rows[f"cache_hit_ratio_{level}"] = _row(f"{level} hit ratio (now: lookups since the baseline)", False,
                                                before, since)
    for agent_id, r in sorted((reports or {}).items()):
        p99 = _num(r.get("p99_ms"))
        if p99 is not None:
            rows[f"p99_ms:{agent_id}"] = _row(f"{agent_id} p99 latency (ms; baseline: its first report)", True,
                                              _num(r.get("p99_ms_first")), p99)
    return {"taken": bool(baseline), "figures": rows}


def _row(what: str, lower_better: bool, before: float | None, after: float | None) -> dict[str, Any]:
    change = after - before if before is not None and after is not None else None
    better = None if not change else (change < 0) == lower_better
    return {"what": what, "baseline": before, "now": after, "change": change, "better": better}
