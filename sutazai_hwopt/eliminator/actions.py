"""Actions, risk levels, modes, and the records of what the eliminator decided.

An :class:`Action` is data: the kernel changes it makes (``resources.Change`` objects, applied through the
coordinator's journal, so each can be undone) or the name of a hook another component registered (cache, pool,
load balancer), the metric it is meant to lower, and its risk. The mode decides which risks run
automatically; the rest are recommended.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._validate import finite
from ..errors import InvalidArgumentError
from ..resources import Change

__all__ = ["MODE_RISKS", "RISK_LEVELS", "Action", "ActionOutcome", "EliminationResult", "HookResult", "KernelChange"]

RISK_LEVELS = ("low", "medium", "high")
#: mode -> risks that may run automatically (the rest are only recommended).
MODE_RISKS: dict[str, frozenset[str]] = {
    "conservative": frozenset({"low"}),
    "balanced": frozenset({"low", "medium"}),
    "aggressive": frozenset(RISK_LEVELS),
}

#: default guard metrics: host saturation of each resource must not get worse.
DEFAULT_GUARDS = ("pressure.cpu.some", "pressure.memory.some", "pressure.io.some")


def KernelChange(knob: str, new: Any, pid: int, agent_id: str | None = None) -> Change:
    """Deprecated: build ``resources.Change(knob, new, pid=pid, agent_id=agent_id)`` directly.

    Kept so strategies written against the former eliminator-only type still run; it returns the one
    change type the coordinator applies.
    """
    warnings.warn("eliminator.KernelChange is deprecated; use sutazai_hwopt.resources.Change",
                  DeprecationWarning, stacklevel=2)
    return Change(knob, new, pid=pid, agent_id=agent_id)


def change_dict(change: Change) -> dict[str, Any]:
    """The JSON form of one proposed kernel change (as in ``Action.to_dict``)."""
    return {"knob": change.knob, "new": change.new, "pid": change.pid, "agent_id": change.agent_id}


@dataclass
class Action:
    """One remedy a strategy proposes.

    Attributes:
        name: short id (``renice_background``, ``ionice_idle``, ``hook:cache.shrink`` ...).
        description: what it does and why, for the audit and the recommendations.
        risk: ``low`` / ``medium`` / ``high``.
        target_metric: metric key the action should improve (see ``validation.metric_value``).
        increase: True when a higher target is better (e.g. ``memory.available``).
        changes: kernel changes, applied as one journaled transaction.
        hook: name of a registered hook to call instead (with ``hook_args``).
        agents: agents concerned.
        guards: metrics that must not get worse beyond the rollback threshold.
        advisory: nothing to execute; only ever recommended (e.g. "restart the leaking agent").
    """

    name: str
    description: str
    risk: str
    target_metric: str
    increase: bool = False
    changes: list[Change] = field(default_factory=list)
    hook: str | None = None
    hook_args: dict[str, Any] = field(default_factory=dict)
    agents: list[str] = field(default_factory=list)
    guards: tuple[str, ...] = DEFAULT_GUARDS
    advisory: bool = False
    strategy: str = ""

    def __post_init__(self) -> None:
        if self.risk not in RISK_LEVELS:
            raise InvalidArgumentError(f"action {self.name!r}: risk must be one of {RISK_LEVELS}, got {self.risk!r}")
        if not self.advisory and not self.changes and self.hook is None:
            raise InvalidArgumentError(f"action {self.name!r} has neither kernel changes nor a hook; "
                                       "mark it advisory=True if it is only a recommendation")
        bad = [c for c in self.changes if not isinstance(c, Change)]
        if bad:
            raise InvalidArgumentError(f"action {self.name!r}: changes must be resources.Change objects, "
                                       f"got {bad[0]!r}")
        if not isinstance(self.target_metric, str) or not self.target_metric:
            raise InvalidArgumentError(f"action {self.name!r}: target_metric must be a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "risk": self.risk,
                "target_metric": self.target_metric, "increase": self.increase,
                "changes": [change_dict(c) for c in self.changes], "hook": self.hook, "hook_args": self.hook_args,
                "agents": list(self.agents), "guards": list(self.guards), "advisory": self.advisory,
                "strategy": self.strategy}


@dataclass
class HookResult:
    """What a remedy hook may return: whether it changed anything, how to undo it, and what it did.

    ``changed=False`` makes the action ``not_applied`` (nothing to validate or undo); otherwise ``undo()`` is
    called if validation rejects the action. A hook that raises must leave nothing applied (see
    :class:`~sutazai_hwopt.eliminator.providers.Steps`).
    """

    changed: bool
    undo: Callable[[], Any]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionOutcome:
    """What happened to one action: ``kept``, ``rolled_back``, ``recommended``, ``not_applied``, ``failed``."""

    action: Action
    decision: str
    reason: str = ""
    before: dict[str, float] | None = None
    after: dict[str, float] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.to_dict(), "decision": self.decision, "reason": self.reason,
                "before": finite(self.before), "after": finite(self.after), "results": self.results}


@dataclass
class EliminationResult:
    """The outcome of one ``eliminate_bottleneck`` call.

    ``status``: ``resolved`` (an action was kept because it helped), ``not_resolved`` (everything tried was
    rolled back or failed), ``recommended`` (nothing may run automatically; see the outcomes), ``no_action``
    (no strategy had anything), ``skipped`` (e.g. prediction disabled).
    """

    bottleneck_type: str
    status: str
    outcomes: list[ActionOutcome] = field(default_factory=list)
    reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def kept(self) -> list[ActionOutcome]:
        return [o for o in self.outcomes if o.decision == "kept"]

    def to_dict(self) -> dict[str, Any]:
        return {"bottleneck_type": self.bottleneck_type, "status": self.status, "reason": self.reason,
                "outcomes": [o.to_dict() for o in self.outcomes], "started_at": self.started_at,
                "finished_at": self.finished_at}
