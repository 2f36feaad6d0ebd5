"""Math libraries sized to their placement: a connected agent's BLAS pool follows its CPUs, and is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sutazai_hwopt.config import load_config
from sutazai_hwopt.errors import InvalidArgumentError
from sutazai_hwopt.host.agent_threads import check_report, report_path
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.service import HostService

TOKEN = "threads-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL_CPUS = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs at least two usable CPUs")


def _python(code: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy(), **kw)


@needs_two
def test_the_governor_limits_blas_to_the_affinity_and_follows_changes() -> None:
    """In a fresh process with numpy's OpenBLAS loaded: one CPU -> one thread; all CPUs again -> all threads."""
    proc = _python("""
        import json, os
        import numpy  # noqa: F401  (loads OpenBLAS)
        import threadpoolctl
        from sutazai_hwopt.resources.threads import ThreadPoolGovernor
        reports = []
        g = ThreadPoolGovernor(on_change=reports.append)
        every = set(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {min(every)})
        first = g.check()
        one = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
        os.sched_setaffinity(0, every)
        second = g.check()
        again = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
        print(json.dumps({"first": first, "one": one, "second": second, "again": again,
                          "third": g.check(), "reports": reports}))
    """)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    r = json.loads(out)
    assert r["first"] and r["second"] and not r["third"]
    assert r["one"] and set(r["one"]) == {1}
    assert set(r["again"]) == {len(ALL_CPUS)}
    assert [len(x["cpus"]) for x in r["reports"]] == [1, len(ALL_CPUS)]
    assert {p["user_api"] for p in r["reports"][0]["thread_pools"]} == {"blas"}


@pytest.fixture
def blas_agent(runtime_dir: Path, daemon_ns: str) -> Iterator[subprocess.Popen[str]]:
    """A daemon (aggressive mode, its own throwaway namespace) and a real agent process: numpy loaded, connect()ed,
    printing its affinity and BLAS pools (the runtime_dir fixture stops the daemon)."""
    deploy = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "deploy", "--mode", "aggressive",
                             "--namespace", daemon_ns],
                            capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert deploy.returncode == 0, deploy.stderr
    proc = _python("""
        import json, os, sys, time
        import numpy  # noqa: F401
        import threadpoolctl
        from sutazai_hwopt.host import connect
        connect("blas_agent", {"cpu_cores": 1, "priority": 9}, runtime_dir=sys.argv[1])
        for _ in range(600):
            print(json.dumps({"cpus": sorted(os.sched_getaffinity(0)),
                              "threads": [p["num_threads"] for p in threadpoolctl.threadpool_info()]}), flush=True)
            time.sleep(0.2)
    """, str(runtime_dir))
    yield proc
    proc.kill()
    proc.communicate()


def _until(proc: subprocess.Popen[str], predicate: Any, what: str) -> dict[str, Any]:
    """Read the agent's lines until one satisfies ``predicate`` (the bound only stops a broken build)."""
    assert proc.stdout is not None
    row: dict[str, Any] = {}
    for _ in range(300):
        line = proc.stdout.readline()
        assert line, f"the agent exited before {what}: {proc.stderr.read() if proc.stderr else ''}"
        row = json.loads(line)
        if predicate(row):
            return dict(row)
    raise AssertionError(f"gave up waiting for {what}; last: {row}")


@needs_two
def test_a_connected_agents_blas_pool_is_limited_to_its_placement(runtime_dir: Path,
                                                                  blas_agent: subprocess.Popen[str]) -> None:
    """The daemon places the agent on fewer CPUs; its OpenBLAS pool shrinks to match, `status` shows the size
    the agent reported, and when the daemon gives the CPUs back (unregistering restores the affinity) the pool
    grows back."""
    from sutazai_hwopt.host import HostClient

    placed = _until(blas_agent, lambda r: len(r["cpus"]) < len(ALL_CPUS) and r["threads"] == [len(r["cpus"])],
                    "placement on fewer CPUs with a BLAS pool of that size")
    n = len(placed["cpus"])
    client = HostClient(runtime_dir)
    for _ in range(100):
        (agent,) = client.get("/api/agents")
        pools = (agent.get("report") or {}).get("thread_pools") or []
        if pools and pools[0]["num_threads"] == n:
            break
        time.sleep(0.1)
    assert agent["report"]["cpus"] == placed["cpus"] and pools[0]["user_api"] == "blas"
    status = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "status", "--json"], capture_output=True,
                            text=True, timeout=60, env=os.environ.copy())
    shown = json.loads(status.stdout)["agents"][0]["report"]["thread_pools"]
    assert shown[0]["num_threads"] == n
    table = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "status"], capture_output=True, text=True,
                           timeout=60, env=os.environ.copy())
    assert f"blas {n}" in table.stdout, table.stdout

    client.request("DELETE", "/api/agents/blas_agent")  # restores the affinity the agent had: every CPU
    _until(blas_agent, lambda r: r["cpus"] == ALL_CPUS and r["threads"] == [len(ALL_CPUS)],
           "the pool to follow the wider placement")


def test_report_validation() -> None:
    """Unknown fields, wrong types and negative values are refused; only the given fields come back."""
    assert check_report({"thread_pools": [{"user_api": "blas", "internal_api": "openblas", "num_threads": 2}]}) \
        == {"thread_pools": [{"user_api": "blas", "internal_api": "openblas", "prefix": "", "num_threads": 2}]}
    assert check_report({"cpus": [3, 1, 1], "p99_ms": 4}) == {"cpus": [1, 3], "p99_ms": 4.0}
    for bad in ({"extra": 1}, {"cpus": [-1]}, {"cpus": "0-3"}, {"thread_pools": [{"num_threads": -1}]},
                {"thread_pools": [{"num_threads": True}]}, {"thread_pools": [1]}, {"p99_ms": -1.0},
                {"p99_ms": "fast"}):
        with pytest.raises(InvalidArgumentError):
            check_report(bad)
    assert report_path("a/b") == "/api/agents/a%2Fb/report"


def test_report_through_the_api(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    """PUT /api/agents/{id}/report: token needed, 404 for an unknown agent, 422 for a bad body; kept until
    the agent leaves; a later report updates only the fields it names."""
    svc = HostService(load_config(mode="balanced"), state_dir=str(tmp_path / "j"))
    try:
        svc.register_agent("a", sleepers[0].pid, {"cpu_cores": 1})
        body = {"cpus": [0], "thread_pools": [{"user_api": "blas", "internal_api": "openblas", "num_threads": 1}]}
        with TestClient(create_app(svc, TOKEN)) as c:
            assert c.put(report_path("a"), json=body).status_code == 401
            assert c.put(report_path("nope"), json=body, headers=AUTH).status_code == 404
            assert c.put(report_path("a"), json={"cpus": "x"}, headers=AUTH).status_code == 422
            assert c.put(report_path("a"), json=body, headers=AUTH).status_code == 200
            assert c.put(report_path("a"), json={"p99_ms": 12.5}, headers=AUTH).status_code == 200
            (agent,) = c.get("/api/agents").json()
            assert agent["report"]["thread_pools"][0]["num_threads"] == 1 and agent["report"]["p99_ms"] == 12.5
            assert c.get("/api/dashboard").json()["agents"][0]["report"]["cpus"] == [0]
            svc.unregister_agent("a")
            assert svc.agent_reports == {}
    finally:
        svc.close(rollback=True)
