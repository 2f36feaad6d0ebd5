"""The master as the seed calls it: allocate_memory of the whole pool size, and the monitoring callbacks."""

from __future__ import annotations

import pytest

from sutazai_hwopt import errors
from sutazai_hwopt.config import load_config
from sutazai_hwopt.master import Alert, HardwareOptimizationMaster, auto_pool_bytes
from sutazai_hwopt.testing import throwaway_namespace

MiB = 1024**2


def test_seed_allocate_memory_of_the_whole_pool_in_balanced_mode(state_dir: str) -> None:
    """The seed's ``allocate_memory("agent_001", size_mb=1024, pool="shared")`` works in balanced mode, whose
    automatic pool is 1024 MiB: the pool gets headroom for the allocator's chunk headers."""
    with throwaway_namespace() as ns:
        master = HardwareOptimizationMaster(mode="balanced", state_dir=state_dir, memory_namespace=ns)
        try:
            assert master.config.hardware.shared_memory_size_mb == 1024
            block = master.allocate_memory(agent_id="agent_001", size_mb=1024, pool="shared")
            assert master.memory.block_info("agent_001", block)["nbytes"] == 1024 * MiB
            stats = master.memory.stats("shared")
            assert stats["capacity"] == auto_pool_bytes(1024) and stats["used"] >= 1024 * MiB
            with pytest.raises(errors.PoolExhaustedError):     # headroom, not a second pool's worth
                master.allocate_memory("agent_002", size_mb=8, pool="shared")
            master.memory.free_memory("agent_001", block)
            master.memory.destroy_pool("shared")
        finally:
            master.close()


@pytest.mark.parametrize("mb", [1, 512, 1024, 4096])
def test_auto_pool_headroom(mb: int) -> None:
    """The headroom is 1/256 of the size, at least 1 MiB: always more than one chunk header (64 bytes)."""
    assert auto_pool_bytes(mb) == mb * MiB + max(MiB, mb * MiB // 256)


def test_seed_callbacks_are_called(state_dir: str) -> None:
    """register_metric_callback / register_alert_callback as in the seed: profiling feeds both, a raising
    callback is skipped, and the returned function unregisters."""
    cfg = load_config(overrides={"hardware": {"max_cpu_usage": 0.85}})
    master = HardwareOptimizationMaster(cfg, state_dir=state_dir)
    metrics: list[dict] = []
    alerts: list[Alert] = []
    try:
        master.register_metric_callback(lambda m: 1 / 0)
        master.register_metric_callback(metrics.append)
        remove = master.register_alert_callback(alerts.append)
        master.profile_system(duration=0)
        assert metrics and metrics[-1]["kind"] == "profile" and "system_metrics" in metrics[-1]
        master._alert("warning", "test", "an alert")             # what drift/oversubscription/findings raise
        assert alerts[-1].kind == "test" and alerts[-1].level == "warning"
        remove()
        master._alert("warning", "test", "not delivered")
        assert alerts[-1].message == "an alert"
        with pytest.raises(errors.InvalidArgumentError):
            master.register_alert_callback("not callable")     # type: ignore[arg-type]
    finally:
        master.close()


def test_register_detector_on_the_master_alerts(state_dir: str) -> None:
    """A detector registered on the master runs in profile_system; its finding is reported and alerted."""
    cfg = load_config(overrides={"hardware": {"sample_interval_s": 0.05}})
    master = HardwareOptimizationMaster(cfg, state_dir=state_dir)
    alerts: list[Alert] = []
    try:
        master.register_alert_callback(alerts.append)
        master.register_detector("queue_backlog", lambda sm, ap: {"severity": "high", "message": "queue backs up"})
        report = master.profile_system(duration=0.1)
        assert "queue_backlog" in [b["type"] for b in report["bottlenecks"]]
        assert any(a.kind == "bottleneck" and a.level == "critical" and a.message == "queue backs up"
                   for a in alerts)
    finally:
        master.close()
