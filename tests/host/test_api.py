"""The REST API in-process: auth, malformed input, unknown ids, OpenAPI conformance, Prometheus, dashboard."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from sutazai_hwopt.config import load_config
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.service import HostService

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[HostService]:
    svc = HostService(load_config(mode="balanced"), state_dir=str(tmp_path / "journal"))
    svc.establish_baseline()
    yield svc
    svc.close(rollback=True)


@pytest.fixture
def client(service: HostService) -> Iterator[TestClient]:
    with TestClient(create_app(service, TOKEN), raise_server_exceptions=False) as c:
        yield c


def test_reads_need_no_token(client: TestClient) -> None:
    """GET endpoints answer without a token."""
    for path in ("/api/status", "/api/metrics", "/api/agents", "/api/bottlenecks", "/api/dashboard"):
        assert client.get(path).status_code == 200, path
    assert client.get("/api/status").json()["running"] is True


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": "Basic " + TOKEN}])
def test_mutations_need_the_token(client: TestClient, service: HostService,
                                  sleeper: subprocess.Popen[bytes], headers: dict[str, str]) -> None:
    """POST/DELETE without the right bearer token are 401 and change nothing."""
    r = client.post("/api/agents", json={"agent_id": "a1", "pid": sleeper.pid}, headers=headers)
    assert r.status_code == 401
    assert client.post("/api/optimize", json={}, headers=headers).status_code == 401
    assert client.post("/api/eliminate/x", headers=headers).status_code == 401
    assert client.delete("/api/agents/a1", headers=headers).status_code == 401
    assert service.agents() == []


def test_no_token_configured_refuses_mutations(service: HostService) -> None:
    """A daemon started without a token refuses every mutating call."""
    with TestClient(create_app(service, None)) as c:
        assert c.post("/api/optimize", json={}, headers={"Authorization": "Bearer "}).status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"agent_id": "", "pid": 1}', "agent_id"),
        (b'{"agent_id": "a", "pid": -5}', "pid"),
        (b'{"agent_id": "a", "pid": true}', "pid"),
        (b'{"agent_id": "a", "pid": 1, "requirements": []}', "requirements"),
        (b'{"agent_id": "a", "pid": 1, "extra": 1}', "unknown field"),
    ],
)
def test_malformed_registration_is_422(client: TestClient, service: HostService, body: bytes,
                                       fragment: str) -> None:
    """A malformed body is 422 with a message naming what is wrong; nothing is registered."""
    r = client.post("/api/agents", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    assert fragment in r.json()["error"]
    assert service.agents() == []


def test_register_bad_requirements_and_dead_pid(client: TestClient, sleeper: subprocess.Popen[bytes]) -> None:
    """Impossible requirements are 422; a pid that does not exist is 404; a duplicate id is 409."""
    r = client.post("/api/agents", json={"agent_id": "a", "pid": sleeper.pid,
                                         "requirements": {"cpu_cores": -1}}, headers=AUTH)
    assert r.status_code == 422 and "cpu_cores" in r.json()["error"]
    r = client.post("/api/agents", json={"agent_id": "a", "pid": 4_000_000 - 1}, headers=AUTH)
    assert r.status_code in (404, 422)
    assert client.post("/api/agents", json={"agent_id": "a", "pid": sleeper.pid}, headers=AUTH).status_code == 201
    assert client.post("/api/agents", json={"agent_id": "a", "pid": sleeper.pid}, headers=AUTH).status_code == 409
    assert [a["agent_id"] for a in client.get("/api/agents").json()] == ["a"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    """Unknown bottleneck and agent ids are 404, and the server keeps serving."""
    assert client.post("/api/eliminate/nope", headers=AUTH).status_code == 404
    assert client.delete("/api/agents/nope", headers=AUTH).status_code == 404
    assert client.get("/api/status").status_code == 200


def test_optimize_places_registered_agents(client: TestClient, sleeper: subprocess.Popen[bytes]) -> None:
    """POST /api/optimize applies a placement the kernel holds; DELETE restores the old affinity."""
    before = os.sched_getaffinity(sleeper.pid)
    assert client.post("/api/agents", json={"agent_id": "a", "pid": sleeper.pid,
                                            "requirements": {"cpu_cores": 1, "priority": 9}},
                       headers=AUTH).status_code == 201
    r = client.post("/api/optimize", json={"strategy": "priority"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is False and "placement" in body and "recommended" in body
    placed = os.sched_getaffinity(sleeper.pid)
    assert placed <= before and len(placed) >= 1
    assert client.delete("/api/agents/a", headers=AUTH).status_code == 200
    assert os.sched_getaffinity(sleeper.pid) == before


def test_optimize_rejects_bad_fields(client: TestClient) -> None:
    """Unknown fields or wrong types in the optimize body are 422."""
    assert client.post("/api/optimize", json={"dry_run": "yes"}, headers=AUTH).status_code == 422
    assert client.post("/api/optimize", json={"turbo": True}, headers=AUTH).status_code == 422
    assert client.post("/api/optimize", json={"strategy": "nope"}, headers=AUTH).status_code == 422


def test_prometheus_exposition_parses(client: TestClient, service: HostService) -> None:
    """/metrics is valid Prometheus text with the host service's figures."""
    service.tick()
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert families["sutazai_hwopt_up"].samples[0].value == 1.0
    assert "sutazai_hwopt_agents" in families
    figures = {s.labels["figure"] for s in families["sutazai_hwopt_host"].samples}
    assert {"memory_percent", "psi_cpu"} <= figures


