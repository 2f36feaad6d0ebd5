"""HardwareOptimizationMaster facade and the modes table."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sutazai_hwopt import errors
from sutazai_hwopt.config import MODES, HwoptConfig, load_config
from sutazai_hwopt.master import Alert, HardwareOptimizationMaster

ROOT = Path(__file__).resolve().parents[2]


def test_root_exports():
    """ResourcePoolCoordinator and HardwareOptimizationMaster import from the package root."""
    from sutazai_hwopt import HardwareOptimizationMaster as M
    from sutazai_hwopt import ResourcePoolCoordinator as R

    assert M is HardwareOptimizationMaster and R.__name__ == "ResourcePoolCoordinator"


@pytest.mark.root
def test_assign_cores_places_and_notifies(state_dir, spawn, kstate):
    """assign_cores registers the agent, applies the plan, returns its CPUs and feeds the callbacks."""
    master = HardwareOptimizationMaster(state_dir=state_dir)
    metrics, alerts = [], []
    master.register_metric_callback(metrics.append)
    master.register_alert_callback(alerts.append)
    master.register_alert_callback(lambda a: 1 / 0)  # a broken callback does not stop the others
    try:
        p = spawn()
        cpus = master.assign_cores(agent_id="agent_001", num_cores=1, priority=8, pid=p.pid)
        assert frozenset(cpus) == kstate(p.pid)[0]
        assert metrics[-1]["kind"] == "placement" and metrics[-1]["agents"] == 1
        q = spawn()
        master.assign_cores(agent_id="agent_002", num_cores=2, priority=1, pid=q.pid)
        master.assign_cores(agent_id="agent_002", num_cores=1, priority=2, pid=q.pid)  # resize in place
        assert master.coordinator.agent("agent_002").requirements.priority == 2
        assert all(isinstance(a, Alert) for a in alerts)
    finally:
        master.rollback()


@pytest.mark.root
def test_assign_cores_bad_input_keeps_state(state_dir, spawn, kstate):
    """Bad requirements or a dead pid raise the library's errors and leave earlier settings intact."""
    master = HardwareOptimizationMaster(state_dir=state_dir)
    try:
        p = spawn()
        master.assign_cores("a", 1, priority=3, pid=p.pid)
        before = kstate(p.pid)
        with pytest.raises(errors.InvalidArgumentError, match="priority"):
            master.assign_cores("a", 1, priority=42, pid=p.pid)
        with pytest.raises(errors.InvalidArgumentError, match="cpu_cores"):
            master.assign_cores("b", -1, pid=p.pid)
        dead = spawn(["true"])
        dead.wait()
        with pytest.raises(errors.NotFoundError):
            master.assign_cores("c", 1, pid=dead.pid)
        assert kstate(p.pid) == before
        assert [a.agent_id for a in master.coordinator.agents()] == ["a"]
        assert master.coordinator.agent("a").priority == 3
    finally:
        master.rollback()


@pytest.mark.root
def test_oversubscription_alert_in_conservative_mode(state_dir, spawn):
    """Conservative mode permits no oversubscription: asking for more than the host raises an alert."""
    master = HardwareOptimizationMaster(mode="conservative", state_dir=state_dir)
    alerts = []
    master.register_alert_callback(alerts.append)
    try:
        n = len(os.sched_getaffinity(0))
        for i in range(3):
            master.assign_cores(f"a{i}", n, priority=5, pid=spawn().pid)
        assert any(a.kind == "oversubscription" for a in alerts)
    finally:
        master.rollback()


@pytest.mark.root
def test_export_stats(state_dir, spawn, tmp_path):
    """export_stats writes a private JSON file with mode, topology, agents, knob report and verify summary."""
    master = HardwareOptimizationMaster(state_dir=state_dir)
    try:
        master.assign_cores("a", 1, pid=spawn().pid)
        path = master.export_stats(tmp_path / "stats.json")
        data = json.loads(path.read_text())
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert data["mode"] == "balanced" and data["resources"]["agents"][0]["agent_id"] == "a"
        assert data["verify"]["drifted"] == 0 and "affinity" in data["knobs"]
    finally:
        master.rollback()


def test_allocate_memory_goes_to_the_pool_manager(state_dir):
    """allocate_memory validates, creates the named pool on first use and returns a block of the asked size."""
    memory = pytest.importorskip("sutazai_hwopt.memory")
    if not hasattr(memory, "MemoryPoolManager"):
        pytest.skip("memory pool manager not built")
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace() as ns:
        cfg = load_config(overrides={"hardware": {"shared_memory_size_mb": 8}})
        master = HardwareOptimizationMaster(cfg, state_dir=state_dir, memory_namespace=ns)
        try:
            block = master.allocate_memory(agent_id="agent_001", size_mb=1, pool="shared")
            assert len(master.memory.view("agent_001", block)) == 1024**2
            assert "shared" in master.memory.pools()
            with pytest.raises(errors.InvalidArgumentError, match="size_mb"):
                master.allocate_memory("agent_001", 0)
            with pytest.raises(errors.PoolExhaustedError):
                master.allocate_memory("agent_001", 64, pool="shared")
        finally:
            master.close()


def test_profile_system_uses_profiler(state_dir, spawn):
    """profile_system(duration=0) returns the profiler's report for the registered agents."""
    pytest.importorskip("sutazai_hwopt.profiler")
    master = HardwareOptimizationMaster(state_dir=state_dir)
    metrics = []
    master.register_metric_callback(metrics.append)
    try:
        master.coordinator.register_agent("a", {}, pid=spawn().pid)
        report = master.profile_system(duration=0)
        assert report["samples"] >= 1 and metrics[-1]["kind"] == "profile"
    finally:
        master.close()


def test_modes_set_the_coordinator(state_dir):
    """Each mode's preset reaches the coordinator's config (affinity strategy, nice range, policy)."""
    for mode, preset in MODES.items():
        master = HardwareOptimizationMaster(mode=mode, state_dir=state_dir)
        hw = master.coordinator.config
        for key, value in preset["hardware"].items():
            assert getattr(hw, key) == value, (mode, key)


def test_modes_doc_matches_code():
    """docs/modes.md lists, for every hardware preset key, the same value per mode as config.MODES."""
    text = (ROOT / "docs" / "modes.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`(hardware|cache|eliminator)\.(\w+)`\s*\|([^|]*)\|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[(m.group(1), m.group(2))] = [c.strip().strip("`") for c in m.group(3, 4, 5)]
    order = ["conservative", "balanced", "aggressive"]
    keys = {(s, k) for mode in order for s, vals in MODES[mode].items() for k in vals}
    assert keys <= set(rows), sorted(keys - set(rows))
    for (section, key), cells in rows.items():
        for mode, cell in zip(order, cells):
            want = MODES[mode].get(section, {}).get(key)
            assert cell == json.dumps(want), (section, key, mode, cell, want)
    cfg = load_config(mode="aggressive")
    assert isinstance(cfg, HwoptConfig)
