"""BottleneckEliminator without kernel changes: settings, bad input, strategies, modes, hooks, validation, audit."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt import BottleneckEliminator
from sutazai_hwopt.eliminator import KNOWN_TYPES, Action, judge, metric_value
from sutazai_hwopt.errors import ConfigError, InvalidArgumentError
from sutazai_hwopt.logs import configure_file_logging, remove_file_logging

MEM = "memory.available"
CTX: dict[str, Any] = {"agents": ["a1"], "agent_pids": {"a1": 1}}


def run(elim: BottleneckEliminator, btype: str, metrics: Mapping[str, Any] | None = None) -> Any:
    return asyncio.run(elim.eliminate_bottleneck(btype, metrics))


class Hooks:
    """A fake memory component: shrink/undo counters and a cache size."""

    def __init__(self) -> None:
        self.size = 100
        self.calls: list[str] = []

    def shrink(self, **kw: Any) -> int:
        self.calls.append("shrink")
        old, self.size = self.size, self.size // 2
        return old

    def undo(self, old: int) -> None:
        self.calls.append("undo")
        self.size = old


def test_settings_are_validated() -> None:
    """Unknown keys, wrong types and bad modes in the settings raise ConfigError naming the key."""
    with pytest.raises(ConfigError, match="unknown key"):
        BottleneckEliminator({"mood": "calm"})
    with pytest.raises(ConfigError, match="auto_fix"):
        BottleneckEliminator({"auto_fix": "yes"})
    with pytest.raises(ConfigError, match="mode"):
        BottleneckEliminator({"mode": "reckless"})
    with pytest.raises(ConfigError, match="settings must be"):
        BottleneckEliminator(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("btype, metrics, match", [
    ("meltdown", {}, "unknown; known types"),
    (7, {}, "unknown"),
    ("high_cpu_usage", [1], "metrics must be a mapping"),
    ("high_cpu_usage", {"agents": "a1"}, "list of agent ids"),
    ("high_cpu_usage", {"agents": ["ghost"]}, "unknown agents"),
    ("high_cpu_usage", {"agents": ["a1"], "agent_pids": [1]}, "agent_pids"),
])
def test_bad_input_raises_before_anything_happens(btype: Any, metrics: Any, match: str, scripted: Any) -> None:
    """Unknown types and malformed metrics raise InvalidArgumentError; no measurement, no audit entry."""
    src = scripted([])
    elim = BottleneckEliminator({"auto_fix": True}, metric_source=src)
    with pytest.raises(InvalidArgumentError, match=match):
        run(elim, btype, metrics)
    assert src.asked == [] and elim.audit_log() == []


def test_recommend_orders_by_risk_and_mode_gates(scripted: Any) -> None:
    """Actions come least risky first; conservative runs only low risk, the rest is recommended."""
    elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True})
    names = [(a.name, a.risk) for a in elim.recommend("io_thrashing", CTX)]
    assert names == [("ionice_best_effort_low", "low"), ("ionice_idle", "medium")]
    assert [elim.allowed(a) for a in elim.recommend("io_thrashing", CTX)] == [True, False]
    aggressive = BottleneckEliminator({"mode": "aggressive", "auto_fix": True})
    assert all(aggressive.allowed(a) for a in aggressive.recommend("io_thrashing", CTX))
    off = BottleneckEliminator({"mode": "aggressive", "auto_fix": False})
    assert not any(off.allowed(a) for a in off.recommend("io_thrashing", CTX))


def test_without_auto_fix_everything_is_only_recommended(scripted: Any) -> None:
    """auto_fix off: status recommended, nothing measured or applied, each action in the audit."""
    src = scripted([])
    elim = BottleneckEliminator({"auto_fix": False}, metric_source=src)
    res = run(elim, "io_thrashing", CTX)
    assert res.status == "recommended" and src.asked == []
    assert [o.decision for o in res.outcomes] == ["recommended", "recommended"]
    assert [e["decision"] for e in elim.audit_log()] == ["recommended", "recommended"]


class Boom:
    name = "boom"

    def __init__(self, where: str) -> None:
        self.where = where

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool:
        if self.where == "can_handle":
            raise RuntimeError("can_handle exploded")
        return True

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]:
        if self.where == "generate":
            raise ZeroDivisionError("generate exploded")
        return ["not an action"]  # type: ignore[list-item]


@pytest.mark.parametrize("where", ["can_handle", "generate", "bad_return"])
def test_a_raising_strategy_is_logged_and_skipped(where: str, scripted: Any) -> None:
    """A plug-in that raises or returns junk is skipped with an audit entry; the built-ins still run."""
    elim = BottleneckEliminator({"auto_fix": False})
    elim.add_strategy(Boom(where))  # type: ignore[arg-type]
    res = run(elim, "io_thrashing", CTX)
    assert [o.action.name for o in res.outcomes] == ["ionice_best_effort_low", "ionice_idle"]
    skipped = [e for e in elim.audit_log() if e["decision"] == "skipped"]
    assert len(skipped) == 1 and "boom" in skipped[0]["reason"]


def test_strategy_protocol_is_checked() -> None:
    """Something without can_handle/generate_actions is not accepted as a strategy."""
    with pytest.raises(InvalidArgumentError, match="EliminationStrategy"):
        BottleneckEliminator(strategies=[object()])  # type: ignore[list-item]


def test_hook_action_kept_when_target_improves(scripted: Any) -> None:
    """A registered memory hook runs and is kept when available memory rises."""
    hooks = Hooks()
    src = scripted([{MEM: 1e9}, {MEM: 3e9}])
    elim = BottleneckEliminator({"auto_fix": True, "mode": "conservative"}, metric_source=src)
    elim.register_hook("cache.shrink", hooks.shrink, undo=hooks.undo)
    res = run(elim, "memory_pressure", {"agents": []})
    assert res.status == "resolved" and hooks.calls == ["shrink"] and hooks.size == 50
    assert res.outcomes[0].decision == "kept" and res.outcomes[0].after == {
        MEM: 3e9, "pressure.cpu.some": 1.0, "pressure.memory.some": 1.0, "pressure.io.some": 1.0}


def test_hook_action_rolled_back_when_a_guard_gets_worse(scripted: Any) -> None:
    """The target improved but io pressure rose past the threshold: the hook's undo runs."""
    hooks = Hooks()
    src = scripted([{MEM: 1e9, "pressure.io.some": 10.0}, {MEM: 3e9, "pressure.io.some": 40.0}])
    elim = BottleneckEliminator({"auto_fix": True}, metric_source=src)
    elim.register_hook("cache.shrink", hooks.shrink, undo=hooks.undo)
    res = run(elim, "memory_pressure", {})
    assert res.status == "not_resolved" and hooks.calls == ["shrink", "undo"] and hooks.size == 100
    assert "pressure.io.some got worse" in res.outcomes[0].reason


