"""``cache.shrink`` reaches the private L1 of connected agents through the daemon's published L1 budget factor.

The agent is a real process: it ``connect()``-s, builds its cache from ``fleet_config()``, fills its L1 and prints
its L1 statistics to a pipe. The daemon is a real :class:`HostService` owning its namespace and serving its API
on loopback (uvicorn on a thread of this process, with the runtime directory a deployed daemon writes), so the
test can drive its remedy provider and eliminator directly, as the daemon does, and deterministically.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt import IntelligentCacheSystem
from sutazai_hwopt.cache.l1_budget import MIN_FACTOR, BudgetWord
from sutazai_hwopt.config import HwoptConfig, load_config
from sutazai_hwopt.eliminator.providers import MemoryRemedies
from sutazai_hwopt.errors import InvalidArgumentError
from sutazai_hwopt.host.api import create_app
from sutazai_hwopt.host.runtime import RuntimeDir
from sutazai_hwopt.host.segments import purge
from sutazai_hwopt.host.service import HostService
from sutazai_hwopt.memory import MemoryPoolManager
from sutazai_hwopt.testing import throwaway_namespace

MiB = 1 << 20
L1 = MiB


def _config(ns: str) -> HwoptConfig:
    return load_config(mode="balanced", overrides={
        "cache": {"namespace": ns, "l1_size": L1, "l2_size": 2 * MiB, "l3_size": 0, "enable_prefetch": False},
        "hardware": {"shared_memory_size_mb": 1, "cache_size_mb": 64, "gc_interval_s": 0.0},
        # min_improvement 1: no remedy can double available memory, so every applied action is rolled back
        "eliminator": {"validation_window_s": 0.3, "validation_interval_s": 0.1, "min_improvement": 1.0,
                       "prediction_enabled": False, "cache_shrink_fraction": 0.5}})


@contextmanager
def serving(svc: HostService, runtime_dir: Path) -> Iterator[None]:
    """Serve ``svc``'s API on loopback and write the runtime directory, as ``deploy`` does."""
    import uvicorn

    rt = RuntimeDir(runtime_dir)
    rt.ensure()
    token = rt.new_token()
    rt.write_pid(os.getpid())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(create_app(svc, token), log_level="warning", lifespan="off",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-api", daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "the API server did not start"
        rt.write_endpoint("127.0.0.1", sock.getsockname()[1], os.getpid())
        yield
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        rt.clear()


AGENT = """
    import json, sys, time
    from sutazai_hwopt import IntelligentCacheSystem
    from sutazai_hwopt.host import connect, fleet_config
    rt = sys.argv[1]
    connect("l1_agent", {"cpu_cores": 1, "priority": 5}, runtime_dir=rt)
    cache = IntelligentCacheSystem(fleet_config(rt))
    for i in range(256):                       # 256 x ~4 KiB: about 1 MiB, the whole L1
        cache.put(f"k{i}", "x" * 4000, "l1_agent")
    for _ in range(6000):
        print(json.dumps(cache.stats()["levels"]["L1"]), flush=True)
        time.sleep(0.05)
"""


@pytest.fixture
def agent_daemon(runtime_dir: Path, daemon_ns: str,
                 tmp_path: Path) -> Iterator[tuple[HostService, subprocess.Popen[str]]]:
    svc = HostService(_config(daemon_ns), state_dir=str(tmp_path / "journal"))
    proc: subprocess.Popen[str] | None = None
    try:
        svc.own_namespace()
        with serving(svc, runtime_dir):
            proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(AGENT), str(runtime_dir)], text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
            yield svc, proc
    finally:
        svc.close()
        if proc is not None:
            proc.kill()
            proc.communicate()
        purge(daemon_ns, force=True)


