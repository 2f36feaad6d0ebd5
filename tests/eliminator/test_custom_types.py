"""A custom strategy adds a bottleneck type; a custom detector's type flows from the profiler into elimination."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from sutazai_hwopt.eliminator import Action, BottleneckEliminator, EliminationStrategy
from sutazai_hwopt.errors import InvalidArgumentError, StateError
from sutazai_hwopt.profiler import PerformanceProfiler

LAT = "custom:custom_pattern.latency"
custom_optimization_action = Action("custom_fix", "drain the custom queue", "low", LAT, hook="custom.fix")


class CustomBottleneckStrategy(EliminationStrategy):   # the seed's example, as written (no name attribute)
    def can_handle(self, bottleneck_type, metrics):
        return "custom_pattern" in bottleneck_type

    def generate_actions(self, bottleneck_type, metrics):
        return [custom_optimization_action]


def run(elim: BottleneckEliminator, btype: str, metrics: dict[str, Any] | None = None) -> Any:
    return asyncio.run(elim.eliminate_bottleneck(btype, metrics or {}))


def test_seed_custom_strategy_adds_its_type(scripted: Any) -> None:
    """The seed's strategy runs as written: its type is accepted, its action applied, validated and kept, and it
    is audited under its class name."""
    calls: list[dict[str, Any]] = []
    elim = BottleneckEliminator({"mode": "balanced", "auto_fix": True, "prediction_enabled": True},
                                metric_source=scripted([{LAT: 0.9}, {LAT: 0.2}]))
    elim.add_strategy(CustomBottleneckStrategy())
    elim.register_hook("custom.fix", lambda **kw: calls.append(kw))
    res = run(elim, "custom_pattern_queue_latency")
    assert res.status == "resolved" and len(calls) == 1
    assert res.outcomes[0].decision == "kept" and res.outcomes[0].action.strategy == "CustomBottleneckStrategy"
    assert [a.name for a in elim.recommend("custom_pattern_x")] == ["custom_fix"]


def test_types_nobody_handles_are_still_refused(scripted: Any) -> None:
    """Without a strategy claiming it (or one whose can_handle raises), an unknown type is an error as before."""
    class Raising:
        def can_handle(self, bottleneck_type, metrics):
            raise RuntimeError("bug")

        def generate_actions(self, bottleneck_type, metrics):
            return []

    elim = BottleneckEliminator({"auto_fix": True}, metric_source=scripted([]), strategies=[Raising()])
    elim.add_strategy(CustomBottleneckStrategy())
    with pytest.raises(InvalidArgumentError, match="unknown"):
        run(elim, "queue_backlog")
    for bad in ("", None, 3):
        with pytest.raises(InvalidArgumentError):
            run(elim, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="can_handle"):
        elim.add_strategy(object())  # type: ignore[arg-type]


class BacklogStrategy:
    name = "backlog"

    def can_handle(self, bottleneck_type, metrics):
        return bottleneck_type == "queue_backlog"

    def generate_actions(self, bottleneck_type, metrics):
        return [Action("shed_queue", f"shed the queue of {list(metrics.agents)}", "low", "custom:queue.depth",
                       hook="queue.shed", agents=list(metrics.agents))]


def test_detector_finding_flows_into_elimination(scripted: Any) -> None:
    """register_detector (through the eliminator, on its profiler) adds a type: the profiler reports it, the
    eliminator accepts it by name and its strategy acts on the finding's agents; a raising detector is skipped."""
    depth = {"n": 400}
    shed: list[Any] = []
    with PerformanceProfiler(agents={"me": os.getpid()}) as prof:
        elim = BottleneckEliminator({"auto_fix": True}, profiler=prof,
                                    metric_source=scripted([{"custom:queue.depth": 400}, {"custom:queue.depth": 10}]))
        elim.register_detector("exploding", lambda sm, ap: 1 / 0)
        elim.register_detector("queue_backlog", lambda sm, ap: {"severity": "high", "agents": ["me"]}
                               if depth["n"] > 100 else None)
        assert "queue_backlog" in elim.known_types
        elim.add_strategy(BacklogStrategy())
        elim.register_hook("queue.shed", lambda **kw: shed.append(kw) or depth.update(n=10))
        prof.sample()
        prof.sample()
        found = [b for b in prof.detect_bottlenecks() if b.type == "queue_backlog"]
        assert len(found) == 1 and found[0].agents == ["me"]
        res = run(elim, found[0].type, {"agents": found[0].agents})
        assert res.status == "resolved" and shed == [{}]
        assert not [b for b in prof.detect_bottlenecks() if b.type == "queue_backlog"]


def test_register_detector_needs_a_profiler() -> None:
    """An eliminator without a profiler cannot run detectors: a clear StateError."""
    with pytest.raises(StateError, match="profiler"):
        BottleneckEliminator().register_detector("queue_backlog", lambda sm, ap: None)
