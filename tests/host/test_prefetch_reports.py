"""Agents' prefetch decisions reach the daemon: validated reports, /api/metrics, /metrics, status and the
dashboard; a real connected agent whose governor switches on for a workflow and off for a random stream."""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.config import load_config
from sutazai_hwopt.errors import HwoptError, InvalidArgumentError
from sutazai_hwopt.host.agent_prefetch import PrefetchReporter, check_prefetch, prefetch_rows
from sutazai_hwopt.host.agent_threads import check_report, report_path
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.commands import _print_status
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.testing import throwaway_namespace

TOKEN = "prefetch-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = {"cache": "ns", "mode": "auto", "state": "on", "reason_code": "pays", "reason": "pays: precision 0.91",
       "precision": 0.91, "coverage": 0.3, "prefetched": 120, "used": 109, "requests": 9000, "switches": 2}


def test_prefetch_rows_are_validated_strictly() -> None:
    """A good row comes back as given (numbers normalised); anything else is refused; older bodies stay valid."""
    assert check_prefetch([ROW]) == [ROW]
    assert check_prefetch([]) == []
    assert check_prefetch([{**ROW, "precision": 1, "coverage": 0}])[0]["precision"] == 1.0
    assert check_report({"prefetch": [ROW], "p99_ms": 3}) == {"prefetch": [ROW], "p99_ms": 3.0}
    assert check_report({"cpus": [0]}) == {"cpus": [0]}   # a report without prefetch rows is still valid
    missing = {k: v for k, v in ROW.items() if k != "used"}
    for bad in ({"prefetch": {}}, {"prefetch": [ROW] * 65}, {"prefetch": [1]}, {"prefetch": [missing]},
                {"prefetch": [{**ROW, "extra": 1}]}, {"prefetch": [{**ROW, "state": "probing"}]},
                {"prefetch": [{**ROW, "reason_code": "because"}]}, {"prefetch": [{**ROW, "precision": 1.5}]},
                {"prefetch": [{**ROW, "coverage": -0.1}]}, {"prefetch": [{**ROW, "precision": float("nan")}]},
                {"prefetch": [{**ROW, "precision": True}]}, {"prefetch": [{**ROW, "used": -1}]},
                {"prefetch": [{**ROW, "used": 1.5}]}, {"prefetch": [{**ROW, "switches": False}]},
                {"prefetch": [{**ROW, "cache": ""}]}, {"prefetch": [{**ROW, "cache": "x" * 129}]},
                {"prefetch": [{**ROW, "reason": "a\nb"}]}, {"prefetch": [{**ROW, "mode": 3}]},
                {"prefetch": [ROW, ROW]}, {"prefetch": [{**ROW, "state": ["on"]}]}):
        with pytest.raises(InvalidArgumentError):
            check_report(bad)


VALUE = bytes(32 << 10)   # workflow keys of 32 KiB do not all fit the 1 MiB tier: they miss unless prefetched


def _workflow(n: int, rng: random.Random) -> Iterator[tuple[str, str]]:
    """Four agents interleaved, each repeating one of twelve fixed tool-call chains (72 keys)."""
    chains = [[f"wf{t}:step{j}" for j in range(6)] for t in range(12)]
    queues: dict[str, list[str]] = {f"agent{i}": [] for i in range(4)}
    for _ in range(n):
        a = rng.choice(list(queues))
        if not queues[a]:
            queues[a] = list(rng.choice(chains))
        yield a, queues[a].pop(0)


def _random(n: int, rng: random.Random, prefix: str) -> Iterator[tuple[str, str]]:
    for _ in range(n):
        yield f"agent{rng.randrange(4)}", f"{prefix}{rng.randrange(100_000)}"


def _run(cache: IntelligentCacheSystem, stream: Iterator[tuple[str, str]]) -> None:
    for agent, key in stream:
        if cache.get(key, agent)[1] is None:
            cache.put(key, VALUE, agent)


