"""The daemon owns its namespace: tiers and pools created at deploy, served by GET /api/config, kept by `stop`,
removed by `stop --purge`; a process without a daemon builds its own as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from sutazai_hwopt import IntelligentCacheSystem, MemoryPoolManager
from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.config import HwoptConfig, load_config
from sutazai_hwopt.host import HostClient, connect, fleet_config
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.commands import _print_namespace
from sutazai_hwopt.host.namespace import DEFAULT_POOLS, plan_for
from sutazai_hwopt.host.segments import purge
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.shm import list_segment_names
from sutazai_hwopt.testing import throwaway_namespace

MiB = 1 << 20


def small(ns: str, **cache: int) -> dict[str, dict[str, object]]:
    """Overrides for a namespace with tiers and pools of a few MiB (the tests' /dev/shm stays small)."""
    return {"cache": {"namespace": ns, "l2_size": 4 * MiB, "l3_size": 4 * MiB, "l1_size": MiB,
                      "enable_prefetch": False, **cache},
            "hardware": {"shared_memory_size_mb": 2, "cache_size_mb": 64}}


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("own") as name:
        yield name


def test_plan_fits_the_shared_tiers_into_cache_size_mb() -> None:
    """L2 + L3 stay within hardware.cache_size_mb: L3 gives way first, then L2; under 1 MiB a tier is off."""
    def plan(budget_mb: int, l2: int, l3: int) -> tuple[int, int]:
        p = plan_for(load_config(overrides={"hardware": {"cache_size_mb": budget_mb},
                                            "cache": {"l2_size": l2, "l3_size": l3}}))
        return p.l2_size, p.l3_size

    assert plan(100, 10 * MiB, 20 * MiB) == (10 * MiB, 20 * MiB)   # within budget: as configured
    assert plan(25, 10 * MiB, 20 * MiB) == (10 * MiB, 15 * MiB)    # L3 gives way
    assert plan(8, 10 * MiB, 20 * MiB) == (8 * MiB, 0)             # then L2
    assert plan(11, 10 * MiB, 20 * MiB) == (10 * MiB, MiB)
    assert plan(10, 10 * MiB, 20 * MiB)[1] == 0                    # nothing left for L3
    p = plan_for(load_config(mode="aggressive"))
    assert p.l2_size + p.l3_size <= p.budget == 5120 * MiB and set(p.pools) == set(DEFAULT_POOLS)


def test_service_owns_tiers_and_pools_and_serves_them(ns: str, tmp_path: Path) -> None:
    """own_namespace creates the tiers and pools; GET /api/config (no token) serves them; a process that names
    the namespace attaches the daemon's tiers whatever size it asks for; close leaves the data for a restart."""
    config = load_config(mode="balanced", overrides=small(ns, redis_hmac_key=None))
    svc = HostService(config, state_dir=str(tmp_path / "j"))
    try:
        svc.own_namespace()
        assert sorted(list_segment_names(ns)) == sorted(
            [f"sutazai_hwopt.u{os.geteuid()}.{ns}.cache.{c}" for c in ("l1budget", "l2", "l3")]
            + [f"sutazai_hwopt.u{os.geteuid()}.{ns}.pool.{p}" for p in DEFAULT_POOLS])
        with TestClient(create_app(svc, token="secret")) as http:
            answer = http.get("/api/config")         # reads need no token
            assert answer.status_code == 200
            served = answer.json()
            assert http.get("/api/dashboard").json()["namespace"]["tiers"] == served["tiers"]
        assert served["namespace"] == ns
        assert served["tiers"] == {"L2": {"size": 4 * MiB}, "L3": {"size": 4 * MiB}}
        assert served["pools"] == {p: {"capacity": 2 * MiB} for p in DEFAULT_POOLS}
        agent_cfg = HwoptConfig.from_dict(served["config"])
        assert agent_cfg.cache.namespace == ns and agent_cfg.cache.l1_size == MiB
        assert agent_cfg.balancer.namespace == ns              # the agents' balancers share one table
        lb_a, lb_b = DynamicLoadBalancer(agent_cfg), DynamicLoadBalancer(agent_cfg)
        for lb in (lb_a, lb_b):
            lb.register_service(BackendService(service_id="agent_x", port=1))
        lb_a.select_backend_sync()                             # in flight, not recorded
        assert lb_b._shared is not None and lb_b._shared.outstanding("agent_x") == 1
        lb_a.close()
        lb_b.close()
        # a process naming the namespace with other sizes gets the daemon's tiers (and sees its pools)
        with IntelligentCacheSystem({"namespace": ns, "l2_size": 64 * MiB, "l3_size": 32 * MiB,
                                     "enable_prefetch": False}) as cache:
            levels = cache.stats()["levels"]
            assert levels["L2"]["budget"] == 4 * MiB and levels["L3"]["budget"] == 4 * MiB
            cache.put("kept", b"across a restart", "agent_a")
        with MemoryPoolManager(ns) as pm:
            assert pm.stats("shared")["capacity"] == 2 * MiB
    finally:
        svc.close()
    assert len(list_segment_names(ns)) == 6   # stop leaves the data (tiers, L1 budget, pools, the balancers' table)
    again = HostService(load_config(mode="balanced", overrides=small(ns, l2_size=8 * MiB)),
                        state_dir=str(tmp_path / "j2"))
    try:
        served = again.own_namespace()   # a restart takes the tiers over, data included; sizes stay until purged
        assert served["tiers"]["L2"] == {"size": 4 * MiB}
        with IntelligentCacheSystem(HwoptConfig.from_dict(served["config"])) as cache:
            assert cache.get("kept", "agent_b") == (b"across a restart", "L2")
    finally:
        again.close()
    removed, busy = purge(ns)
    assert len(removed) == 6 and not busy and list_segment_names(ns) == []


def test_without_a_daemon_a_process_builds_its_own_tiers(ns: str, tmp_path: Path) -> None:
    """No daemon: fleet_config says so, and a cache of the namespace creates its tiers with its own sizes."""
    from sutazai_hwopt.errors import StateError

    with pytest.raises(StateError, match="deploy"):
        fleet_config(tmp_path / "nothing-runs")
    with IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 2 * MiB, "l3_size": 0,
                                 "enable_prefetch": False}) as cache:
        cache.put("k", b"v")
        assert cache.stats()["levels"]["L2"]["budget"] == 2 * MiB
        assert cache.get("k") == (b"v", "L2")