def test_a_raising_hook_is_a_failed_action_and_the_next_is_tried(scripted: Any) -> None:
    """A hook that raises is recorded as failed; the next action of the ladder still runs."""
    hooks = Hooks()

    def broken(**kw: Any) -> None:
        raise OSError("pool busy")

    src = scripted([{MEM: 1e9}, {MEM: 1e9}, {MEM: 3e9}])
    elim = BottleneckEliminator({"auto_fix": True}, metric_source=src)
    elim.register_hook("pool.collect_dead", broken)
    elim.register_hook("cache.shrink", hooks.shrink, undo=hooks.undo)
    res = run(elim, "memory_pressure", {})
    assert [(o.action.name, o.decision) for o in res.outcomes] == [
        ("hook:pool.collect_dead", "failed"), ("hook:cache.shrink", "kept")]
    assert "pool busy" in res.outcomes[0].reason


def test_backend_overload_uses_balancer_hooks_and_custom_metric(scripted: Any) -> None:
    """backend_overload calls the balancer's shed hook and validates on its registered load metric."""
    load = {"v": 0.95}
    shed: list[Any] = []

    def do_shed(backend: str) -> Any:
        shed.append(backend)
        load["v"] = 0.5
        return lambda: shed.append("restored")

    from sutazai_hwopt.eliminator import ProfilerSource

    class Prof:
        def sample(self) -> Any:
            return type("S", (), {"system_metrics": {}, "agent_profiles": {}})()

    async def nosleep(_: float) -> None:
        return None

    elim = BottleneckEliminator({"auto_fix": True, "mode": "balanced", "validation_window_s": 0.0})
    elim.metric_source = ProfilerSource(Prof(), custom=elim._custom_metrics, sleep=nosleep)
    elim.register_metric("balancer.load", lambda: load["v"])
    elim.register_hook("balancer.shed", do_shed)
    res = run(elim, "backend_overload", {"backend": "b3"})
    assert res.status == "resolved" and shed == ["b3"]
    assert metric_value("custom:balancer.load", {}, {}, elim._custom_metrics) == 0.5


