"""PerformanceProfiler API: construction, sampling real processes and children, rings, reports, coordinator."""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sutazai_hwopt import PerformanceProfiler
from sutazai_hwopt.errors import InvalidArgumentError, NotFoundError, StateError
from sutazai_hwopt.profiler.containers import parse_cgroup
from sutazai_hwopt.profiler.ring import Ring
from sutazai_hwopt.testing import FakeClock

PARENT = r"""
import os, sys, time
sys.stdout.write("r"); sys.stdout.flush()
sys.stdin.read(1)
for _ in range(2):
    if os.fork() == 0:
        time.sleep(600); os._exit(0)
sys.stdout.write("c"); sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def parent() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         start_new_session=True)
    assert p.stdout is not None and p.stdout.read(1) == b"r"
    yield p
    os.killpg(p.pid, 9)
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()


def test_public_import_and_sample_of_this_process() -> None:
    """``from sutazai_hwopt import PerformanceProfiler`` works and sample() returns host and agent data."""
    with PerformanceProfiler(agents={"me": os.getpid()}) as prof:
        prof.sample()
        s = prof.sample()
        assert s.system_metrics["cpu"]["count"] == os.cpu_count()
        assert s.system_metrics["memory"]["total"] > 0
        me = s.agent_profiles["me"]
        assert me["pid"] == os.getpid() and me["alive"] is True
        assert me["threads"] >= 1 and me["rss_bytes"] > 1e6
        if os.path.exists("/proc/pressure/cpu"):
            assert "some" in s.system_metrics["pressure"]["cpu"]


@pytest.mark.parametrize("agents, exc, match", [
    ([1, 2], InvalidArgumentError, "mapping"),
    ({"": 1}, InvalidArgumentError, "non-empty"),
    ({"a": -3}, InvalidArgumentError, "positive pid"),
    ({"a": True}, InvalidArgumentError, "positive pid"),
    ({"a": 2**22 + 4321}, NotFoundError, "no process"),
])
def test_bad_agents_are_refused(agents: object, exc: type[Exception], match: str) -> None:
    """Malformed agent maps and dead pids raise clear errors."""
    with pytest.raises(exc, match=match):
        PerformanceProfiler(agents=agents)  # type: ignore[arg-type]


def test_bad_numbers_are_refused() -> None:
    """interval, slow budget and a coordinator without agents() are validated."""
    with pytest.raises(InvalidArgumentError, match="interval_s"):
        PerformanceProfiler(agents={}, interval_s=0)
    with pytest.raises(InvalidArgumentError, match="slow_budget_s"):
        PerformanceProfiler(agents={}, slow_budget_s=-1)
    with pytest.raises(InvalidArgumentError, match="coordinator"):
        PerformanceProfiler(coordinator=object())


def test_children_are_counted_with_their_agent(parent: subprocess.Popen[bytes]) -> None:
    """Processes an agent forks are sampled as part of it (nprocs and pids grow)."""
    with PerformanceProfiler(agents={"p": parent.pid}) as prof:
        prof.sample()
        assert parent.stdin is not None and parent.stdout is not None
        parent.stdin.write(b"g")
        parent.stdin.flush()
        assert parent.stdout.read(1) == b"c"
        for _ in range(100):  # bounded poll
            p = prof.sample().agent_profiles["p"]
            if p["nprocs"] == 3:
                break
            time.sleep(0.02)
        assert p["nprocs"] == 3 and len(p["pids"]) == 3


def test_exited_agent_is_marked_dead_and_its_fds_closed(sleeper: subprocess.Popen[bytes]) -> None:
    """When an agent's process exits it is reported not alive and its descriptors are released."""
    with PerformanceProfiler(agents={"s": sleeper.pid}) as prof:
        prof.sample()
        assert prof._agents.open_fds > 0
        sleeper.kill()
        sleeper.wait()
        prof.sample()
        assert prof.agents == {}
        assert prof.agent_profiles()["s"]["alive"] is False
        assert prof._agents.open_fds == 0
        assert prof.detect_bottlenecks() == [] or all("s" not in b.agents for b in prof.detect_bottlenecks())


def test_add_remove_and_closed_state(sleeper: subprocess.Popen[bytes]) -> None:
    """add_agent/remove_agent validate ids; a closed profiler refuses to sample."""
    prof = PerformanceProfiler(agents={})
    prof.add_agent("s", sleeper.pid)
    assert prof.agents == {"s": sleeper.pid}
    with pytest.raises(NotFoundError, match="not profiled"):
        prof.remove_agent("zzz")
    with pytest.raises(InvalidArgumentError):
        prof.add_agent("", 5)
    prof.remove_agent("s")
    assert prof.agents == {}
    prof.close()
    with pytest.raises(StateError):
        prof.sample()