def test_status_shows_the_owned_namespace_within_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    _print_namespace(_console(), {"namespace": "n" * 64, "cache_budget": 1280 * MiB,
                                  "tiers": {"L2": {"size": 256 * MiB}, "L3": {"size": 1024 * MiB}},
                                  "pools": {"default": {"capacity": 1024 * MiB}, "shared": {"error": "gone"}}})
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for expected in ("n" * 64, "L2 256.0 MiB", "L3 1.0 GiB", "budget 1.2 GiB", "default 1.0 GiB",
                     "shared (error)", "stop --purge"):
        assert expected in out, expected


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(width=80)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai_hwopt", *args], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


def test_deploy_connect_status_stop_and_purge(runtime_dir: Path, daemon_ns: str, tmp_path: Path,
                                              sleepers: list[subprocess.Popen[bytes]]) -> None:
    """The real daemon: connect() returns the fleet's configuration; `status` shows tiers and pools; `stop`
    keeps them; `stop --purge` is refused while another process maps them (its view stays valid), then removes
    them once it is gone."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "cache_system.json").write_text(json.dumps({"l2_size": 3 * MiB, "l3_size": 2 * MiB, "l1_size": MiB}))
    (conf / "hardware_optimization.json").write_text(json.dumps({"shared_memory_size_mb": 2}))
    run = cli("deploy", "--config", str(conf), "--namespace", daemon_ns)
    assert run.returncode == 0, run.stderr
    record = connect("agent_ns", {"cpu_cores": 1, "priority": 5}, pid=sleepers[0].pid, runtime_dir=runtime_dir)
    assert record["config"]["cache"]["namespace"] == daemon_ns
    cfg = fleet_config(runtime_dir)
    assert (cfg.cache.l1_size, cfg.cache.l2_size, cfg.cache.l3_size) == (MiB, 3 * MiB, 2 * MiB)
    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert daemon_ns in status.stdout and "L2 3.0 MiB" in status.stdout and "default 2.0 MiB" in status.stdout
    assert cli("stop").returncode == 0
    assert len(list_segment_names(daemon_ns)) == 5   # kept for the next deploy (tiers, L1 budget, pools)
    assert cli("deploy", "--config", str(conf), "--namespace", daemon_ns).returncode == 0
    assert HostClient(runtime_dir).get("/api/config")["pools"]["default"] == {"capacity": 2 * MiB}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom sutazai_hwopt import MemoryPoolManager\n"
         f"pm = MemoryPoolManager({daemon_ns!r})\nbid = pm.put_bytes('a', b'x' * 100)\nprint('ready', flush=True)\n"
         "sys.stdin.readline()\nassert pm.read('a', bid) == b'x' * 100\nprint('still valid', flush=True)\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        busy = cli("stop", "--purge")                                # purges the namespace the daemon owned
        assert busy.returncode == 5 and daemon_ns in busy.stderr, busy.stderr
        assert len(list_segment_names(daemon_ns)) == 5
        out, _ = holder.communicate("go\n", timeout=60)
        assert holder.returncode == 0 and "still valid" in out
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    purged = cli("clean", "--namespace", daemon_ns)
    assert purged.returncode == 0 and "removed 5 segments" in purged.stdout, purged.stdout
    assert list_segment_names(daemon_ns) == []


def test_stop_purge_removes_the_daemons_namespace(runtime_dir: Path, daemon_ns: str) -> None:
    """`stop --purge` with no --namespace removes the namespace the daemon owned, not the configured default."""
    assert cli("deploy", "--namespace", daemon_ns, "--l2-size", str(2 * MiB), "--pool-size", "1").returncode == 0
    assert len(list_segment_names(daemon_ns)) == 5          # L1 budget, L2, L3, two pools
    stop = cli("stop", "--purge")
    assert stop.returncode == 0, stop.stderr
    assert f"namespace {daemon_ns}: removed 5 segments" in stop.stdout
    assert list_segment_names(daemon_ns) == []
