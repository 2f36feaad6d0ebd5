"""Manual elimination as jobs: stable ids, answering at once, consent, dropped findings, a busy eliminator."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sutazai_hwopt.config import load_config
from sutazai_hwopt.errors import InvalidArgumentError, NotFoundError, StateError
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.jobs import EliminationJobs, bottleneck_id, without_agents
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.profiler.detect import Bottleneck

TOKEN = "jobs-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_ids_are_stable_across_passes() -> None:
    """The id depends on type, resource and agents (in any order), not on severity or evidence."""
    a = {"type": "cpu_saturation", "resource": "cpu", "agents": ["x", "y"], "severity": "high",
         "evidence": {"load": 3.0}}
    b = {**a, "agents": ["y", "x"], "severity": "critical", "evidence": {"load": 9.0}}
    assert bottleneck_id(a) == bottleneck_id(b)
    assert bottleneck_id(a) != bottleneck_id({**a, "resource": "memory"})
    assert bottleneck_id(a) != bottleneck_id({**a, "agents": ["x"]})
    assert bottleneck_id(a) != bottleneck_id({**a, "type": "memory_pressure"})
    found = [Bottleneck("cpu_saturation", "high", "cpu", {"load": 3.0}, ["x", "y"])]
    again = [Bottleneck("cpu_saturation", "medium", "cpu", {"load": 2.0}, ["y", "x"])]
    assert list(HostService._keyed(found)) == list(HostService._keyed(again))


def test_without_agents_drops_findings_of_departed_agents() -> None:
    """All agents gone: dropped; some gone: kept with the rest; host-wide findings stay."""
    findings = {"a": {"agents": ["x"]}, "b": {"agents": ["x", "y"]}, "c": {"agents": []}}
    assert without_agents(findings, {"y"}) == {"b": {"agents": ["y"]}, "c": {"agents": []}}


def test_a_job_answers_at_once_and_reports_its_outcome() -> None:
    """submit returns while the elimination still runs; the record then carries the validation outcome."""
    release = threading.Event()
    started = threading.Event()

    def run(bid: str, finding: dict[str, Any]) -> dict[str, Any]:
        started.set()
        release.wait(30)
        return {"status": "resolved", "outcomes": [
            {"action": {"name": "renice"}, "decision": "kept", "reason": "target improved"},
            {"action": {"name": "pin"}, "decision": "recommended", "reason": "an earlier action already helped"}]}

    jobs = EliminationJobs(run)
    try:
        job = jobs.submit("b1", {"type": "cpu_saturation", "agents": ["x"]})
        assert job["state"] == "queued" and job["result"] is None
        assert started.wait(10)
        assert jobs.get(job["job_id"])["state"] == "running"
        release.set()
        done = jobs.wait(job["job_id"], timeout=10)
        assert done["state"] == "done"
        assert done["validation"] == {"status": "resolved", "kept": True,
                                      "tried": [{"action": "renice", "decision": "kept",
                                                 "reason": "target improved"}]}
        with pytest.raises(NotFoundError):
            jobs.get("job-42-nope")
    finally:
        release.set()
        jobs.close()


def test_a_busy_eliminator_makes_the_job_wait_not_fail() -> None:
    """While the auto-fix worker holds the eliminator, the job retries; failures of other kinds are reported."""
    calls = []

    def run(bid: str, finding: dict[str, Any]) -> dict[str, Any]:
        calls.append(bid)
        if bid == "bad":
            raise InvalidArgumentError("malformed")
        if len(calls) < 3:
            raise StateError("another eliminate_bottleneck call is in progress on this eliminator")
        return {"status": "no_action", "outcomes": []}

    jobs = EliminationJobs(run)
    try:
        ok = jobs.wait(jobs.submit("b1", {"type": "t"})["job_id"], timeout=10)
        assert ok["state"] == "done" and len(calls) == 3
        bad = jobs.wait(jobs.submit("bad", {"type": "t"})["job_id"], timeout=10)
        assert bad["state"] == "failed" and "malformed" in bad["error"]
    finally:
        jobs.close()
    with pytest.raises(StateError):
        jobs.submit("b2", {"type": "t"})


def _an_io_finding_of_agent_a(svc: HostService, pid: int) -> str:
    """Register agent ``a`` (pid), take the baseline, and make one io_thrashing finding of it; returns its id."""
    svc.register_agent("a", pid, {"cpu_cores": 1})
    svc.establish_baseline()
    svc._bottlenecks = svc._keyed([Bottleneck("io_thrashing", "high", "io", {}, ["a"])])
    svc.jobs.remember(svc._bottlenecks)
    (bid,) = svc.bottlenecks()
    return bid


def test_findings_of_unregistered_agents_are_dropped(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """Unregistering an agent removes its findings (then 404); a job about gone agents is dropped, not run."""
    svc = HostService(load_config(mode="balanced"), state_dir=str(tmp_path / "j"))
    try:
        bid = _an_io_finding_of_agent_a(svc, sleeper.pid)
        svc.unregister_agent("a")
        assert svc.bottlenecks() == {}
        with TestClient(create_app(svc, TOKEN)) as c:
            assert c.post(f"/api/eliminate/{bid}", headers=AUTH).status_code == 404
        job = svc.jobs.submit(bid, {"type": "io_thrashing", "resource": "io", "agents": ["a"]})
        done = svc.jobs.wait(job["job_id"], timeout=30)
        assert done["state"] == "dropped" and "no longer registered" in done["error"]
        assert svc.actions == type(svc.actions)(maxlen=svc.actions.maxlen)  # nothing was acted on
    finally:
        svc.close(rollback=True)


def test_a_finding_that_left_the_latest_pass_can_still_be_posted(tmp_path: Path,
                                                                 sleeper: subprocess.Popen[bytes]) -> None:
    """An id seen on the dashboard a pass ago is still accepted (202), and within the mode's risk level only."""
    config = load_config(mode="conservative", overrides={"eliminator": {"validation_window_s": 0.1,
                                                                        "validation_interval_s": 0.05}})
    svc = HostService(config, auto_fix=False, state_dir=str(tmp_path / "j"))
    try:
        bid = _an_io_finding_of_agent_a(svc, sleeper.pid)
        svc._bottlenecks = {}  # the next pass no longer shows it
        with TestClient(create_app(svc, TOKEN)) as c:
            r = c.post(f"/api/eliminate/{bid}", headers=AUTH)
            assert r.status_code == 202, r.text
        done = svc.jobs.wait(r.json()["job_id"], timeout=60)
        assert done["state"] == "done", done
        for o in done["result"]["outcomes"]:
            if o["action"]["risk"] != "low":
                assert o["decision"] == "recommended" and "not automatic in mode conservative" in o["reason"]
            else:
                assert o["decision"] != "recommended" or o["reason"] != "auto_fix is off"
    finally:
        svc.close(rollback=True)