def until(proc: subprocess.Popen[str], predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Read the agent's L1 statistics until one satisfies ``predicate`` (the bound only stops a broken build)."""
    assert proc.stdout is not None
    row: dict[str, Any] = {}
    for _ in range(6000):
        line = proc.stdout.readline()
        assert line, f"the agent exited before {what}: {proc.stderr.read() if proc.stderr else ''}"
        row = json.loads(line)
        if predicate(row):
            return row
    raise AssertionError(f"gave up waiting for {what}; last: {row}")


def test_cache_shrink_shrinks_a_connected_agents_l1_and_its_undo_restores_it(
        agent_daemon: tuple[HostService, subprocess.Popen[str]]) -> None:
    svc, agent = agent_daemon
    full = until(agent, lambda r: r["entries"] == 256, "the agent's L1 to be filled")
    assert full["budget"] == L1 and full["budget_factor"] == 1.0 and full["budget_reason"] is None
    assert full["bytes"] > L1 // 2

    shrink = svc.upkeep.memory.shrink_cache(bottleneck_type="memory_pressure")   # the daemon's provider
    assert shrink.changed and shrink.details["l1_budget"]["factor"] == 0.5
    assert svc.fleet_config()["l1_budget"]["factor"] == 0.5                     # what GET /api/config serves
    small = until(agent, lambda r: r["budget_factor"] == 0.5, "the agent to follow the lowered factor")
    assert small["budget"] == L1 // 2 and small["bytes"] <= L1 // 2 and small["budget_evictions"] > 0
    assert small["budget_reason"] == "cache.shrink (memory_pressure)"
    assert small["configured_budget"] == L1

    shrink.undo()
    back = until(agent, lambda r: r["budget_factor"] == 1.0, "the agent to get its budget back")
    assert back["budget"] == L1 and back["budget_reason"] is None
    assert svc.fleet_config()["l1_budget"]["factor"] == 1.0


def test_the_eliminators_rollback_of_cache_shrink_restores_the_agents_budget(
        agent_daemon: tuple[HostService, subprocess.Popen[str]]) -> None:
    """The path the daemon takes for a memory-pressure finding: measure, apply, validate, roll back."""
    svc, agent = agent_daemon
    until(agent, lambda r: r["entries"] == 256, "the agent's L1 to be filled")
    epoch = svc.fleet_config()["l1_budget"]["epoch"]
    result = asyncio.run(svc.eliminator.eliminate_bottleneck("memory_pressure", {"agents": []}, consent=True))
    (shrink,) = [o for o in result.outcomes if o.action.hook == "cache.shrink"]
    assert shrink.decision == "rolled_back", shrink.reason
    assert shrink.results[0]["l1_budget"]["factor"] == 0.5
    served = svc.fleet_config()["l1_budget"]
    assert served["factor"] == 1.0 and served["epoch"] == epoch + 2             # lowered, then restored
    row = until(agent, lambda r: r["budget_factor"] == 1.0, "the agent at the configured budget")
    assert row["budget"] == L1


def test_stopping_the_daemon_withdraws_its_l1_shrinks(
        agent_daemon: tuple[HostService, subprocess.Popen[str]]) -> None:
    svc, agent = agent_daemon
    until(agent, lambda r: r["entries"] == 256, "the agent's L1 to be filled")
    svc.upkeep.memory.shrink_cache(bottleneck_type="memory_pressure")           # kept: nobody undoes it
    until(agent, lambda r: r["budget_factor"] == 0.5, "the agent to follow the lowered factor")
    svc.close()
    row = until(agent, lambda r: r["budget_factor"] == 1.0, "the agent's budget back after the daemon stopped")
    assert row["budget"] == L1


# -- the parts, in this process ---------------------------------------------------------------------------------
@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("l1b") as name:
        yield name


def test_shrinks_compose_and_undo_in_any_order(ns: str) -> None:
    word = BudgetWord.create(ns)
    try:
        with MemoryPoolManager(ns) as pm:
            remedies = MemoryRemedies(pm, namespace=ns, shrink_fraction=0.5)
            try:
                a = remedies.shrink_cache()
                b = remedies.shrink_cache(fraction=0.75, bottleneck_type="memory_leak")
                assert word.read().factor == 0.125
                a.undo()                                      # the older one first: the newer one stays
                state = word.read()
                assert state.factor == 0.25 and state.reason == "cache.shrink (memory_leak)"
                b.undo()
                assert word.read().factor == 1.0 and word.read().reason is None
                for _ in range(8):
                    remedies.shrink_cache()
                assert word.read().factor == MIN_FACTOR       # floored
            finally:
                remedies.close()                              # withdraws what is still in force
            assert word.read().factor == 1.0
    finally:
        word.close()


def test_without_a_daemon_cache_shrink_acts_on_the_shared_tiers_only(ns: str) -> None:
    with MemoryPoolManager(ns) as pm:
        remedies = MemoryRemedies(pm, namespace=ns)
        try:
            assert remedies.l1_word() is None
            assert remedies.shrink_cache().details["l1_budget"] is None
        finally:
            remedies.close()


def test_scale_l1_evicts_down_and_refuses_a_bad_factor(ns: str) -> None:
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 64 * 1024, "l2_size": 0, "l3_size": 0,
                                    "enable_prefetch": False})
    try:
        for i in range(16):
            cache.put(i, "y" * 3000, priority=i % 10)
        got = cache.scale_l1(0.25, "test")
        l1 = cache.stats()["levels"]["L1"]
        assert got["budget"] == 16 * 1024 and l1["bytes"] <= 16 * 1024 and got["evicted"] > 0
        assert l1["budget_reason"] == "test" and l1["budget_evictions"] == got["evicted"]
        cache.put("big", "z" * 20000)             # within l1_size, over the lowered budget: L1 still fits it
        assert cache.stats()["levels"]["L1"]["bytes"] <= 16 * 1024
        with pytest.raises(InvalidArgumentError, match="factor"):
            cache.scale_l1(0.0)
        cache.scale_l1(1.0)
        assert cache.stats()["levels"]["L1"]["budget"] == 64 * 1024
    finally:
        cache.close()