def test_the_reporter_sends_on_a_change_and_not_while_nothing_moves() -> None:
    """Polled by hand (no thread, no clock): a new cache is one report, nothing more while idle; the governor
    switching on is one report with the new state; a closed cache is a report without it; a failing send stays
    inside the reporter."""
    gc.collect()   # governors other tests dropped: their going away mid-test would be a change (and a report)
    sent: list[dict[str, Any]] = []
    reporter = PrefetchReporter(sent.append, heartbeat_s=1e9)
    rng = random.Random(5)
    with throwaway_namespace("pfr") as ns:
        before = {r["cache"] for r in prefetch_rows()}
        cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                        "prefetch_inline": True}, loader=lambda k: VALUE)
        try:
            assert reporter.poll() and not reporter.poll()
            mine = [r for r in sent[-1]["prefetch"] if r["cache"] not in before]
            assert [(r["cache"], r["state"], r["reason_code"]) for r in mine] == [(ns, "off", "watching")]
            _run(cache, _random(8000, rng, "r"))
            assert not reporter.poll()            # figures moved, no decision changed: the heartbeat waits
            _run(cache, _workflow(8000, rng))
            assert cache.stats()["prefetch"]["state"] == "on"
            assert reporter.poll()
            (row,) = [r for r in sent[-1]["prefetch"] if r["cache"] == ns]
            assert row["state"] == "on" and row["reason_code"] == "pays" and row["used"] > 0
            assert row["switches"] >= 2 and check_prefetch([row]) == [row]
            n = len(sent)
            reporter.send = _failing
            _run(cache, _random(8000, rng, "s"))
            assert cache.stats()["prefetch"]["state"] == "off"
            assert not reporter.poll() and len(sent) == n   # not delivered, nothing raised
        finally:
            cache.destroy()
        reporter.send = sent.append
        reporter._retry_at = 0.0   # the retry waits a heartbeat; this test does not
        assert reporter.poll()
        assert ns not in {r["cache"] for r in sent[-1]["prefetch"]}


def _failing(body: dict[str, Any]) -> None:
    raise HwoptError("the host service went away")


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition ``text`` (labels compared after unescaping), or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_prefetch_rows_through_the_api(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """PUT the rows: /api/metrics, /api/agents, /metrics (labels escaped) and status show them; bad bodies are
    422 and change nothing; a thread-pool report keeps them; an unregistered agent's rows go."""
    svc = HostService(load_config(mode="balanced"), state_dir=str(tmp_path / "j"))
    odd = 'ns "quoted" \\ back'
    try:
        svc.register_agent("a", sleepers[0].pid, {"cpu_cores": 1})
        with TestClient(create_app(svc, TOKEN)) as c:
            body = {"prefetch": [ROW, {**ROW, "cache": odd, "state": "off", "reason_code": "low_coverage",
                                       "reason": "does not pay: coverage 0.01 < 0.05"}]}
            assert c.put(report_path("a"), json=body).status_code == 401
            assert c.put(report_path("a"), json=body, headers=AUTH).status_code == 200
            kept = c.get("/api/metrics").json()["prefetch"]
            assert [(r["cache"], r["state"], r["enabled"]) for r in kept["a"]] == [("ns", "on", True),
                                                                                  (odd, "off", False)]
            for bad in ({"prefetch": [{**ROW, "state": "maybe"}]}, {"prefetch": "on"},
                        {"prefetch": [{**ROW, "precision": 2}]}, {"prefetch": [ROW], "other": 1}):
                r = c.put(report_path("a"), json=bad, headers=AUTH)
                assert r.status_code == 422 and "error" in r.json(), bad
            assert c.get("/api/metrics").json()["prefetch"] == kept
            assert c.put(report_path("a"), json={"p99_ms": 5}, headers=AUTH).status_code == 200
            assert [r["cache"] for r in c.get("/api/agents").json()[0]["report"]["prefetch"]] == ["ns", odd]
            text = c.get("/metrics").text
            assert _metric(text, "sutazai_hwopt_agent_prefetch_enabled", agent="a", cache="ns") == 1.0
            assert _metric(text, "sutazai_hwopt_agent_prefetch_enabled", agent="a", cache=odd) == 0.0
            assert _metric(text, "sutazai_hwopt_agent_prefetch_precision", agent="a", cache="ns") == 0.91
            assert _metric(text, "sutazai_hwopt_agent_prefetch_state", agent="a", cache=odd, state="off",
                           reason="low_coverage") == 1.0
            assert _metric(text, "sutazai_hwopt_agent_prefetch_used_total", agent="a", cache="ns") == 109.0
            assert 'cache="ns \\"quoted\\" \\\\ back"' in text   # the exposition's escaping
            _print_status({"status": {"pid": 1, "mode": "balanced", "uptime_s": 1.0, "services": {}},
                           "agents": c.get("/api/agents").json()}, "http://x")
            out = capsys.readouterr().out
            assert "prefetching" in out and "low_coverage" in out and "91%" in out
            assert max(len(line) for line in out.splitlines()) <= 80, out
            assert c.put(report_path("a"), json={"prefetch": []}, headers=AUTH).status_code == 200
            assert c.get("/api/metrics").json()["prefetch"] == {}
            assert c.put(report_path("a"), json=body, headers=AUTH).status_code == 200
            svc.unregister_agent("a")
            assert c.get("/api/metrics").json()["prefetch"] == {}
            assert _metric(c.get("/metrics").text, "sutazai_hwopt_agent_prefetch_enabled") is None
    finally:
        svc.close(rollback=True)


# ---- a real daemon and a real connected agent process ------------------------------------------------------------
AGENT = """
    import random, sys
    from sutazai_hwopt.cache.system import IntelligentCacheSystem
    from sutazai_hwopt.host import connect

    VALUE = bytes(32 << 10)
    connect("pf_agent", {"cpu_cores": 1}, runtime_dir=sys.argv[1])
    cache = IntelligentCacheSystem({"namespace": sys.argv[2], "l1_size": 0, "l2_size": 1 << 20, "l3_size": 0,
                                    "prefetch_inline": True}, loader=lambda k: VALUE)
    rng = random.Random(5)

    def run(stream):
        for agent, key in stream:
            if cache.get(key, agent)[1] is None:
                cache.put(key, VALUE, agent)
        print(cache.stats()["prefetch"]["state"], flush=True)

    def workflow(n):
        chains = [[f"wf{t}:step{j}" for j in range(6)] for t in range(12)]
        queues = {f"agent{i}": [] for i in range(4)}
        for _ in range(n):
            a = rng.choice(list(queues))
            if not queues[a]:
                queues[a] = list(rng.choice(chains))
            yield a, queues[a].pop(0)

    def rand(n, prefix):
        for _ in range(n):
            yield f"agent{rng.randrange(4)}", f"{prefix}{rng.randrange(100_000)}"

    try:
        for phase in (lambda: rand(8000, "r"), lambda: workflow(8000), lambda: rand(8000, "s")):
            if sys.stdin.readline().strip() != "go":
                break
            run(phase())
        sys.stdin.readline()
    finally:
        cache.destroy()
"""


def _poll(what: str, probe: Callable[[], Any], deadline_s: float = 120.0) -> Any:
    """``probe()`` until it returns something true (the deadline only stops a broken build)."""
    end = time.monotonic() + deadline_s
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.2)