def test_the_client_waits_for_the_job_by_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """HostClient.eliminate posts once and polls the job: no single request waits for the elimination."""
    from sutazai_hwopt.host.client import HostClient

    calls: list[tuple[str, str]] = []
    states = iter(["running", "running", "done"])

    def request(self: HostClient, method: str, path: str, body: Any = None) -> Any:
        calls.append((method, path))
        if method == "POST":
            return {"job_id": "job-1-b1", "state": "queued"}
        return {"job_id": "job-1-b1", "state": next(states), "validation": {"status": "resolved"}}

    monkeypatch.setattr(HostClient, "request", request)
    client = HostClient.__new__(HostClient)
    job = client.eliminate("b1", poll_s=0.0)
    assert job["state"] == "done" and job["validation"]["status"] == "resolved"
    assert calls == [("POST", "/api/eliminate/b1")] + [("GET", "/api/jobs/job-1-b1")] * 3


def test_the_auto_worker_drops_findings_of_departed_agents(tmp_path: Path,
                                                          sleeper: subprocess.Popen[bytes]) -> None:
    """A finding queued for auto-fix whose agent left meanwhile is dropped without calling the eliminator."""
    svc = HostService(load_config(mode="balanced"), auto_fix=True, state_dir=str(tmp_path / "j"))
    try:
        called = []
        svc._run_eliminator = lambda finding, consent=False: called.append(finding) or {}  # type: ignore[method-assign]
        svc._work.put({"bottleneck_id": "b1", "type": "io_thrashing", "agents": ["gone"]})
        svc._work.put(None)
        svc._work_loop()
        assert called == [] and len(svc.actions) == 0
    finally:
        svc.close(rollback=True)
