"""Custom detectors: new bottleneck types found by user functions beside the built-in USE checks.

``register_detector(name, fn)`` (on :class:`~.profiler.PerformanceProfiler`, and through it on the master and the
eliminator) adds the bottleneck type ``name``; ``fn(system_metrics, agent_profiles)`` runs on every detection pass
after the built-in checks and reports what it found as ``None`` (nothing), a :class:`~.detect.Bottleneck`, a mapping
of its fields (``severity``, ``resource``, ``evidence``, ``agents``, ``message``), or a list of those. Every finding
it returns has type ``name``, so the eliminator can route it to the strategy that handles that type.

A detector is a plug-in: one that raises, or returns something that is not a finding, is logged and skipped for
that pass, and the built-in checks and the other detectors still report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from ..logs import get_logger
from .detect import BOTTLENECK_TYPES, SEVERITIES, Bottleneck

__all__ = ["Detector", "DetectorRegistry", "most_severe_first"]

log = get_logger("profiler")

#: ``fn(system_metrics, agent_profiles) -> None | Bottleneck | mapping | list of those``.
Detector = Callable[[Mapping[str, Any], Mapping[str, Mapping[str, Any]]], Any]

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class DetectorRegistry:
    """The custom detectors of one profiler, by bottleneck type, in registration order."""

    def __init__(self) -> None:
        self._detectors: dict[str, Detector] = {}

    def register(self, name: str, fn: Detector) -> None:
        """Add the bottleneck type ``name`` found by ``fn``.

        Raises:
            InvalidArgumentError: a bad name (1-64 of ``[A-Za-z0-9_.-]``, starting with a letter), a built-in
                type's name, or ``fn`` not callable. AlreadyExistsError: ``name`` is registered already.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgumentError(f"detector name must be 1-64 of [A-Za-z0-9_.-] starting with a letter, "
                                       f"got {name!r}")
        if name in BOTTLENECK_TYPES:
            raise InvalidArgumentError(f"{name!r} is a built-in bottleneck type; a detector adds a new one")
        if not callable(fn):
            raise InvalidArgumentError(f"detector {name!r} must be callable, got {type(fn).__name__}")
        if name in self._detectors:
            raise AlreadyExistsError(f"a detector for {name!r} is already registered")
        self._detectors[name] = fn

    def unregister(self, name: str) -> None:
        """Remove the detector of ``name`` (NotFoundError if there is none)."""
        if self._detectors.pop(name, None) is None:
            raise NotFoundError(f"no detector {name!r}; registered: {sorted(self._detectors)}")

    @property
    def names(self) -> tuple[str, ...]:
        """The bottleneck types the registered detectors add."""
        return tuple(self._detectors)

    def __contains__(self, name: object) -> bool:
        return name in self._detectors

    def __len__(self) -> int:
        return len(self._detectors)

    def run(self, system_metrics: Mapping[str, Any] | None,
            agent_profiles: Mapping[str, Mapping[str, Any]] | None) -> list[Bottleneck]:
        """Every detector's findings for one pass; a detector that raises or answers nonsense is logged and skipped."""
        found: list[Bottleneck] = []
        for name, fn in list(self._detectors.items()):
            try:
                result = fn(system_metrics or {}, agent_profiles or {})
                found.extend(_findings(name, result))
            except Exception:   # a plug-in's failure skips that plug-in, never the pass
                log.exception("detector %r raised; skipped for this pass (the other detectors still ran)", name)
        return found


def most_severe_first(found: Iterable[Bottleneck]) -> list[Bottleneck]:
    """Findings ordered as :func:`~.detect.detect_bottlenecks` orders them: most severe first, then by type."""
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(found, key=lambda b: (order[b.severity], b.type))


def _findings(name: str, result: Any) -> list[Bottleneck]:
    """``result`` as findings of type ``name``; InvalidArgumentError when it is not one of the accepted shapes."""
    if result is None or result is False:
        return []
    items: Iterable[Any] = [result] if isinstance(result, (Bottleneck, Mapping)) else result
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidArgumentError(f"detector {name!r} returned {type(result).__name__}; expected None, a "
                                   "Bottleneck, a mapping of its fields or a list of those")
    out = []
    for item in items:
        if isinstance(item, Bottleneck):
            b = Bottleneck(name, item.severity, item.resource, dict(item.evidence), list(item.agents), item.message)
        elif isinstance(item, Mapping):
            evidence = item.get("evidence") or {}
            agents = item.get("agents") or []
            if not isinstance(evidence, Mapping) or not isinstance(agents, (list, tuple)):
                raise InvalidArgumentError(f"detector {name!r}: evidence must be a mapping and agents a list")
            b = Bottleneck(name, str(item.get("severity", "medium")), str(item.get("resource", "custom")),
                           dict(evidence), [str(a) for a in agents], str(item.get("message", "")))
        else:
            raise InvalidArgumentError(f"detector {name!r} returned {item!r}, not a Bottleneck or a mapping")
        if b.severity not in SEVERITIES:
            raise InvalidArgumentError(f"detector {name!r}: severity must be one of {SEVERITIES}, got {b.severity!r}")
        out.append(b)
    return out
