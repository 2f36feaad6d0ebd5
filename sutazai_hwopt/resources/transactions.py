"""Apply a set of kernel changes as one transaction through the journal, and undo them.

:class:`Transactor` is the public way for any component (the coordinator's plans, the bottleneck eliminator's
actions) to change a knob so that it can be undone — by a handle in this process, or by ``rollback()`` in a new
process after this one died. Order of work for :meth:`Transactor.apply`:

1. validate every change (bad values raise before anything is touched);
2. pin every target process by pid + start time and probe each knob: knobs this host does not permit or offer
   are skipped and reported (``not permitted`` / ``not available``), never faked;
3. read the previous values; drop changes that would not change anything (``unchanged``);
4. ``dry_run``: stop here and return the report;
5. journal the intent (one fsync), write each knob, journal a commit. If a write fails, everything already
   written in this transaction is restored in reverse order and the error is raised: all or nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import HwoptError, InvalidArgumentError, NotFoundError, PlatformError
from ..logs import get_logger
from .identity import AgentProcess, read_start_time
from .journal import Journal, JournalEntry
from .knobs import AVAILABLE, Knob, kernel_error

__all__ = ["Change", "ChangeHandle", "KnobResult", "Transactor"]

log = get_logger("resources")

APPLIED = "applied"
UNCHANGED = "unchanged"
PLANNED = "planned"
RESTORED = "restored"
GONE = "process gone"
SUPERSEDED = "superseded"
FAILED = "failed"


@dataclass(frozen=True)
class Change:
    """A request to set one knob: on a process (``pid``), a file (``path``) or both (cgroup membership).

    Attributes:
        knob: knob name (``affinity``, ``nice``, ``sched_policy``, ``ionice``, ``thp_disabled``,
            ``cgroup_file``, ``cgroup_dir``, ``cgroup_member`` or a registered custom knob).
        new: the value to set (the knob's JSON form, e.g. ``[0, 1]`` for affinity).
        pid: target process; it is pinned by its start time when the change is applied.
        path: target file or cgroup mount.
        owner: who made the change (``rollback(owner=...)`` undoes only that component's changes).
        agent_id: the agent concerned, for reports.
        reason: free text kept in the journal.
    """

    knob: str
    new: Any
    pid: int | None = None
    path: str | None = None
    owner: str = "resources"
    agent_id: str | None = None
    reason: str = ""


@dataclass
class KnobResult:
    """What happened to one change: status, previous and new value, and why when it was skipped."""

    knob: str
    status: str
    new: Any
    previous: Any = None
    pid: int | None = None
    path: str | None = None
    agent_id: str | None = None
    reason: str = ""
    entry_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}


@dataclass
class ChangeHandle:
    """One transaction's outcome; :meth:`rollback` undoes exactly its changes."""

    txn: str | None
    results: list[KnobResult]
    transactor: Transactor | None = field(default=None, repr=False)

    @property
    def entry_ids(self) -> list[str]:
        return [r.entry_id for r in self.results if r.entry_id is not None]

    @property
    def applied(self) -> list[KnobResult]:
        return [r for r in self.results if r.status == APPLIED]

    def rollback(self) -> list[KnobResult]:
        """Restore the previous values of this transaction's changes (later changes on the same setting win)."""
        if self.transactor is None or not self.entry_ids:
            return []
        return self.transactor.rollback(ids=self.entry_ids)


class Transactor:
    """Applies :class:`Change` sets through a :class:`Journal` and the knob table (see the module docstring)."""

    def __init__(self, journal: Journal, knobs: dict[str, Knob]) -> None:
        self.journal = journal
        self.knobs = knobs
        self._lock = threading.RLock()

    def _knob(self, name: str) -> Knob:
        knob = self.knobs.get(name)
        if knob is None:
            raise InvalidArgumentError(f"knob {name!r} is unknown; known: {', '.join(sorted(self.knobs))}")
        return knob

    def apply(self, changes: Iterable[Change], *, dry_run: bool = False) -> ChangeHandle:
        """Apply ``changes`` all-or-nothing (see the module docstring); returns a handle with one result each.

        Raises:
            InvalidArgumentError: a change names an unknown knob or a bad value (nothing was touched).
            NotFoundError: a target process does not exist (nothing was touched) or exited mid-way (undone).
            KernelPermissionError / PlatformError: the kernel refused a write; the transaction was undone.
        """
        changes = list(changes)
        normalized = []
        for ch in changes:
            if not isinstance(ch, Change):
                raise InvalidArgumentError(f"expected Change objects, got {type(ch).__name__}")
            knob = self._knob(ch.knob)
            normalized.append((ch, knob, knob.normalize(ch.new)))
        procs: dict[int, AgentProcess] = {}
        for ch, _, _ in normalized:
            if ch.pid is not None and ch.pid not in procs:
                procs[ch.pid] = AgentProcess.of(ch.pid)
        results: list[KnobResult] = []
        todo: list[tuple[JournalEntry, Knob, AgentProcess | None]] = []
        txn = self.journal.new_txn()
        # The journal lock is held from reading the previous values to the commit, so a rollback or another
        # applier in another process never interleaves with this transaction.
        with self._lock, self.journal.locked():
            seen: set[tuple[str, int | None, str | None]] = set()
            for ch, knob, value in normalized:
                key = (ch.knob, ch.pid, ch.path)
                if key in seen:
                    raise InvalidArgumentError(f"two changes of knob {ch.knob!r} on pid {ch.pid} / path "
                                               f"{ch.path} in one transaction")
                seen.add(key)
                proc = procs.get(ch.pid) if ch.pid is not None else None
                res = KnobResult(ch.knob, PLANNED, value, pid=ch.pid, path=ch.path, agent_id=ch.agent_id)
                results.append(res)
                status, why = knob.probe(proc, ch.path)
                if status != AVAILABLE:
                    res.status, res.reason = status, why
                    continue
                try:
                    res.previous = knob.read(proc, ch.path)
                except (OSError, HwoptError) as exc:
                    raise kernel_error(exc, ch.knob, proc, ch.path, value) from exc
                if res.previous == value:
                    res.status = UNCHANGED
                    continue
                entry = JournalEntry(id=f"{txn}:{len(todo)}", txn=txn, knob=ch.knob, new=value,
                                     previous=res.previous, pid=ch.pid,
                                     start_time=proc.start_time if proc else None, path=ch.path,
                                     owner=ch.owner, agent_id=ch.agent_id, reason=ch.reason)
                res.entry_id = entry.id
                todo.append((entry, knob, proc))
            if dry_run or not todo:
                for r in results:
                    r.entry_id = None
                return ChangeHandle(None, results, self)
            self.journal.record([e for e, _, _ in todo])
            done: list[tuple[JournalEntry, Knob, AgentProcess | None]] = []
            for item in todo:
                entry, knob, proc = item
                try:
                    done.append(item)  # a failed write may have reached some threads: undo it too
                    knob.write(proc, entry.path, entry.new)
                except Exception as exc:
                    err = kernel_error(exc, entry.knob, proc, entry.path, entry.new)
                    undone = self._undo_items(list(reversed(done)))
                    self.journal.mark_undone([(e.id, how) for e, how in undone]
                                             + [(e.id, "never applied") for e, _, _ in todo[len(done):]])
                    log.warning("transaction %s failed at %s on pid %s: %s; %d change(s) undone",
                                txn, entry.knob, entry.pid, err, len(done))
                    # One message says both what failed and that nothing of the transaction remains.
                    err.args = (f"{err}; the whole transaction ({len(todo)} change(s)) was rolled back",)
                    raise err from exc
            self.journal.commit(txn)
        for r in results:
            if r.entry_id is not None:
                r.status = APPLIED
        log.info("transaction %s applied %d change(s)", txn, len(todo))
        return ChangeHandle(txn, results, self)

    def _undo_items(self, items: Sequence[tuple[JournalEntry, Knob, AgentProcess | None]]
                    ) -> list[tuple[JournalEntry, str]]:
        out = []
        for entry, knob, proc in items:
            if proc is not None and not proc.is_alive():
                out.append((entry, GONE))
                continue
            try:
                knob.write(proc, entry.path, entry.previous)
                out.append((entry, RESTORED))
            except Exception as exc:  # best effort while already failing
                log.error("could not restore %s on pid %s: %s", entry.knob, entry.pid, exc)
                out.append((entry, f"{FAILED}: {exc}"))
        return out

    def rollback(self, *, ids: Sequence[str] | None = None, owner: str | None = None,
                 txn: str | None = None) -> list[KnobResult]:
        """Restore previous values of the active journal entries (all, or those selected), newest first.

        An entry whose setting was changed again later by a change not being rolled back is not written
        (that later value stays); the later change inherits the previous value instead ("superseded"). An entry
        on a process that exited, or whose pid now belongs to another process, is dropped ("process gone").

        Raises:
            PlatformError: some values could not be restored; they stay in the journal for a retry and the
                rest were restored.
        """
        results: list[KnobResult] = []
        failures: list[str] = []
        with self._lock, self.journal.locked():
            everything = self.journal.active()
            wanted = set(ids) if ids is not None else None
            chosen = [e for e in everything if (owner is None or e.owner == owner)
                      and (txn is None or e.txn == txn) and (wanted is None or e.id in wanted)]
            chosen_ids = {e.id for e in chosen}
            # Per setting, the active changes not being rolled back, oldest first (to find a later one).
            kept: dict[tuple[Any, ...], list[tuple[int, JournalEntry]]] = {}
            for i, e in enumerate(everything):
                if e.id not in chosen_ids:
                    kept.setdefault(e.key, []).append((i, e))
            order = {e.id: i for i, e in enumerate(everything)}
            outcomes: list[tuple[str, str]] = []
            for entry in reversed(chosen):
                later = [e for i, e in kept.get(entry.key, ()) if i > order[entry.id] and e.undone is None]
                res = KnobResult(entry.knob, RESTORED, entry.previous, previous=entry.new, pid=entry.pid,
                                 path=entry.path, agent_id=entry.agent_id, entry_id=entry.id)
                results.append(res)
                if later:
                    self.journal.rebase(later[0].id, entry.previous)
                    later[0].previous = entry.previous
                    res.status = SUPERSEDED
                elif entry.pid is not None and read_start_time(entry.pid) != entry.start_time:
                    res.status = GONE
                else:
                    knob = self.knobs.get(entry.knob)
                    proc = AgentProcess(entry.pid, entry.start_time or 0) if entry.pid is not None else None
                    try:
                        if knob is None:
                            raise InvalidArgumentError(f"knob {entry.knob!r} is not registered here")
                        knob.write(proc, entry.path, entry.previous)
                    except NotFoundError:
                        res.status = GONE
                    except Exception as exc:
                        res.status, res.reason = FAILED, str(kernel_error(exc, entry.knob, proc, entry.path,
                                                                           entry.previous))
                        failures.append(res.reason)
                        entry.undone = None
                        continue
                entry.undone = res.status
                outcomes.append((entry.id, res.status))
            self.journal.mark_undone(outcomes)
        if results:
            log.info("rollback: %d restored, %d gone, %d superseded, %d failed",
                     sum(r.status == RESTORED for r in results), sum(r.status == GONE for r in results),
                     sum(r.status == SUPERSEDED for r in results), len(failures))
        if failures:
            raise PlatformError(f"rollback could not restore {len(failures)} value(s): {'; '.join(failures)}")
        return results
