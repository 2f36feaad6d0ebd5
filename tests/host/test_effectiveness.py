"""Optimization effectiveness (baseline at deploy against now) on every surface: /api/metrics, the dashboard
data and page, and /metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from sutazai_hwopt.config import load_config
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.effectiveness import FIGURES, compare, snapshot
from sutazai_hwopt.host.service import HostService

TOKEN = "effect-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_compare_says_which_way_each_figure_moved() -> None:
    """Lower is better for waits, pressure and memory in use; higher for dedup savings and hit ratios; cache
    ratios now count only the lookups since the baseline; an agent's p99 baseline is its first report."""
    system = {"cpu": {"runnable": 4.0, "count": 2}, "memory": {"total": 100.0, "available": 40.0},
              "pressure": {"cpu": {"some_avg10": 10.0}, "memory": {"some_avg10": 0.0}, "io": {"some_avg10": 1.0}}}
    base = snapshot(system, {"a": {"run_wait_ratio": 0.4}}, {"levels": {"L2": {"hits": 1, "misses": 3}}}, {})
    now = snapshot({**system, "cpu": {"runnable": 2.0, "count": 2},
                    "pressure": {"cpu": {"some_avg10": 5.0}, "io": {"some_avg10": 2.0}}},
                   {"a": {"run_wait_ratio": 0.1}, "b": {"run_wait_ratio": 0.3}},
                   {"levels": {"L2": {"hits": 10, "misses": 4}, "L3": {"error": "damaged"}}},
                   {"w": {"logical_bytes": 300, "physical_bytes": 100}, "x": {"error": "gone"}})
    rows = compare(base, now, {"a": {"p99_ms": 8.0, "p99_ms_first": 10.0}, "b": {"thread_pools": []}})["figures"]
    assert rows["cpu_run_wait_ratio"]["baseline"] == pytest.approx(0.4)
    assert rows["cpu_run_wait_ratio"]["now"] == pytest.approx(0.2) and rows["cpu_run_wait_ratio"]["better"] is True
    assert rows["cpu_runnable_per_cpu"]["change"] == pytest.approx(-1.0)
    assert rows["psi_cpu"]["better"] is True and rows["psi_io"]["better"] is False
    assert rows["psi_memory"]["now"] is None and rows["psi_memory"]["better"] is None
    assert rows["memory_used_bytes"]["now"] == 60.0 and rows["memory_used_bytes"]["better"] is None
    assert rows["dedup_saved_bytes"] == {**rows["dedup_saved_bytes"], "baseline": 0.0, "now": 200.0,
                                         "better": True}
    l2 = rows["cache_hit_ratio_L2"]
    assert l2["baseline"] == pytest.approx(0.25) and l2["now"] == pytest.approx(9 / 10) and l2["better"] is True
    assert "cache_hit_ratio_L3" not in rows
    assert rows["p99_ms:a"]["baseline"] == 10.0 and rows["p99_ms:a"]["better"] is True
    assert "p99_ms:b" not in rows
    assert set(FIGURES) <= set(rows)


def _effect(figures: dict[str, Any]) -> dict[str, Any]:
    return figures["effectiveness"]["figures"]  # type: ignore[no-any-return]


def test_effectiveness_on_every_surface(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Dedup done and cache lookups made after the deploy show as a change against the baseline in
    /api/metrics, /api/dashboard (and the page's table) and /metrics; an agent's reported p99 too."""
    from sutazai_hwopt import IntelligentCacheSystem, MemoryPoolManager
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace() as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("weights", size=4 * 1024**2)
        cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                        "enable_prefetch": False})
        svc = HostService(load_config(overrides={"cache": {"namespace": ns}}), state_dir=str(tmp_path / "j"))
        try:
            cache.put("k", b"v" * 1000, "agent_a")
            assert cache.get("missing", "agent_b")[1] is None   # before the baseline: 0 hits, 1 miss
            svc.register_agent("a", sleeper.pid, {"cpu_cores": 1})
            svc.establish_baseline()
            for _ in range(3):
                assert cache.get("k", "agent_b")[1] == "L2"
            for _ in range(2):
                pm.put_bytes("agent_a", b"w" * 100_000, pool_id="weights")
            svc.tick()
            with TestClient(create_app(svc, TOKEN)) as c:
                for p99 in (20.0, 12.0):
                    assert c.put("/api/agents/a/report", json={"p99_ms": p99}, headers=AUTH).status_code == 200
                api = _effect(c.get("/api/metrics").json())
                dash = _effect(c.get("/api/dashboard").json())
                families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
                page = c.get("/").text
        finally:
            svc.close()
            cache.destroy()
    for rows in (api, dash):
        assert rows["dedup_saved_bytes"]["baseline"] == 0 and rows["dedup_saved_bytes"]["now"] == 100_000
        assert rows["dedup_saved_bytes"]["better"] is True
        l2 = rows["cache_hit_ratio_L2"]
        assert l2["baseline"] == 0.0 and l2["now"] == 1.0 and l2["better"] is True
        assert rows["p99_ms:a"]["baseline"] == 20.0 and rows["p99_ms:a"]["now"] == 12.0
        for key in ("psi_cpu", "psi_memory", "memory_used_bytes"):
            assert rows[key]["baseline"] is not None and rows[key]["now"] is not None, key
    samples = {(s.labels["figure"], s.labels["at"]): s.value for s in families["sutazai_hwopt_effectiveness"].samples}
    assert samples[("dedup_saved_bytes", "baseline")] == 0 and samples[("dedup_saved_bytes", "now")] == 100_000
    assert samples[("cache_hit_ratio_L2", "now")] == 1.0 and ("psi_cpu", "baseline") in samples
    p99 = {(s.labels["agent"], s.labels["at"]): s.value for s in families["sutazai_hwopt_agent_p99_ms"].samples}
    assert p99 == {("a", "baseline"): 20.0, ("a", "now"): 12.0}
    assert 'id="effectiveness"' in page and "renderEffectiveness" in page
