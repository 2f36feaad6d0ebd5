"""BottleneckEliminator: turn a detected bottleneck into journaled, validated, reversible actions.

For one bottleneck: every strategy that can handle it proposes a ladder of actions; the mode decides which
may run automatically. Allowed actions are tried least risky first, one at a time: measure a window
before, apply (kernel changes as one transaction through the coordinator's journal; hooks by calling them),
measure a window after, and keep the action only if its target metric improved and no guard metric got
worse beyond the threshold — otherwise roll it back and try the next. The first kept action ends the call.
Every decision is logged to ``bottleneck_eliminator.log`` (component ``eliminator``) and kept in
:meth:`BottleneckEliminator.audit_log`. A control loop of this shape (act, observe, revert) follows the
"measure - change one thing - measure" discipline of Gregg's performance methodology.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from .._validate import finite
from ..config import EliminatorSection, HwoptConfig, section_of
from ..errors import HwoptError, InvalidArgumentError, StateError
from ..logs import get_logger
from ..profiler.detect import BOTTLENECK_TYPES
from ..resources import plugin_name
from .actions import MODE_RISKS, RISK_LEVELS, Action, ActionOutcome, EliminationResult, HookResult
from .context import EliminationContext
from .strategies import EliminationStrategy, builtin_strategies
from .validation import MetricSource, ProfilerSource, judge

__all__ = ["KNOWN_TYPES", "BottleneckEliminator"]

log = get_logger("eliminator")

#: Bottleneck types the eliminator accepts: the profiler's plus those other components report.
KNOWN_TYPES = (*BOTTLENECK_TYPES, "backend_overload", "memory_exhaustion_predicted")
_PREDICTED = frozenset({"memory_exhaustion_predicted"})


class BottleneckEliminator:
    """Applies validated, reversible fixes for bottlenecks.

    Args:
        settings: ``{"mode": "balanced", "auto_fix": True, "prediction_enabled": True, ...}`` (keys of
            ``EliminatorSection``), the section itself, or a whole ``HwoptConfig``.
        coordinator: the ``ResourcePoolCoordinator`` whose journal applies and rolls back kernel changes
            (owner ``"eliminator"``) and whose registry gives agent pids and priorities.
        profiler: the ``PerformanceProfiler`` used to measure before/after and to find agents' children.
        metric_source: measures the validation windows (default: sampling ``profiler``).
        strategies: replaces the built-in strategies (``add_strategy`` appends to them).
        sleep: awaitable sleep (tests pass a no-op).

    Example:
        >>> elim = BottleneckEliminator({"mode": "conservative", "auto_fix": False})
        >>> [a.name for a in elim.recommend("io_thrashing", {"agents": ["a1"], "agent_pids": {"a1": 1}})]
        ['ionice_best_effort_low', 'ionice_idle']
    """

    def __init__(self, settings: Mapping[str, Any] | EliminatorSection | HwoptConfig | None = None, *,
                 coordinator: Any = None, profiler: Any = None, metric_source: MetricSource | None = None,
                 strategies: Sequence[EliminationStrategy] | None = None,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = section_of(settings, EliminatorSection, name="settings")
        self.coordinator = coordinator
        self.profiler = profiler
        self._clock = clock
        self._custom_metrics: dict[str, Callable[[], float]] = {}
        self._hooks: dict[str, tuple[Callable[..., Any], Callable[[Any], Any] | None]] = {}
        if metric_source is None and profiler is not None:
            kw: dict[str, Any] = {"interval_s": self.settings.validation_interval_s, "custom": self._custom_metrics}
            if sleep is not None:
                kw["sleep"] = sleep
            metric_source = ProfilerSource(profiler, **kw)
        self.metric_source = metric_source
        self._strategies: list[EliminationStrategy] = list(strategies) if strategies is not None \
            else builtin_strategies()
        for s in self._strategies:
            self._check_strategy(s)
        self._audit: deque[dict[str, Any]] = deque(maxlen=self.settings.audit_size)
        self._busy = threading.Lock()

    # -- plug-ins ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_strategy(s: Any) -> None:
        # ``name`` is optional (it defaults to the class name, as the seed's CustomBottleneckStrategy has none)
        if not (callable(getattr(s, "can_handle", None)) and callable(getattr(s, "generate_actions", None))):
            raise InvalidArgumentError(f"strategy {s!r} lacks can_handle/generate_actions "
                                       "(the EliminationStrategy protocol)")

    def add_strategy(self, strategy: EliminationStrategy) -> None:
        """Append a strategy (consulted after the ones already there)."""
        self._check_strategy(strategy)
        self._strategies.append(strategy)

    @property
    def strategies(self) -> list[EliminationStrategy]:
        return list(self._strategies)

    def register_hook(self, name: str, fn: Callable[..., Any], *, undo: Callable[[Any], Any] | None = None) -> None:
        """Let a component offer a remedy: ``fn(**hook_args)`` does it; ``undo(fn's result)`` reverts it.

        Names the built-in strategies use: ``cache.shrink``, ``pool.compress``, ``pool.evict``,
        ``pool.collect_dead``, ``balancer.shed``, ``balancer.drain``. If ``fn`` returns a callable and no
        ``undo`` is given, that callable is the undo.
        """
        if not isinstance(name, str) or not name or not callable(fn) or (undo is not None and not callable(undo)):
            raise InvalidArgumentError(f"register_hook needs a non-empty name and callables, got {name!r}")
        self._hooks[name] = (fn, undo)

    def attach(self, *, memory: Any = None, cache: Any = None, balancer: Any = None) -> list[str]:
        """Register the hooks these components offer (by method name); returns the hook names registered.

        ``memory.collect_garbage()`` -> ``pool.collect_dead``; ``cache.shrink(fraction)`` /
        ``cache.restore(state)`` -> ``cache.shrink``; ``balancer.shed(backend)`` / ``balancer.drain(backend)``
        (each returning its undo) -> ``balancer.shed`` / ``balancer.drain``. Missing methods are skipped.
        """
        added: list[str] = []
        if memory is not None and callable(getattr(memory, "collect_garbage", None)):
            self.register_hook("pool.collect_dead", lambda **kw: memory.collect_garbage())
            added.append("pool.collect_dead")
        if cache is not None and callable(getattr(cache, "shrink", None)):
            restore = getattr(cache, "restore", None)
            self.register_hook("cache.shrink", lambda **kw: cache.shrink(0.5),
                               undo=restore if callable(restore) else None)
            added.append("cache.shrink")
        for name in ("shed", "drain"):
            fn = getattr(balancer, name, None) if balancer is not None else None
            if callable(fn):
                self.register_hook(f"balancer.{name}", lambda backend=None, _fn=fn, **kw: _fn(backend))
                added.append(f"balancer.{name}")
        return added

    def attach_provider(self, provider: Any) -> list[str]:
        """Register what a remedy provider offers: its ``hooks()`` (name -> fn returning a
        :class:`~.actions.HookResult`) and, if it has them, its ``metrics()`` (name -> fn); returns the hook
        names. See :mod:`sutazai_hwopt.eliminator.providers`.
        """
        hooks = dict(provider.hooks())
        for name, fn in hooks.items():
            self.register_hook(name, fn)
        metrics = getattr(provider, "metrics", None)
        for name, fn in (dict(metrics()) if callable(metrics) else {}).items():
            self.register_metric(name, fn)
        return list(hooks)

    def register_metric(self, name: str, fn: Callable[[], float]) -> None:
        """Make ``custom:<name>`` measurable (e.g. the load balancer's backend load)."""
        if not isinstance(name, str) or not name or not callable(fn):
            raise InvalidArgumentError(f"register_metric needs a non-empty name and a callable, got {name!r}")
        self._custom_metrics[name] = fn

    def register_detector(self, name: str, fn: Callable[..., Any]) -> None:
        """Add the bottleneck type ``name`` to this eliminator's profiler (see
        :meth:`PerformanceProfiler.register_detector`): its findings then come with every detection pass and
        ``eliminate_bottleneck(name, ...)`` accepts the type.

        Raises:
            StateError: the eliminator has no profiler (pass ``profiler=``, or register on the profiler).
        """
        register = getattr(self.profiler, "register_detector", None)
        if register is None:
            raise StateError("this eliminator has no profiler to run detectors; pass profiler= or call "
                             "PerformanceProfiler.register_detector")
        register(name, fn)

    @property
    def known_types(self) -> tuple[str, ...]:
        """Bottleneck types accepted by name: the built-in ones and those of the profiler's detectors. A type
        outside these is accepted when a strategy says it can handle it (a custom strategy adds its type)."""
        detectors = getattr(self.profiler, "detectors", None)
        return (*KNOWN_TYPES, *getattr(detectors, "names", ()))

    @property
    def custom_metrics(self) -> Mapping[str, Callable[[], float]]:
        """The ``custom:<name>`` metrics registered so far (a live read-only view, for metric sources)."""
        return MappingProxyType(self._custom_metrics)

    # -- context and planning ---------------------------------------------------------------------------
    def _context(self, bottleneck_type: str, metrics: Any) -> EliminationContext:
        """Validate the caller's metrics and add what strategies need (agents' pids, priorities, hooks, cpus)."""
        if not isinstance(bottleneck_type, str) or not bottleneck_type:
            raise InvalidArgumentError(f"bottleneck_type {bottleneck_type!r} is unknown: not a non-empty string")
        if metrics is None:
            metrics = {}
        if not isinstance(metrics, Mapping):
            raise InvalidArgumentError(f"metrics must be a mapping, got {type(metrics).__name__}")
        agents = metrics.get("agents", [])
        if agents is None:
            agents = []
        if not isinstance(agents, (list, tuple)) or not all(isinstance(a, str) for a in agents):
            raise InvalidArgumentError(f"metrics['agents'] must be a list of agent ids, got {agents!r}")
        for key in ("agent_profiles", "agent_pids", "agent_priorities"):
            if key in metrics and not isinstance(metrics[key], Mapping):
                raise InvalidArgumentError(f"metrics[{key!r}] must be a mapping, got {type(metrics[key]).__name__}")
        for key in ("backend", "target_metric"):
            if metrics.get(key) is not None and not isinstance(metrics[key], str):
                raise InvalidArgumentError(f"metrics[{key!r}] must be a string, got {metrics[key]!r}")
        profiles = dict(metrics.get("agent_profiles") or {})
        if not profiles and self.profiler is not None:
            profiles = self.profiler.agent_profiles(1)
        pids = dict(metrics.get("agent_pids") or {})
        prios = dict(metrics.get("agent_priorities") or {})
        if self.coordinator is not None:
            for ag in self.coordinator.agents():
                pids.setdefault(ag.agent_id, ag.pid)
                prios.setdefault(ag.agent_id, getattr(ag, "priority", 0))
        for a, p in profiles.items():
            if isinstance(p, Mapping) and isinstance(p.get("pid"), int):
                pids.setdefault(a, p["pid"])
        unknown = [a for a in agents if a not in pids and a not in profiles]
        if unknown:
            raise InvalidArgumentError(f"metrics['agents'] names unknown agents {unknown}; known: "
                                       f"{sorted(pids)[:10]}")
        target = metrics.get("target_metric")
        if target is None and metrics.get("backend") and "balancer.backend_load" in self._custom_metrics:
            target = f"custom:balancer.backend_load:{metrics['backend']}"  # a balancer provider is attached
        hw = getattr(self.coordinator, "config", None)
        try:
            cpus = tuple(sorted(os.sched_getaffinity(0)))
        except OSError:
            cpus = ()
        ctx = EliminationContext(
            bottleneck_type, agents=tuple(agents), agent_profiles=profiles, agent_pids=pids,
            agent_priorities=prios, hooks=frozenset(self._hooks), cpus=cpus,
            background_nice=self.settings.background_nice, boost_nice=self.settings.boost_nice,
            exclusive_priority=int(getattr(hw, "exclusive_priority", 8)), backend=metrics.get("backend"),
            target_metric=target, metrics=dict(metrics))
        if bottleneck_type not in self.known_types and not self._claimed(bottleneck_type, ctx):
            raise InvalidArgumentError(f"bottleneck_type {bottleneck_type!r} is unknown; known types: "
                                       f"{', '.join(self.known_types)}, or any type a registered strategy "
                                       "can_handle")
        return ctx

    def _claimed(self, bottleneck_type: str, ctx: EliminationContext) -> bool:
        """Whether a strategy says it handles this (custom) type; one that raises counts as no."""
        for s in self._strategies:
            try:
                if s.can_handle(bottleneck_type, ctx):
                    return True
            except Exception:
                continue
        return False

    def _plan(self, bottleneck_type: str, ctx: EliminationContext) -> list[Action]:
        actions: list[Action] = []
        for s in self._strategies:
            name = plugin_name(s)
            try:
                if not s.can_handle(bottleneck_type, ctx):
                    continue
                proposed = list(s.generate_actions(bottleneck_type, ctx))
            except Exception as exc:  # a plug-in's failure skips that plug-in, never the call
                self._record(bottleneck_type, None, "skipped", f"strategy {name} raised {type(exc).__name__}: {exc}")
                continue
            for a in proposed:
                if not isinstance(a, Action):
                    self._record(bottleneck_type, None, "skipped", f"strategy {name} returned {a!r}, not an Action")
                    continue
                a.strategy = a.strategy or name
                actions.append(a)
        rank = {r: i for i, r in enumerate(RISK_LEVELS)}
        return sorted(actions, key=lambda a: rank[a.risk])  # stable: strategy order within a risk

    def allowed(self, action: Action, *, consent: bool = False) -> bool:
        """Whether the mode and ``auto_fix`` (or the operator's ``consent`` to this one call) let ``action`` run."""
        return (self.settings.auto_fix or consent) and not action.advisory \
            and action.risk in MODE_RISKS[self.settings.mode]

    def recommend(self, bottleneck_type: str, metrics: Mapping[str, Any] | None = None) -> list[Action]:
        """The actions the strategies propose, least risky first, without applying anything."""
        return self._plan(bottleneck_type, self._context(bottleneck_type, metrics))

    def predicted_bottlenecks(self, predictions: Mapping[str, Any]) -> list[str]:
        """Types to act on now from ``PerformanceProfiler.predict()``: exhaustion sooner than the horizon.

        Host memory (``predictions["memory"]``) and, when given, shared pools (``predictions["pools"]``: pool
        id -> the same ``{"seconds": ...}`` form) count; the host service calls it on every detection pass
        and acts on what it returns with the low-risk remedies only (see :meth:`eliminate_bottleneck`).
        """
        if not self.settings.prediction_enabled or not isinstance(predictions, Mapping):
            return []
        pools = predictions.get("pools")
        candidates = [predictions.get("memory"), *(pools.values() if isinstance(pools, Mapping) else ())]
        if any(self._within_horizon(p) for p in candidates):
            return ["memory_exhaustion_predicted"]
        return []

    def _within_horizon(self, prediction: Any) -> bool:
        return isinstance(prediction, Mapping) and isinstance(prediction.get("seconds"), (int, float)) \
            and prediction["seconds"] < self.settings.prediction_horizon_s

    # -- elimination ------------------------------------------------------------------------------------
    async def eliminate_bottleneck(self, bottleneck_type: str,
                                   system_metrics: Mapping[str, Any] | None = None, *,
                                   consent: bool = False) -> EliminationResult:
        """Try the allowed actions for one bottleneck; keep the first that helps, roll back the rest.

        ``consent`` is an operator's explicit go-ahead for this one call (``POST /api/eliminate``): the
        actions the mode's risk level allows run even when ``auto_fix`` is off. ``system_metrics`` may carry
        ``agents`` (the finding's agents), ``agent_profiles``, ``agent_pids``, ``backend``; missing agent data
        is taken from the coordinator and the profiler.

        Raises:
            InvalidArgumentError: unknown type or malformed metrics (nothing was applied).
            StateError: another elimination is running on this instance.
        """
        ctx = self._context(bottleneck_type, system_metrics)
        if not self._busy.acquire(blocking=False):
            raise StateError("another eliminate_bottleneck call is in progress on this eliminator")
        try:
            return await self._eliminate(bottleneck_type, ctx, consent)
        finally:
            self._busy.release()

    async def _eliminate(self, btype: str, ctx: EliminationContext, consent: bool = False) -> EliminationResult:
        res = EliminationResult(btype, "no_action", started_at=self._clock())
        if btype in _PREDICTED and not self.settings.prediction_enabled:
            res.status, res.reason = "skipped", "prediction_enabled is false"
            self._record(btype, None, "skipped", res.reason)
            res.finished_at = self._clock()
            return res
        actions = self._plan(btype, ctx)
        tried = False
        for action in actions:
            if not self.allowed(action, consent=consent):
                why = ("advisory only" if action.advisory
                       else "auto_fix is off" if not (self.settings.auto_fix or consent)
                       else f"risk {action.risk} is not automatic in mode {self.settings.mode}")
                res.outcomes.append(self._outcome(btype, ActionOutcome(action, "recommended", why)))
                continue
            if btype in _PREDICTED and action.risk != "low":
                res.outcomes.append(self._outcome(btype, ActionOutcome(
                    action, "recommended", "predicted, not yet happening: only low-risk remedies run early")))
                continue
            if res.kept:
                res.outcomes.append(self._outcome(btype, ActionOutcome(action, "recommended",
                                                                       "an earlier action already helped")))
                continue
            tried = True
            res.outcomes.append(self._outcome(btype, await self._try(action)))
        if res.kept:
            res.status = "resolved"
        elif tried:
            res.status = "not_resolved"
        elif actions:
            res.status = "recommended"
        res.finished_at = self._clock()
        log.info("bottleneck %s: %s (%d action(s))", btype, res.status, len(res.outcomes))
        return res

    async def _try(self, action: Action) -> ActionOutcome:
        keys = list(dict.fromkeys([action.target_metric, *action.guards]))
        window = self.settings.validation_window_s
        if self.metric_source is None:
            return ActionOutcome(action, "not_applied", "no profiler or metric source to validate with")
        before = await self.metric_source.measure(keys, window)
        if not math.isfinite(before.get(action.target_metric, math.nan)):
            return ActionOutcome(action, "not_applied", f"target {action.target_metric} cannot be measured",
                                 before=before)
        try:
            undo, results = self._apply(action)
        except HwoptError as exc:
            return ActionOutcome(action, "failed", f"{type(exc).__name__}: {exc} (nothing left applied)",
                                 before=before)
        except Exception as exc:  # a hook raised: it promised nothing, so nothing to undo
            return ActionOutcome(action, "failed", f"hook {action.hook} raised {type(exc).__name__}: {exc}",
                                 before=before)
        if undo is None:
            return ActionOutcome(action, "not_applied", "nothing changed (already in that state or not permitted)",
                                 before=before, results=results)
        after = await self.metric_source.measure(keys, window)
        verdict = judge(action.target_metric, action.increase, action.guards, before, after,
                        rollback_threshold=self.settings.rollback_threshold,
                        min_improvement=self.settings.min_improvement)
        if verdict.keep:
            return ActionOutcome(action, "kept", verdict.reason, before, after, results)
        try:
            undo()
        except Exception as exc:
            return ActionOutcome(action, "rollback_failed", f"{verdict.reason}; rollback raised "
                                 f"{type(exc).__name__}: {exc}", before, after, results)
        return ActionOutcome(action, "rolled_back", verdict.reason, before, after, results)

    def _apply(self, action: Action) -> tuple[Callable[[], Any] | None, list[dict[str, Any]]]:
        """Apply one action; returns (undo or None when nothing changed, per-change results)."""
        if action.changes:
            if self.coordinator is None:
                raise StateError("kernel actions need a coordinator (its journal applies and undoes them)")
            why = f"{action.strategy}:{action.name}"
            changes = [replace(c, owner="eliminator", reason=c.reason or why) for c in action.changes]
            handle = self.coordinator.apply_changes(changes)
            results = [r.to_dict() for r in handle.results]
            if not handle.applied:
                handle.rollback()  # drops the journal entries of unchanged values too
                return None, results
            return handle.rollback, results
        assert action.hook is not None
        entry = self._hooks.get(action.hook)
        if entry is None:
            raise StateError(f"hook {action.hook!r} is not registered")
        fn, undo = entry
        out = fn(**action.hook_args)
        if isinstance(out, HookResult):
            results = [{"hook": action.hook, **out.details}]
            return (out.undo if out.changed else None), results
        if undo is not None:
            return (lambda: undo(out)), [{"hook": action.hook, "result": repr(out)[:200]}]
        if callable(out):
            return out, [{"hook": action.hook}]
        return (lambda: log.warning("hook %s has no undo; its effect stays", action.hook)), \
            [{"hook": action.hook, "result": repr(out)[:200]}]

    # -- audit ------------------------------------------------------------------------------------------
    def _outcome(self, btype: str, o: ActionOutcome) -> ActionOutcome:
        self._record(btype, o.action, o.decision, o.reason, o.before, o.after, o.results)
        return o

    def _record(self, btype: str, action: Action | None, decision: str, reason: str,
                before: Mapping[str, float] | None = None, after: Mapping[str, float] | None = None,
                results: list[dict[str, Any]] | None = None) -> None:
        entry = {"ts": self._clock(), "bottleneck_type": btype, "action": action.name if action else None,
                 "risk": action.risk if action else None, "strategy": action.strategy if action else None,
                 "agents": list(action.agents) if action else [], "decision": decision, "reason": reason,
                 "before": finite(before), "after": finite(after), "results": results or []}
        self._audit.append(entry)
        level = 30 if decision in ("failed", "skipped", "rollback_failed") else 20
        log.log(level, "%s", json.dumps(entry, default=str))

    def audit_log(self) -> list[dict[str, Any]]:
        """Every decision so far (newest last, at most ``audit_size``)."""
        return list(self._audit)

    def rollback_all(self) -> list[Any]:
        """Undo every kernel change the eliminator still has in the coordinator's journal."""
        if self.coordinator is None:
            return []
        return list(self.coordinator.rollback(owner="eliminator"))