def _showing(row: Callable[[], dict[str, Any] | None], state: str, codes: set[str]) -> dict[str, Any] | None:
    r = row()
    return r if r is not None and r["state"] == state and r["reason_code"] in codes else None


def _equals(probe: Callable[[], Any], value: Any) -> bool:
    return bool(probe() == value)


def test_a_connected_agents_prefetch_decision_reaches_the_daemon(runtime_dir: Path, daemon_ns: str) -> None:
    """The agent runs a random stream, then a repeating workflow, then a random stream again: the daemon's
    /api/metrics and /metrics show the decision off (watching), then on (it pays), then off (it does not pay);
    a bad report is refused with 422 and changes nothing."""
    from sutazai_hwopt.host import HostClient

    deploy = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "deploy", "--namespace", daemon_ns],
                            capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert deploy.returncode == 0, deploy.stderr
    client = HostClient(runtime_dir)
    with throwaway_namespace("pfa") as cache_ns:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(AGENT), str(runtime_dir), cache_ns],
                                text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=os.environ.copy())
        assert proc.stdin is not None and proc.stdout is not None
        try:
            def row() -> dict[str, Any] | None:
                rows = client.get("/api/metrics")["prefetch"].get("pf_agent") or []
                return next((r for r in rows if r["cache"] == cache_ns), None)

            def enabled() -> float | None:
                return _metric(client.get("/metrics"), "sutazai_hwopt_agent_prefetch_enabled",
                               agent="pf_agent", cache=cache_ns)

            first = _poll("the agent's first report", row)
            assert (first["state"], first["reason_code"], first["enabled"]) == ("off", "watching", False)
            for expected_state, codes, on in (("off", {"watching"}, 0.0), ("on", {"pays"}, 1.0),
                                              ("off", {"low_precision", "low_coverage"}, 0.0)):
                proc.stdin.write("go\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                assert line.strip() == expected_state, (line, proc.stderr.read() if not line else "")
                shown = _poll(f"the daemon to show {expected_state}", partial(_showing, row, expected_state, codes))
                assert _poll(f"/metrics to show enabled={on}", partial(_equals, enabled, on))
            assert shown["switches"] >= 3 and shown["used"] > 0 and shown["prefetched"] >= shown["used"]
            text = client.get("/metrics")
            assert _metric(text, "sutazai_hwopt_agent_prefetch_switches_total", agent="pf_agent",
                           cache=cache_ns) == shown["switches"]
            before = client.get("/api/metrics")["prefetch"]
            with pytest.raises(HwoptError, match="HTTP 422"):
                client.request("PUT", report_path("pf_agent"), {"prefetch": [{**ROW, "state": "sideways"}]})
            assert client.get("/api/metrics")["prefetch"] == before
            status = subprocess.run([sys.executable, "-m", "sutazai_hwopt", "status", "--json"],
                                    capture_output=True, text=True, timeout=60, env=os.environ.copy())
            (agent,) = json.loads(status.stdout)["agents"]
            assert agent["report"]["prefetch"][0]["state"] == "off"
            proc.stdin.write("done\n")
            proc.stdin.flush()
            assert proc.wait(timeout=60) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