def test_rings_are_bounded_and_keep_the_newest() -> None:
    """History never exceeds its capacity; windows come back oldest first."""
    ring = Ring(4, (2,), np.float64)
    for i in range(10):
        ring.push(float(i), np.array([i, -i]))
    t, rows = ring.window()
    assert list(t) == [6.0, 7.0, 8.0, 9.0] and list(rows[:, 0]) == [6, 7, 8, 9]
    assert len(ring) == 4
    ring.widen(5)
    assert ring.row_shape == (5,) and np.isnan(ring.window(1)[1][0, 4])
    with pytest.raises(InvalidArgumentError):
        Ring(1, (1,))
    with PerformanceProfiler(agents={"me": os.getpid()}, history=5, clock=FakeClock()) as prof:
        for _ in range(12):
            prof.sample()
        assert len(prof._host_ring) == 5 and len(prof._agent_ring) == 5


def test_memory_growth_trend_is_computed_from_the_ring() -> None:
    """Consecutive RSS growth in the ring gives growth intervals, bytes and slope (FakeClock)."""
    clock = FakeClock(100.0)
    with PerformanceProfiler(agents={"me": os.getpid()}, clock=clock) as prof:
        prof.sample()
        held = []
        for _ in range(3):
            clock.advance(1.0)
            # fresh anonymous pages: a bytearray may reuse heap memory the process already has resident (glibc
            # raises its mmap threshold after large frees), and then RSS does not grow
            held.append(mmap.mmap(-1, 24 * 1024 * 1024))
            for i in range(0, len(held[-1]), 4096):
                held[-1][i] = 1
            prof.sample()
        p = prof.agent_profiles()["me"]
        assert p["rss_growth_intervals"] >= 3
        assert p["rss_growth_bytes"] >= 60 * 1024 * 1024
        assert p["rss_slope_bps"] >= 20 * 1024 * 1024
        assert p["rss_trend_bps"] >= 20 * 1024 * 1024 and p["rss_trend_r2"] > 0.8
        assert ("memory_leak", "me") in {(b.type, a) for b in prof.detect_bottlenecks() for a in b.agents}


def test_comprehensive_analysis_reports_and_exports(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """run_comprehensive_analysis samples, reports progress, and export writes strict JSON with mode 0600."""
    calls: list[tuple[int, int]] = []
    with PerformanceProfiler(agents={"s": sleeper.pid}) as prof:
        report = asyncio.run(prof.run_comprehensive_analysis(duration=0.3, interval_s=0.1,
                                                             progress=lambda d, t: calls.append((d, t))))
        assert calls[-1][0] == calls[-1][1] == 4
        assert report["samples"] == 4 and "s" in report["agent_profiles"]
        assert "cpu_util" in report["host"] or report["samples"] < 2
        path = prof.export_results(tmp_path / "report.json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = json.loads(path.read_text())
        assert data["sampler"]["passes"] == 4
        with pytest.raises(InvalidArgumentError, match="duration"):
            asyncio.run(prof.run_comprehensive_analysis(duration=-1))


def test_predictions_and_containers(sleeper: subprocess.Popen[bytes]) -> None:
    """predict() returns trends and anomaly scores per live agent; containers group agents by cgroup."""
    clock = FakeClock()
    with PerformanceProfiler(agents={"s": sleeper.pid, "me": os.getpid()}, clock=clock) as prof:
        for _ in range(8):
            clock.advance(1.0)
            prof.sample()
        pred = prof.predict()
        assert set(pred["agents"]) == {"s", "me"}
        assert set(pred["anomalies"]) == {"s", "me"}
        groups = prof.profile_agent_containers()
        assert sorted(a for g in groups.values() for a in g["agents"]) == ["me", "s"]


def test_coordinator_registry_is_followed(sleeper: subprocess.Popen[bytes]) -> None:
    """With a coordinator, the profiled agents follow its agents() on every pass."""
    registry = [SimpleNamespace(agent_id="s", pid=sleeper.pid, start_time=0.0)]
    coord = SimpleNamespace(agents=lambda: list(registry))
    with PerformanceProfiler(coordinator=coord) as prof:
        prof.sample()
        assert prof.agents == {"s": sleeper.pid}
        registry.clear()
        prof.sample()
        assert prof.agents == {}


def test_cgroup_parsing_finds_container_ids() -> None:
    """Docker, containerd and plain cgroup paths are recognised in v1, v2 and hybrid layouts."""
    cid = "0123456789abcdef" * 4
    assert parse_cgroup(f"0::/system.slice/docker-{cid}.scope\n").container_id == cid
    info = parse_cgroup(f"4:memory:/docker/{cid}\n1:cpu:/docker/{cid}\n0::/\n")
    assert (info.runtime, info.short_id, info.path) == ("docker", cid[:12], f"/docker/{cid}")
    k8s = parse_cgroup(f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{cid}.scope\n")
    assert k8s.runtime == "containerd" and k8s.container_id == cid
    plain = parse_cgroup("4:memory:/process_api/abc\n0::/\n")
    assert plain.container_id is None and plain.path == "/process_api/abc"
