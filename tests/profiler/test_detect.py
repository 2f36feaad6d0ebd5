"""Bottleneck detection over fed metrics (no timing): types, agents, severity, bad input, prediction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sutazai_hwopt.errors import InvalidArgumentError
from sutazai_hwopt.profiler import Thresholds, detect_bottlenecks
from sutazai_hwopt.profiler.predict import anomaly_scores, linear_trend, time_to_exhaustion

MiB = 1024.0**2


def idle(**over: float) -> dict[str, Any]:
    p: dict[str, Any] = {"cpu_percent": 0.5, "rss_bytes": 50 * MiB, "run_wait_ratio": 0.0, "wait_share": 0.0,
                         "read_bps": 0.0, "write_bps": 0.0, "ctx_switches_ps": 20.0, "involuntary_ctx_ps": 1.0,
                         "major_faults_ps": 0.0, "rss_growth_bytes": 0.0, "rss_growth_intervals": 0.0,
                         "rss_slope_bps": 0.0, "alive": True}
    p.update(over)
    return p


def quiet_host(**pressure: float) -> dict[str, Any]:
    psi = {"cpu": {"some": 0.0, "full": 0.0}, "memory": {"some": 0.0, "full": 0.0}, "io": {"some": 0.0, "full": 0.0}}
    for k, v in pressure.items():
        res, kind = k.split("_")
        psi[res][kind] = v
    return {"cpu": {"count": 2, "utilization": 30.0, "runnable": 1.0, "steal": 0.0},
            "memory": {"used_percent": 40.0}, "network": {"errors_ps": 0.0, "drops_ps": 0.0}, "pressure": psi}


def pairs(found: list[Any]) -> set[tuple[str, str]]:
    return {(b.type, a) for b in found for a in b.agents}


def test_quiet_host_has_no_findings() -> None:
    """Idle agents on a quiet host produce nothing."""
    assert detect_bottlenecks(quiet_host(), {f"a{i}": idle() for i in range(10)}) == []


def test_cpu_saturation_names_the_consumers() -> None:
    """PSI cpu some above the threshold gives high_cpu_usage naming the agents using CPU."""
    profiles = {"hog": idle(cpu_percent=180.0, wait_share=0.9, run_wait_ratio=0.9), "calm": idle()}
    host = quiet_host(cpu_some=70.0)
    host["cpu"]["utilization"] = 97.0
    found = detect_bottlenecks(host, profiles)
    assert pairs(found) == {("high_cpu_usage", "hog")}
    (b,) = found
    assert b.severity == "high" and b.evidence["cpu_psi_some_pct"] == 70.0


def test_starved_agent_is_found_by_run_queue_wait() -> None:
    """An agent that waits on the run queue more than it runs is cpu_starvation; a hog is not."""
    profiles = {"victim": idle(cpu_percent=3.0, wait_share=0.95, run_wait_ratio=0.9),
                "hog": idle(cpu_percent=150.0, wait_share=0.9, run_wait_ratio=0.9)}
    host = quiet_host(cpu_some=90.0)
    host["cpu"]["utilization"] = 99.0
    found = detect_bottlenecks(host, profiles)
    assert ("high_cpu_usage", "hog") in pairs(found)
    assert ("cpu_starvation", "victim") in pairs(found)
    assert ("cpu_starvation", "hog") not in pairs(found)


def test_memory_leak_needs_sustained_growth() -> None:
    """RSS rising over enough intervals and bytes is memory_leak; a single jump is not."""
    leak = idle(rss_growth_intervals=3.0, rss_growth_bytes=90 * MiB, rss_slope_bps=30 * MiB)
    jump = idle(rss_growth_intervals=1.0, rss_growth_bytes=200 * MiB, rss_slope_bps=200 * MiB)
    found = detect_bottlenecks(quiet_host(), {"leaky": leak, "jumpy": jump})
    assert pairs(found) == {("memory_leak", "leaky")}
    assert found[0].evidence["rss_growth_bytes"] == 90 * MiB


def test_slow_leak_is_found_from_the_long_trend() -> None:
    """A steady 50 KiB/s rise over 10 minutes (R^2 0.97) is memory_leak; a noisy or short trend is not."""
    slow = idle(rss_trend_bps=50 * 1024.0, rss_trend_r2=0.97, rss_trend_span_s=600.0)
    noisy = idle(rss_trend_bps=50 * 1024.0, rss_trend_r2=0.3, rss_trend_span_s=600.0)
    short = idle(rss_trend_bps=50 * 1024.0, rss_trend_r2=0.99, rss_trend_span_s=60.0)
    found = detect_bottlenecks(quiet_host(), {"slow": slow, "noisy": noisy, "short": short})
    assert pairs(found) == {("memory_leak", "slow")}
    assert found[0].evidence["rss_trend_r2"] == 0.97


def test_io_thrashing_and_context_switch_storm() -> None:
    """Heavy storage bytes give io_thrashing; a high switch rate gives context_switch_storm."""
    profiles = {"writer": idle(write_bps=60 * MiB), "pager": idle(major_faults_ps=500.0),
                "switcher": idle(ctx_switches_ps=50_000.0, involuntary_ctx_ps=100.0)}
    found = pairs(detect_bottlenecks(quiet_host(), profiles))
    assert found == {("io_thrashing", "writer"), ("io_thrashing", "pager"), ("context_switch_storm", "switcher")}


def test_host_memory_and_io_pressure() -> None:
    """PSI memory and io are the saturation signals of those resources (USE)."""
    profiles = {"grower": idle(rss_slope_bps=5 * MiB), "writer": idle(write_bps=10 * MiB)}
    found = detect_bottlenecks(quiet_host(memory_some=30.0, io_some=80.0, io_full=50.0), profiles)
    types = {b.type: b for b in found}
    assert types["memory_pressure"].agents == ["grower"]
    assert types["io_saturation"].agents == ["writer"]
    assert types["io_saturation"].severity in ("high", "critical")


def test_without_psi_the_run_queue_stands_in() -> None:
    """With no PSI, runnable tasks beyond the CPU count signal CPU saturation."""
    host = quiet_host()
    del host["pressure"]
    host["cpu"].update(runnable=6.0, utilization=100.0)
    found = detect_bottlenecks(host, {"hog": idle(cpu_percent=190.0)})
    assert pairs(found) == {("high_cpu_usage", "hog")}


def test_dead_agents_and_missing_values_are_skipped() -> None:
    """An agent marked not alive, and metrics that are absent (None), do not produce findings."""
    profiles = {"dead": idle(write_bps=1e9, alive=False), "blank": {"cpu_percent": None}}
    assert detect_bottlenecks({}, profiles) == []
    assert detect_bottlenecks(None, None) == []


@pytest.mark.parametrize("sysm, profiles, match", [
    ([1, 2], {}, "system_metrics must be a mapping"),
    ({"cpu": 5}, {}, "system_metrics\\['cpu'\\] must be a mapping"),
    ({"cpu": {"utilization": "high"}}, {}, "utilization"),
    ({}, [1], "agent_profiles must be a mapping"),
    ({}, {"a": 3}, "agent_profiles\\['a'\\] must be a mapping"),
    ({}, {"a": {"cpu_percent": "x"}}, "cpu_percent"),
    ({}, {7: {}}, "agent id strings"),
])
def test_malformed_metrics_raise_clear_errors(sysm: Any, profiles: Any, match: str) -> None:
    """Malformed metrics raise InvalidArgumentError naming the key."""
    with pytest.raises(InvalidArgumentError, match=match):
        detect_bottlenecks(sysm, profiles)


def test_thresholds_are_validated() -> None:
    """A negative or non-finite threshold is refused."""
    with pytest.raises(InvalidArgumentError, match="ctx_storm_ps"):
        Thresholds(ctx_storm_ps=-1)
    with pytest.raises(InvalidArgumentError, match="io_thrash_bps"):
        Thresholds(io_thrash_bps=math.inf)
    found = detect_bottlenecks(quiet_host(), {"s": idle(ctx_switches_ps=600.0)}, Thresholds(ctx_storm_ps=500.0))
    assert pairs(found) == {("context_switch_storm", "s")}


def test_time_to_exhaustion_from_a_linear_trend() -> None:
    """Free memory falling 10 MiB/s from 1 GiB runs out in ~100 s; a flat or noisy series gives None."""
    t = np.arange(30, dtype=float)
    free = 1024 * MiB - 10 * MiB * t
    tte = time_to_exhaustion(t, free)
    assert tte is not None and tte["seconds"] == pytest.approx((1024 - 290) / 10, rel=1e-6)
    assert time_to_exhaustion(t, np.full(30, 5.0)) is None
    rng = np.random.default_rng(0)
    assert time_to_exhaustion(t, rng.normal(100, 50, 30)) is None
    assert math.isnan(linear_trend(t[:2], free[:2])[0])


def test_anomaly_scores_rank_the_outlier_first() -> None:
    """IsolationForest gives the agent that departs from the herd the highest score (seeded)."""
    rng = np.random.default_rng(1)
    window = rng.normal(1.0, 0.05, size=(30, 12, 4))
    window[-1, 7] = [50.0, 80.0, 40.0, 60.0]
    ids = [f"a{i}" for i in range(12)]
    scores = anomaly_scores(window, ids, seed=3)
    assert max(scores, key=scores.__getitem__) == "a7"
    assert scores == anomaly_scores(window, ids, seed=3)