def test_dashboard_and_assets_are_served_locally(client: TestClient) -> None:
    """/ serves the dashboard, which loads plotly from the daemon itself, never from a CDN."""
    page = client.get("/").text
    assert '<script src="/static/plotly.min.js"></script>' in page
    assert "https://" not in page.split("<script>")[0]
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000


def test_static_export_is_self_contained(service: HostService) -> None:
    """The exported dashboard inlines plotly.js and a data snapshot."""
    from sutazai_hwopt.host.dashboard import render_dashboard

    html = render_dashboard(service.dashboard_data(), inline_js=True)
    assert "/static/plotly.min.js" not in html
    assert "/*SNAPSHOT*/null" not in html and '"history"' in html


def test_openapi_document_is_valid(client: TestClient) -> None:
    """/openapi.json is a valid OpenAPI 3 document covering every API route."""
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").json()
    validate(doc)
    assert {"/api/optimize", "/api/agents", "/api/eliminate/{bottleneck_id}", "/api/status",
            "/api/metrics", "/metrics"} <= set(doc["paths"])


def test_eliminate_a_detected_bottleneck_through_the_api(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """An id read from GET /api/bottlenecks is accepted at once (202) and, without auto_fix, the job applies
    what the mode's risk level allows (the operator consented) and reports the validation outcome."""
    from sutazai_hwopt.profiler.detect import Bottleneck

    config = load_config(mode="aggressive", overrides={"eliminator": {"validation_window_s": 0.2,
                                                                      "validation_interval_s": 0.05}})
    svc = HostService(config, auto_fix=False, state_dir=str(tmp_path / "j"))
    try:
        svc.register_agent("io_agent", sleeper.pid, {"cpu_cores": 1, "priority": 1})
        svc.establish_baseline()
        svc._bottlenecks = svc._keyed([Bottleneck("io_thrashing", "high", "io", {}, ["io_agent"])])
        with TestClient(create_app(svc, TOKEN)) as c:
            (bid,) = c.get("/api/bottlenecks").json()
            r = c.post(f"/api/eliminate/{bid}", headers=AUTH)
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["bottleneck_id"] == bid and job["state"] in ("queued", "running")
            assert r.headers["location"] == f"/api/jobs/{job['job_id']}"
            done = svc.jobs.wait(job["job_id"], timeout=60)
            assert done["state"] == "done", done
            body = c.get(r.headers["location"]).json()
            assert body["state"] == "done" and body["validation"]["status"] == body["result"]["status"]
            result = body["result"]
            assert result["bottleneck_id"] == bid and result["auto"] is False
            assert result["status"] in ("resolved", "not_resolved"), result
            decisions = [o["decision"] for o in result["outcomes"]]
            assert set(decisions) & {"kept", "rolled_back", "not_applied"}, decisions
            assert not any(o["reason"] == "auto_fix is off" for o in result["outcomes"])
            assert body["validation"]["tried"], body
            assert c.get("/api/dashboard").json()["actions"][-1]["bottleneck_id"] == bid
            assert [j["job_id"] for j in c.get("/api/jobs").json()] == [job["job_id"]]
            assert c.get("/api/dashboard").json()["jobs"][-1]["state"] == "done"
            assert c.get("/api/jobs/job-999-nope").status_code == 404
    finally:
        svc.close(rollback=True)


def test_dashboard_shows_the_namespace_pools(tmp_path: Path) -> None:
    """A pool created by an agent in the host service's namespace appears with its usage and dedup ratio."""
    from sutazai_hwopt import MemoryPoolManager
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace() as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("weights", size=4 * 1024**2)
        for _ in range(2):
            pm.put_bytes("agent_a", b"w" * 100_000, pool_id="weights")
        config = load_config(overrides={"cache": {"namespace": ns}})
        svc = HostService(config, state_dir=str(tmp_path / "j"))
        try:
            pools = svc.dashboard_data()["pools"]
        finally:
            svc.close()
    assert set(pools) == {"weights"}
    assert pools["weights"]["used"] > 0 and pools["weights"]["dedup_ratio"] == pytest.approx(2.0)


def test_dashboard_shows_host_wide_cache_tiers(tmp_path: Path) -> None:
    """Hits in the shared L2 made by an agent's cache appear in the host service's cache figures."""
    from sutazai_hwopt import IntelligentCacheSystem
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace() as ns:
        writer = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 4 << 20, "l3_size": 0,
                                         "enable_prefetch": False})
        try:
            writer.put("k", b"v" * 1000, "agent_a")
            assert writer.get("k", "agent_b")[1] == "L2"
            assert writer.get("missing", "agent_b")[1] is None
            config = load_config(overrides={"cache": {"namespace": ns}})
            svc = HostService(config, state_dir=str(tmp_path / "j"))
            try:
                data = svc.dashboard_data()
            finally:
                svc.close()
        finally:
            writer.destroy()
    l2 = data["cache"]["levels"]["L2"]
    assert l2["hits"] >= 1 and l2["misses"] >= 1 and 0 < l2["hit_ratio"] < 1 and l2["entries"] == 1
    assert "cache-l2" not in data["pools"]


def test_validation_windows_are_measured_from_the_services_passes(service: HostService) -> None:
    """The eliminator's metric source averages the service's own passes, custom metrics included."""
    import asyncio
    import math

    service.eliminator.register_metric("answer", lambda: 42.0)
    before = service.ticks
    out = asyncio.run(service.eliminator.metric_source.measure(["custom:answer", "cpu.utilization", "nope"], 0.0))
    assert out["custom:answer"] == 42.0
    assert math.isfinite(out["cpu.utilization"]) and math.isnan(out["nope"])
    assert service.ticks > before  # no sampler loop runs here: the window took its own pass


def test_prometheus_figures_are_one_read_of_the_service(service: HostService) -> None:
    """GET /metrics renders the service's figures; rendering is the web layer's, not the service's."""
    from sutazai_hwopt.host.metrics import render

    figures = service.figures()
    assert figures["running"] is True and figures["agents"] == 0
    body, content_type = render({**figures, "running": False, "actions": 7})
    assert b"sutazai_hwopt_up 0.0" in body and b"sutazai_hwopt_eliminator_actions 7.0" in body
    assert content_type.startswith("text/plain")
