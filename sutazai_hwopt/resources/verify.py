"""verify(): compare what the coordinator applied with what the kernel holds now; heal(): re-apply drift.

Unlike tuned's ``verify`` (a pass/fail with details in a log), every knob of every agent is reported with its
expected value, its current value and whether it drifted, so a caller can see which agent lost which setting
(an agent that reset its own nice, an admin's ``taskset``, a process that moved cgroups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..logs import get_logger
from .identity import AgentProcess
from .transactions import Change, ChangeHandle

if TYPE_CHECKING:
    from .coordinator import ResourcePoolCoordinator

__all__ = ["Drift", "heal", "verify"]

log = get_logger("resources")


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


def verify(coord: ResourcePoolCoordinator) -> list[Drift]:
    """Every knob the coordinator (or anyone through it) applied, checked against the kernel."""
    out: list[Drift] = []
    alive: dict[int, AgentProcess | None] = {}
    registered = {a.pid: a.process for a in coord.agents()}
    for e in coord.journal.active():  # processes known only from the journal (applied by an earlier run)
        if e.pid is not None and e.start_time is not None:
            registered.setdefault(e.pid, AgentProcess(e.pid, e.start_time))
    for (knob_name, pid, path), (agent_id, expected) in sorted(coord.expected_values().items(),
                                                               key=lambda kv: (str(kv[1][0]), kv[0][0])):
        knob = coord.transactor.knobs.get(knob_name)
        proc = None
        if pid is not None:
            if pid not in alive:
                proc = registered.get(pid)
                alive[pid] = proc if proc is not None and proc.is_alive() else None
            proc = alive[pid]
            if proc is None:
                out.append(Drift(knob_name, agent_id, pid, path, expected, None, False, "process gone"))
                continue
        if knob is None:
            out.append(Drift(knob_name, agent_id, pid, path, expected, None, False, "knob not registered"))
            continue
        try:
            actual = knob.read(proc, path)
        except Exception as exc:
            out.append(Drift(knob_name, agent_id, pid, path, expected, None, True, f"cannot read: {exc}"))
            continue
        out.append(Drift(knob_name, agent_id, pid, path, expected, actual, actual != expected))
    return out


def heal(coord: ResourcePoolCoordinator) -> ChangeHandle | None:
    """Re-apply drifted knobs as one transaction (its undo restores the drifted value, then older ones)."""
    drifted = [d for d in verify(coord) if d.drifted and not d.error]
    if not drifted:
        return None
    for d in drifted:
        log.warning("drift: %s of %s (pid %s) is %r, expected %r; re-applying", d.knob, d.agent_id, d.pid,
                    d.actual, d.expected)
    changes = [Change(d.knob, d.expected, pid=d.pid, path=d.path, agent_id=d.agent_id, reason="heal")
               for d in drifted]
    return coord.apply_changes(changes)
