"""What strategies receive: a frozen EliminationContext, resources.Change for kernel work, and the old dict view."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from sutazai_hwopt import BottleneckEliminator
from sutazai_hwopt.eliminator import Action, EliminationContext, KernelChange
from sutazai_hwopt.errors import InvalidArgumentError
from sutazai_hwopt.resources import Change

CTX: dict[str, Any] = {"agents": ["a1"], "agent_pids": {"a1": 11}, "agent_priorities": {"a1": 2},
                       "pressure": {"cpu": {"some": 0.5}}}


class Capture:
    """A strategy that records the context it is given and proposes one hook action."""

    name = "capture"

    def __init__(self) -> None:
        self.seen: list[EliminationContext] = []

    def can_handle(self, bottleneck_type: str, context: EliminationContext) -> bool:
        self.seen.append(context)
        return True

    def generate_actions(self, bottleneck_type: str, context: EliminationContext) -> list[Action]:
        return [Action("renice", "nice the agents", "low", "pressure.cpu.some",
                       changes=[Change("nice", context.background_nice, pid=p, agent_id=a)
                                for a in context.agents for p in context.pids(a)])]


class DictStyle:
    """A strategy written against the former dict of keys (``metrics["settings"]`` ...): still works."""

    name = "dict_style"

    def can_handle(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> bool:
        return bool(metrics.get("agents")) and "settings" in metrics

    def generate_actions(self, bottleneck_type: str, metrics: Mapping[str, Any]) -> list[Action]:
        nice = metrics["settings"]["background_nice"]
        pid = metrics["agent_pids"][metrics["agents"][0]]
        return [Action("legacy", f"nice {nice}, cpu {metrics['pressure']['cpu']['some']}", "low", "m",
                       changes=[Change("nice", nice, pid=pid)])]


def test_strategies_receive_a_frozen_typed_context() -> None:
    cap = Capture()
    elim = BottleneckEliminator({"auto_fix": False, "background_nice": 7}, strategies=[cap])
    elim.register_hook("cache.shrink", lambda **kw: None)
    [action] = elim.recommend("high_cpu_usage", CTX)
    [ctx] = cap.seen
    assert ctx.bottleneck_type == "high_cpu_usage" and ctx.agents == ("a1",)
    assert ctx.agent_pids["a1"] == 11 and ctx.agent_priorities["a1"] == 2 and ctx.hooks == {"cache.shrink"}
    assert ctx.background_nice == 7 and ctx.background(["a1"]) == ["a1"]
    assert ctx.metrics["pressure"] == {"cpu": {"some": 0.5}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.agents = ("other",)  # type: ignore[misc]
    assert action.changes == [Change("nice", 7, pid=11, agent_id="a1")]
    assert action.to_dict()["changes"] == [{"knob": "nice", "new": 7, "pid": 11, "agent_id": "a1"}]


def test_a_strategy_written_against_the_dict_still_works() -> None:
    elim = BottleneckEliminator({"auto_fix": False}, strategies=[DictStyle()])  # type: ignore[list-item]
    [action] = elim.recommend("high_cpu_usage", CTX)
    assert action.name == "legacy" and action.description == "nice 10, cpu 0.5"
    assert action.changes == [Change("nice", 10, pid=11)]


def test_the_context_mapping_view_has_the_former_keys() -> None:
    ctx = EliminationContext("io_thrashing", agents=("a",), agent_pids={"a": 3}, exclusive_priority=5,
                             metrics={"backend": "b1"})
    assert set(ctx) == {"backend", "agents", "agent_profiles", "agent_pids", "agent_priorities", "hooks", "cpus",
                        "settings"}
    assert ctx["agents"] == ["a"] and ctx["settings"]["exclusive_priority"] == 5 and ctx.get("missing") is None
    assert ctx.pids("a") == [3] and ctx.pids("nobody") == []


def test_backend_and_target_metric_must_be_strings() -> None:
    elim = BottleneckEliminator({"auto_fix": False})
    with pytest.raises(InvalidArgumentError, match="backend"):
        elim.recommend("backend_overload", {"backend": 3})
    with pytest.raises(InvalidArgumentError, match="target_metric"):
        elim.recommend("backend_overload", {"target_metric": ["x"]})


def test_an_action_takes_only_resources_changes() -> None:
    with pytest.raises(InvalidArgumentError, match=r"resources\.Change"):
        Action("x", "", "low", "m", changes=[{"knob": "nice", "new": 1, "pid": 1}])  # type: ignore[list-item]


def test_kernel_change_is_a_deprecated_way_to_build_a_change() -> None:
    with pytest.warns(DeprecationWarning, match="resources.Change"):
        change = KernelChange("nice", 5, 42, "a1")
    assert change == Change("nice", 5, pid=42, agent_id="a1")


class Applier:
    """A stand-in coordinator that records the changes it is asked to apply."""

    def __init__(self) -> None:
        self.applied: list[Change] = []

    def agents(self) -> list[Any]:
        return []

    def apply_changes(self, changes: list[Change]) -> Any:
        self.applied.extend(changes)

        class Handle:
            results: list[Any] = []
            applied: list[Any] = []

            def rollback(self) -> list[Any]:
                return []

        return Handle()


def test_the_eliminator_applies_changes_as_its_own(scripted: Any) -> None:
    coord = Applier()
    elim = BottleneckEliminator({"mode": "conservative", "auto_fix": True}, coordinator=coord, strategies=[Capture()],
                                metric_source=scripted([]))
    res = asyncio.run(elim.eliminate_bottleneck("high_cpu_usage", CTX))
    assert res.outcomes[0].decision == "not_applied"
    assert coord.applied == [Change("nice", 10, pid=11, owner="eliminator", agent_id="a1",
                                    reason="capture:renice")]
