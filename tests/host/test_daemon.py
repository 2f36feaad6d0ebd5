"""The daemon end to end through the CLI: deploy, register real agents, status, /metrics, stop, kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sutazai_hwopt.host import HostClient, connect
from sutazai_hwopt.host.runtime import RuntimeDir


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai_hwopt", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())


def wait_for(predicate, what: str, limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` holds; the bound only keeps a broken build from hanging the suite."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_deploy_register_status_metrics_stop(runtime_dir: Path, daemon_ns: str,
                                            sleepers: list[subprocess.Popen[bytes]]) -> None:
    """Full lifecycle: every setting the daemon applied to real agent processes is back after `stop`."""
    before = {p.pid: (os.sched_getaffinity(p.pid), os.getpriority(os.PRIO_PROCESS, p.pid),
                      os.sched_getscheduler(p.pid)) for p in sleepers}
    run = cli("deploy", "--mode", "aggressive", "--namespace", daemon_ns)
    assert run.returncode == 0, run.stderr
    assert "dashboard: http://127.0.0.1:" in run.stdout
    rt = RuntimeDir(runtime_dir)
    curl = next(line.strip() for line in run.stdout.splitlines() if line.strip().startswith("curl "))
    assert f'-H "Authorization: Bearer $(cat {rt.token_file})"' in curl and curl.endswith("/api/status")
    assert stat.S_IMODE(rt.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(rt.token_file.stat().st_mode) == 0o600
    assert cli("deploy").returncode == 4  # refuses to start twice

    for i, p in enumerate(sleepers):
        record = connect(f"agent_{i:03d}", {"cpu_cores": 1, "priority": 9 - 4 * i}, pid=p.pid,
                         runtime_dir=runtime_dir)
        assert record["pid"] == p.pid
    client = HostClient(runtime_dir)
    result = client.post("/api/optimize", {"strategy": "priority"})
    assert len(result["placement"]["placements"]) == 3

    def changed() -> bool:
        return any((os.getpriority(os.PRIO_PROCESS, p.pid), os.sched_getscheduler(p.pid))
                   != before[p.pid][1:] for p in sleepers)

    wait_for(changed, "the aggressive mode to change nice or scheduler policy of an agent")

    status = cli("status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["status"]["mode"] == "aggressive"
    assert {a["agent_id"] for a in data["agents"]} == {"agent_000", "agent_001", "agent_002"}
    assert "history" not in data and "latest" in data and isinstance(data["shm"], dict)
    assert isinstance(json.loads(cli("status", "--json", "--history").stdout)["history"], list)
    table = cli("status")
    assert table.returncode == 0 and "agent_001" in table.stdout
    assert max(map(len, table.stdout.splitlines())) <= 80, table.stdout

    with urllib.request.urlopen(client.url + "/metrics", timeout=10) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    assert families["sutazai_hwopt_agents"].samples[0].value == 3.0

    stop = cli("stop")
    assert stop.returncode == 0, stop.stderr
    for p in sleepers:
        assert (os.sched_getaffinity(p.pid), os.getpriority(os.PRIO_PROCESS, p.pid),
                os.sched_getscheduler(p.pid)) == before[p.pid]
    assert not rt.pid_file.exists()
    assert cli("stop").returncode == 3
    assert cli("status").returncode == 3


def test_sigkilled_daemon_is_rolled_back_by_next_command(runtime_dir: Path, daemon_ns: str,
                                                         sleepers: list[subprocess.Popen[bytes]]) -> None:
    """A SIGKILLed daemon leaves a stale pid file; `stop` detects it and restores what it had applied."""
    p = sleepers[0]
    before = (os.sched_getaffinity(p.pid), os.getpriority(os.PRIO_PROCESS, p.pid))
    assert cli("deploy", "--mode", "aggressive", "--namespace", daemon_ns).returncode == 0
    connect("victim", {"cpu_cores": 1, "priority": 1}, pid=p.pid, runtime_dir=runtime_dir)
    HostClient(runtime_dir).post("/api/optimize", {"strategy": "priority"})
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, p.pid) != before[1], "the low-priority agent to be reniced")
    rt = RuntimeDir(runtime_dir)
    record = rt.running()
    assert record is not None
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not record.alive(), "the daemon to die")
    assert rt.stale() is not None
    status = cli("status")
    assert status.returncode == 3 and "stale" in status.stdout
    stop = cli("stop")
    assert stop.returncode == 0 and "had died" in stop.stdout
    assert (os.sched_getaffinity(p.pid), os.getpriority(os.PRIO_PROCESS, p.pid)) == before
    assert rt.stale() is None


def test_connect_without_daemon_is_a_clear_error(runtime_dir: Path) -> None:
    """An agent calling connect() with no host service running gets a StateError naming the fix."""
    from sutazai_hwopt.errors import StateError

    with pytest.raises(StateError, match="deploy"):
        connect("lonely")


def test_cli_reads_the_command_table_explicitly() -> None:
    """The host's subcommands come from its COMMANDS table, added by build_parser, none by import side effect."""
    import argparse

    from sutazai_hwopt import cli
    from sutazai_hwopt.host import commands

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["info", "config", *(c[0] for c in commands.COMMANDS)]
    for name, _help, _add, run in commands.COMMANDS:
        assert sub.choices[name].get_default("run") is run
