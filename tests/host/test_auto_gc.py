"""The deployed daemon reclaims on its own: a dead agent's pool blocks, and grants to an agent that never
attached once the grace period is over. Real processes; the test never calls collect_garbage."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from sutazai_hwopt.memory import MemoryPoolManager
from sutazai_hwopt.testing import throwaway_namespace

from .test_daemon import cli, wait_for

FORK = multiprocessing.get_context("fork")
MiB = 1024**2


def _agent(ns: str, ready: Any, leave: Any) -> None:
    """An agent that fills 4 blocks, says so, and exits (holding them) when told."""
    with MemoryPoolManager(namespace=ns) as m:
        for _ in range(4):
            bid = m.allocate_memory("doomed", MiB, pool_id="data")
            m.view("doomed", bid)[:] = b"d" * MiB
        ready.set()
        leave.wait(60)
        os._exit(0)   # no cleanup: as if it crashed


def test_daemon_collects_dead_agents_and_expired_grants(runtime_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    with throwaway_namespace("autogc") as ns, MemoryPoolManager(namespace=ns) as pm:
        (cfg / "hardware_optimization.json").write_text(json.dumps({"gc_interval_s": 0.5, "grant_grace_s": 2.0}))
        (cfg / "cache_system.json").write_text(json.dumps({"namespace": ns}))
        pm.create_pool("data", size=16 * MiB)
        keep = pm.put_bytes("keeper", b"k" * 4096, pool_id="data")
        run = cli("deploy", "--config", str(cfg), "--mode", "conservative")
        assert run.returncode == 0, run.stderr
        try:
            ready, leave = FORK.Event(), FORK.Event()
            p = FORK.Process(target=_agent, args=(ns, ready, leave))
            p.start()
            assert ready.wait(60)
            time.sleep(1.5)   # three GC periods pass while the agent lives: its blocks stay
            assert pm.stats("data")["blocks_per_agent"].get("doomed") == 4
            leave.set()
            p.join(60)
            wait_for(lambda: "doomed" not in pm.stats("data")["blocks_per_agent"],
                     "the daemon to reclaim the dead agent's blocks")
            assert pm.stats("data")["blocks"] == 1 and pm.read("keeper", keep) == b"k" * 4096

            granted = pm.put_bytes("keeper", b"g" * 4096, pool_id="data")
            pm.share_memory("keeper", "never_attached", granted)
            pm.free_memory("keeper", granted)              # only the grant holds it now
            assert pm.stats("data")["blocks"] == 2
            wait_for(lambda: pm.stats("data")["blocks"] == 1,
                     "the daemon to reclaim a grant to an agent that never attached")
            assert "never_attached" not in pm.stats("data")["blocks_per_agent"]
            assert pm.check("data")
            status = json.loads(cli("status", "--json").stdout)
            assert status["status"]["running"]
        finally:
            stop = cli("stop")
            assert stop.returncode == 0, stop.stderr
