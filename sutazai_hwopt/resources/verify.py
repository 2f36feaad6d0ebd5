"""Drift: compare what was applied with what the kernel holds now, knob by knob.

Unlike tuned's ``verify`` (a pass/fail with details in a log), every knob of every agent is reported with its
expected value, its current value and whether it drifted, so a caller can see which agent lost which setting
(an agent that reset its own nice, an admin's ``taskset``, a process that moved cgroups).

The functions take data, not an owner: :func:`read_settings` reads the kernel for a set of expected settings,
:func:`find_drifts` compares, :func:`heal_changes` turns drifts into changes.
:class:`~.coordinator.ResourcePoolCoordinator` gathers the inputs and applies the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .identity import AgentProcess
from .knobs import Knob
from .transactions import Change

__all__ = ["Drift", "Observation", "SettingKey", "find_drifts", "heal_changes", "read_settings"]

#: One applied setting: (knob name, pid or None, path or None).
SettingKey = tuple[str, int | None, str | None]


@dataclass(frozen=True)
class Drift:
    """One knob of one target: expected value, current kernel value, whether it drifted (or why unknown)."""

    knob: str
    agent_id: str | None
    pid: int | None
    path: str | None
    expected: Any
    actual: Any
    drifted: bool
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Observation:
    """What the kernel holds for one setting: its ``value``, or why there is nothing to compare.

    ``missing`` (process gone, knob not registered) is not a drift; ``unreadable`` (the read failed) is one.
    """

    value: Any = None
    missing: str = ""
    unreadable: str = ""


def read_settings(keys: list[SettingKey], knobs: Mapping[str, Knob],
                  processes: Mapping[int, AgentProcess]) -> dict[SettingKey, Observation]:
    """Read the current value of each setting through its knob (``processes``: the known process per pid)."""
    out: dict[SettingKey, Observation] = {}
    alive: dict[int, AgentProcess | None] = {}
    for key in keys:
        knob_name, pid, path = key
        proc = None
        if pid is not None:
            if pid not in alive:
                known = processes.get(pid)
                alive[pid] = known if known is not None and known.is_alive() else None
            proc = alive[pid]
            if proc is None:
                out[key] = Observation(missing="process gone")
                continue
        knob = knobs.get(knob_name)
        if knob is None:
            out[key] = Observation(missing="knob not registered")
            continue
        try:
            out[key] = Observation(knob.read(proc, path))
        except Exception as exc:
            out[key] = Observation(unreadable=f"cannot read: {exc}")
    return out


def find_drifts(expected: Mapping[SettingKey, tuple[str | None, Any]],
                observed: Mapping[SettingKey, Observation]) -> list[Drift]:
    """One :class:`Drift` per expected setting (``(agent_id, value)`` per key), ordered by agent then knob."""
    out: list[Drift] = []
    for key, (agent_id, value) in sorted(expected.items(), key=lambda kv: (str(kv[1][0]), kv[0][0])):
        knob, pid, path = key
        seen = observed.get(key, Observation(missing="not observed"))
        if seen.missing:
            out.append(Drift(knob, agent_id, pid, path, value, None, False, seen.missing))
        elif seen.unreadable:
            out.append(Drift(knob, agent_id, pid, path, value, None, True, seen.unreadable))
        else:
            out.append(Drift(knob, agent_id, pid, path, value, seen.value, seen.value != value))
    return out


def heal_changes(drifts: list[Drift]) -> list[Change]:
    """The changes that restore every drifted setting that could be read (one per drift)."""
    return [Change(d.knob, d.expected, pid=d.pid, path=d.path, agent_id=d.agent_id, reason="heal")
            for d in drifts if d.drifted and not d.error]
