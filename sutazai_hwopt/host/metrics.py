"""Prometheus exposition of the host service's figures (``GET /metrics``).

A custom collector turns the service's figures of the moment (:meth:`HostService.figures`, read at scrape
time) into gauges, so nothing is kept twice and a scrape costs one pass over the latest sample. This module only
renders data: it does not import the service. Uses prometheus_client for the text format rather than formatting
it by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["render"]


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


class _FiguresCollector:
    def __init__(self, figures: Mapping[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        up = GaugeMetricFamily("sutazai_hwopt_up", "1 while the host service runs")
        up.add_metric([], 1.0 if f["running"] else 0.0)
        yield up
        n_agents = GaugeMetricFamily("sutazai_hwopt_agents", "registered agent processes")
        n_agents.add_metric([], float(f["agents"]))
        yield n_agents
        host = GaugeMetricFamily("sutazai_hwopt_host", "latest host figures", labels=["figure"])
        for key, value in f["host"].items():
            v = _num(value)
            if key != "t" and v is not None:
                host.add_metric([key], v)
        yield host
        cpu = GaugeMetricFamily("sutazai_hwopt_agent_cpu_percent", "agent CPU %", labels=["agent"])
        rss = GaugeMetricFamily("sutazai_hwopt_agent_rss_bytes", "agent resident memory", labels=["agent"])
        wait = GaugeMetricFamily("sutazai_hwopt_agent_run_wait_ratio",
                                 "share of time the agent waited for a CPU (schedstat)", labels=["agent"])
        for agent_id, p in f["profiles"].items():
            for family, key in ((cpu, "cpu_percent"), (rss, "rss_bytes"), (wait, "run_wait_ratio")):
                v = _num(p.get(key))
                if v is not None:
                    family.add_metric([agent_id], v)
        yield from (cpu, rss, wait)
        bn = GaugeMetricFamily("sutazai_hwopt_bottlenecks", "bottlenecks detected in the latest pass",
                               labels=["type", "severity"])
        counts: dict[tuple[str, str], int] = {}
        for b in f["bottlenecks"].values():
            k = (str(b.get("type")), str(b.get("severity")))
            counts[k] = counts.get(k, 0) + 1
        for (t, sev), c in counts.items():
            bn.add_metric([t, sev], float(c))
        yield bn
        actions = GaugeMetricFamily("sutazai_hwopt_eliminator_actions", "eliminator results kept in the audit")
        actions.add_metric([], float(f["actions"]))
        yield actions
        yield from _effectiveness(f.get("effectiveness") or {})
        yield from _prefetch(f.get("prefetch") or {})


def _effectiveness(effect: Mapping[str, Any]) -> Iterator[Metric]:
    """The baseline at deploy and now, per figure (``at`` = baseline/now), and agents' p99 apart."""
    fig = GaugeMetricFamily("sutazai_hwopt_effectiveness",
                            "optimization effectiveness: each figure at deploy (baseline) and now",
                            labels=["figure", "at"])
    p99 = GaugeMetricFamily("sutazai_hwopt_agent_p99_ms", "agent-reported p99 latency (ms): first report and now",
                            labels=["agent", "at"])
    for key, row in (effect.get("figures") or {}).items():
        family, label = (p99, key.split(":", 1)[1]) if key.startswith("p99_ms:") else (fig, key)
        for at in ("baseline", "now"):
            v = _num(row.get(at))
            if v is not None:
                family.add_metric([label, at], v)
    yield from (fig, p99)


def _prefetch(view: Mapping[str, Any]) -> Iterator[Metric]:
    """Each agent's prefetch decision per cache (``host.agent_prefetch.prefetch_view``), as the agent reported it."""
    labels = ["agent", "cache"]
    enabled = GaugeMetricFamily("sutazai_hwopt_agent_prefetch_enabled",
                                "1 while the agent's prefetch model runs (state trial or on), 0 while off",
                                labels=labels)
    state = GaugeMetricFamily("sutazai_hwopt_agent_prefetch_state",
                              "the prefetch governor's decision: 1 for the current state and reason code",
                              labels=[*labels, "state", "reason"])
    precision = GaugeMetricFamily("sutazai_hwopt_agent_prefetch_precision",
                                  "prefetched-and-used / prefetched over the last window with the model on",
                                  labels=labels)
    coverage = GaugeMetricFamily("sutazai_hwopt_agent_prefetch_coverage",
                                 "used / (used + misses) over the last window with the model on", labels=labels)
    loads = CounterMetricFamily("sutazai_hwopt_agent_prefetch_loads", "keys prefetched", labels=labels)
    used = CounterMetricFamily("sutazai_hwopt_agent_prefetch_used", "prefetched keys later hit", labels=labels)
    switches = CounterMetricFamily("sutazai_hwopt_agent_prefetch_switches", "prefetch state changes",
                                   labels=labels)
    for agent_id, rows in view.items():
        for row in rows:
            at = [agent_id, str(row["cache"])]
            enabled.add_metric(at, 1.0 if row["enabled"] else 0.0)
            state.add_metric([*at, str(row["state"]), str(row["reason_code"])], 1.0)
            for family, key in ((precision, "precision"), (coverage, "coverage"), (loads, "prefetched"),
                                (used, "used"), (switches, "switches")):
                v = _num(row.get(key))
                if v is not None:
                    family.add_metric(at, v)
    yield from (enabled, state, precision, coverage, loads, used, switches)


def render(figures: Mapping[str, Any]) -> tuple[bytes, str]:
    """The exposition text of ``figures`` (:meth:`HostService.figures`) and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FiguresCollector(figures))
    return generate_latest(registry), CONTENT_TYPE_LATEST
