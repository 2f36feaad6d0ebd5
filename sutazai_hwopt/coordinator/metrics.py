"""Prometheus exposition of the coordinator's figures (``GET /metrics``).

A custom collector reads the service's state at scrape time, so nothing is kept twice and a scrape costs one
pass over the latest sample. Uses prometheus_client for the text format rather than formatting it by hand.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .service import CoordinatorService

__all__ = ["render"]


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


class _ServiceCollector:
    def __init__(self, service: CoordinatorService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        up = GaugeMetricFamily("sutazai_hwopt_up", "1 while the coordinator runs")
        up.add_metric([], 0.0 if s.closed else 1.0)
        yield up
        n_agents = GaugeMetricFamily("sutazai_hwopt_agents", "registered agent processes")
        n_agents.add_metric([], float(len(s.coordinator.agents())))
        yield n_agents
        latest = s.history[-1] if s.history else {}
        host = GaugeMetricFamily("sutazai_hwopt_host", "latest host figures", labels=["figure"])
        for key, value in latest.items():
            v = _num(value)
            if key != "t" and v is not None:
                host.add_metric([key], v)
        yield host
        profiles = s.latest_profiles()
        cpu = GaugeMetricFamily("sutazai_hwopt_agent_cpu_percent", "agent CPU %", labels=["agent"])
        rss = GaugeMetricFamily("sutazai_hwopt_agent_rss_bytes", "agent resident memory", labels=["agent"])
        wait = GaugeMetricFamily("sutazai_hwopt_agent_run_wait_ratio",
                                 "share of time the agent waited for a CPU (schedstat)", labels=["agent"])
        for agent_id, p in profiles.items():
            for family, key in ((cpu, "cpu_percent"), (rss, "rss_bytes"), (wait, "run_wait_ratio")):
                v = _num(p.get(key))
                if v is not None:
                    family.add_metric([agent_id], v)
        yield from (cpu, rss, wait)
        bn = GaugeMetricFamily("sutazai_hwopt_bottlenecks", "bottlenecks detected in the latest pass",
                               labels=["type", "severity"])
        counts: dict[tuple[str, str], int] = {}
        for b in s.bottlenecks().values():
            k = (str(b.get("type")), str(b.get("severity")))
            counts[k] = counts.get(k, 0) + 1
        for (t, sev), c in counts.items():
            bn.add_metric([t, sev], float(c))
        yield bn
        actions = GaugeMetricFamily("sutazai_hwopt_eliminator_actions", "eliminator results kept in the audit")
        actions.add_metric([], float(len(s.actions)))
        yield actions


def render(service: CoordinatorService) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(service))
    return generate_latest(registry), CONTENT_TYPE_LATEST
