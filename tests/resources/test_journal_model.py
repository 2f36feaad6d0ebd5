"""Journaled changes and rollbacks against a plain-Python model (hypothesis state machine, real processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sutazai_hwopt.resources import Change, ResourcePoolCoordinator

# Restoring a lowered priority (and lowering one) needs CAP_SYS_NICE.
pytestmark = pytest.mark.root

CPUS = sorted(os.sched_getaffinity(0))
AFFINITIES = [tuple(CPUS), (CPUS[0],), (CPUS[-1],)]


class JournalMachine(RuleBasedStateMachine):
    """Model: per (pid, knob) the original value and the active changes in order; kernel = last active's value."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="hwopt-sm-")
        self.procs = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
        self.coord = ResourcePoolCoordinator(state_dir=self.dir)
        self.original = {}
        for p in self.procs:
            self.original[(p.pid, "nice")] = os.getpriority(os.PRIO_PROCESS, p.pid)
            self.original[(p.pid, "affinity")] = tuple(sorted(os.sched_getaffinity(p.pid)))
        self.active: dict[tuple[int, str], list[tuple[str, object]]] = {k: [] for k in self.original}
        self.handles: list[tuple[object, list[tuple[tuple[int, str], str]]]] = []
        self.owners: dict[str, str] = {}

    def teardown(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def current(self, key: tuple[int, str]) -> object:
        return self.active[key][-1][1] if self.active[key] else self.original[key]

    @rule(i=st.integers(0, 1), nice=st.none() | st.integers(0, 19), aff=st.none() | st.sampled_from(AFFINITIES),
          owner=st.sampled_from(["resources", "eliminator"]))
    def apply(self, i: int, nice: int | None, aff: tuple[int, ...] | None, owner: str) -> None:
        pid = self.procs[i].pid
        changes = []
        if nice is not None:
            changes.append(Change("nice", nice, pid=pid, owner=owner))
        if aff is not None:
            changes.append(Change("affinity", list(aff), pid=pid, owner=owner))
        if not changes:
            return
        handle = self.coord.apply_changes(changes)
        recorded = []
        for ch, res in zip(changes, handle.results):
            key = (pid, ch.knob)
            new = tuple(ch.new) if ch.knob == "affinity" else ch.new
            if new == self.current(key):
                assert res.status == "unchanged"
            else:
                assert res.status == "applied" and res.entry_id
                self.active[key].append((res.entry_id, new))
                recorded.append((key, res.entry_id))
        for _, eid in recorded:
            self.owners[eid] = owner
        if recorded:
            self.handles.append((handle, recorded))

    def _undo(self, eid: str, key: tuple[int, str]) -> None:
        self.active[key] = [(e, v) for e, v in self.active[key] if e != eid]

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def rollback_handle(self, data: st.DataObject) -> None:
        handle, recorded = self.handles.pop(data.draw(st.integers(0, len(self.handles) - 1)))
        handle.rollback()  # type: ignore[attr-defined]
        for key, eid in recorded:
            self._undo(eid, key)

    @rule(owner=st.sampled_from(["resources", "eliminator"]))
    def rollback_owner(self, owner: str) -> None:
        self.coord.rollback(owner=owner)
        owners = self.owners
        for key in self.active:
            for eid, _ in list(self.active[key]):
                if owners.get(eid) == owner:
                    self._undo(eid, key)
        self.handles = [(h, [(k, e) for k, e in rec if owners.get(e) != owner]) for h, rec in self.handles]
        self.handles = [(h, rec) for h, rec in self.handles if rec]

    @rule()
    def rollback_all_from_new_coordinator(self) -> None:
        ResourcePoolCoordinator(state_dir=self.dir).rollback()
        for key in self.active:
            self.active[key] = []
        self.handles = []

    @invariant()
    def kernel_matches_model(self) -> None:
        for (pid, knob), _ in self.active.items():
            if knob == "nice":
                assert os.getpriority(os.PRIO_PROCESS, pid) == self.current((pid, knob))
            else:
                assert tuple(sorted(os.sched_getaffinity(pid))) == self.current((pid, knob))

    @invariant()
    def journal_matches_model(self) -> None:
        want = sorted(e for changes in self.active.values() for e, _ in changes)
        assert sorted(e.id for e in self.coord.journal.active()) == want


JournalMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)
TestJournalMachine = JournalMachine.TestCase