def test_attach_registers_the_hooks_components_offer(scripted: Any) -> None:
    """attach() maps a memory manager's collect_garbage to pool.collect_dead and runs it for memory pressure."""
    collected: list[int] = []

    class Memory:
        def collect_garbage(self) -> dict[str, int]:
            collected.append(1)
            return {"blocks": 3}

    elim = BottleneckEliminator({"auto_fix": True, "mode": "conservative"},
                                metric_source=scripted([{MEM: 1e9}, {MEM: 2e9}]))
    assert elim.attach(memory=Memory(), cache=object(), balancer=None) == ["pool.collect_dead"]
    res = run(elim, "memory_pressure", {})
    assert res.status == "resolved" and collected == [1]
    assert res.outcomes[0].action.name == "hook:pool.collect_dead"


def test_prediction_disabled_skips(scripted: Any) -> None:
    """A predicted bottleneck is skipped (and audited) when prediction is off."""
    elim = BottleneckEliminator({"auto_fix": True, "prediction_enabled": False}, metric_source=scripted([]))
    res = run(elim, "memory_exhaustion_predicted", {})
    assert res.status == "skipped" and elim.audit_log()[-1]["decision"] == "skipped"
    assert "memory_exhaustion_predicted" in KNOWN_TYPES


def test_predictions_map_to_a_bottleneck_within_the_horizon() -> None:
    """Memory predicted to run out sooner than the horizon becomes memory_exhaustion_predicted."""
    elim = BottleneckEliminator({"prediction_horizon_s": 300.0})
    assert elim.predicted_bottlenecks({"memory": {"seconds": 120.0}}) == ["memory_exhaustion_predicted"]
    assert elim.predicted_bottlenecks({"memory": {"seconds": 900.0}}) == []
    assert elim.predicted_bottlenecks({"memory": None}) == []
    off = BottleneckEliminator({"prediction_enabled": False})
    assert off.predicted_bottlenecks({"memory": {"seconds": 1.0}}) == []


def test_judge_rules() -> None:
    """Keep only on real improvement beyond noise; guard worsening and unmeasurable targets roll back."""
    kw = {"rollback_threshold": 0.05, "min_improvement": 0.0}
    assert judge("pressure.cpu.some", False, (), {"pressure.cpu.some": 50}, {"pressure.cpu.some": 20}, **kw).keep
    assert not judge("pressure.cpu.some", False, (), {"pressure.cpu.some": 50},
                     {"pressure.cpu.some": 49.5}, **kw).keep  # within the 1-point noise floor
    assert not judge("x", False, (), {"x": math.nan}, {"x": 1.0}, **kw).keep
    assert not judge("memory.available", True, ("pressure.io.some",), {"memory.available": 1e9,
                     "pressure.io.some": 5.0}, {"memory.available": 2e9, "pressure.io.some": 30.0}, **kw).keep
    assert not judge("a", False, (), {"a": 1.0}, {"a": 0.9}, rollback_threshold=0.05, min_improvement=0.5).keep


def test_metric_keys() -> None:
    """Dotted host paths, agent sums and 'everyone else' sums are read from one pass's metrics."""
    sysm = {"pressure": {"cpu": {"some": 12.5}}}
    prof = {"a": {"run_wait_ratio": 0.5, "alive": True}, "b": {"run_wait_ratio": 0.25, "alive": True},
            "c": {"run_wait_ratio": 1.0, "alive": False}}
    assert metric_value("pressure.cpu.some", sysm, prof) == 12.5
    assert metric_value("agents:a,b:run_wait_ratio", sysm, prof) == 0.75
    assert metric_value("agents_except:a:run_wait_ratio", sysm, prof) == 0.25
    assert math.isnan(metric_value("agents:zz:run_wait_ratio", sysm, prof))
    assert math.isnan(metric_value("pressure.gpu.some", sysm, prof))


def test_decisions_go_to_the_log_file(tmp_path: Path, scripted: Any) -> None:
    """Every decision is written to bottleneck_eliminator.log as JSON."""
    paths = configure_file_logging(tmp_path)
    try:
        elim = BottleneckEliminator({"auto_fix": False})
        run(elim, "io_thrashing", CTX)
    finally:
        remove_file_logging()
    lines = paths["eliminator"].read_text().splitlines()
    assert paths["eliminator"].name == "bottleneck_eliminator.log"
    entries = [json.loads(line[line.index("{"):]) for line in lines if "\"decision\"" in line]
    assert [e["action"] for e in entries] == ["ionice_best_effort_low", "ionice_idle"]


def test_actions_are_validated() -> None:
    """An action with an unknown risk or nothing to do is refused."""
    with pytest.raises(InvalidArgumentError, match="risk"):
        Action("x", "", "extreme", "m", hook="h")
    with pytest.raises(InvalidArgumentError, match="advisory"):
        Action("x", "", "low", "m")
    with pytest.raises(InvalidArgumentError):
        BottleneckEliminator().register_hook("", print)
