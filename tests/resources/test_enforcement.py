"""Plans and journaled changes reach the kernel and are rolled back, also after the applier is SIGKILLed."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest

from sutazai_hwopt import errors
from sutazai_hwopt.config import HardwareConfig
from sutazai_hwopt.resources import Change, ResourcePoolCoordinator

# Restoring a lowered priority (and lowering one) needs CAP_SYS_NICE.
pytestmark = pytest.mark.root

CPUS = sorted(os.sched_getaffinity(0))


def test_plan_applied_and_rolled_back(coord, spawn, kstate):
    """A plan sets affinity, nice and policy as the kernel reports them; rollback restores the old values."""
    procs = [spawn() for _ in range(4)]
    before = {p.pid: kstate(p.pid) for p in procs}
    for i, p in enumerate(procs):
        coord.register_agent(f"agent_{i}", {"cpu_cores": 1, "priority": [9, 6, 3, 0][i]}, pid=p.pid)
    plan = coord.rebalance_resources(strategy="priority")
    assert plan.applied and plan.txn
    for i, p in enumerate(procs):
        placement = plan.placements[f"agent_{i}"]
        aff, nice, _ = kstate(p.pid)
        assert aff == placement.cpus
        assert nice == plan.settings[f"agent_{i}"].nice
    # Higher priority -> lower nice; the top agent got its own core on a multi-core host.
    nices = [kstate(p.pid)[1] for p in procs]
    assert nices == sorted(nices)
    if len(CPUS) > 1:
        assert plan.placements["agent_0"].exclusive
        for i in (1, 2, 3):
            assert not plan.placements[f"agent_{i}"].cpus & plan.placements["agent_0"].cpus
    assert coord.agent("agent_0").cpus == plan.placements["agent_0"].cpus
    coord.rollback()
    assert {p.pid: kstate(p.pid) for p in procs} == before


def test_scheduler_policy_batch_and_idle(state_dir, spawn, kstate):
    """scheduler_policy SCHED_BATCH is applied; agents at or below idle_priority_max get SCHED_IDLE."""
    cfg = HardwareConfig(scheduler_policy="SCHED_BATCH", idle_priority_max=1)
    c = ResourcePoolCoordinator(cfg, state_dir=state_dir)
    busy, idle = spawn(), spawn()
    c.register_agent("busy", {"priority": 5}, pid=busy.pid)
    c.register_agent("idle", {"priority": 1}, pid=idle.pid)
    c.rebalance_resources(strategy="priority")
    assert kstate(busy.pid)[2] == os.SCHED_BATCH
    assert kstate(idle.pid)[2] == os.SCHED_IDLE
    import psutil

    assert psutil.Process(idle.pid).ionice().ioclass == psutil.IOPRIO_CLASS_IDLE
    c.rollback()
    assert kstate(busy.pid)[2] == kstate(idle.pid)[2] == os.SCHED_OTHER
    assert psutil.Process(idle.pid).ionice().ioclass == psutil.IOPRIO_CLASS_NONE


def test_dry_run_touches_nothing(coord, spawn, kstate):
    """rebalance(dry_run=True) and apply(plan, dry_run=True) report the plan and change nothing."""
    p = spawn()
    before = kstate(p.pid)
    coord.register_agent("a", {"priority": 0}, pid=p.pid)
    plan = coord.rebalance_resources(strategy="priority", dry_run=True)
    assert not plan.applied and plan.knob_status()["nice"] == {"planned": 1}
    buf = io.StringIO()
    coord.apply(plan, dry_run=True, file=buf)
    assert "plan (priority)" in buf.getvalue() and str(p.pid) in buf.getvalue()
    assert kstate(p.pid) == before
    assert coord.journal.active() == []


def test_rollback_after_kill9_of_applier(state_dir, spawn, kstate):
    """A child applies a plan and is SIGKILLed; a new coordinator's rollback() restores the old values."""
    target = spawn()
    before = kstate(target.pid)
    code = textwrap.dedent(f"""
        import os, signal
        from sutazai_hwopt.resources import ResourcePoolCoordinator
        c = ResourcePoolCoordinator(state_dir={state_dir!r})
        c.register_agent("victim", {{"cpu_cores": 1, "priority": 1}}, pid={target.pid})
        c.rebalance_resources(strategy="priority")
        print("applied", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=120)
    assert out.strip() == b"applied" and child.returncode == -9
    assert kstate(target.pid)[1] != before[1]  # nice moved: the plan really landed
    fresh = ResourcePoolCoordinator(state_dir=state_dir)
    results = fresh.rollback()
    assert results and all(r.status == "restored" for r in results)
    assert kstate(target.pid) == before
    assert fresh.journal.active() == []


def test_kill9_between_intent_and_commit(state_dir, spawn, kstate):
    """Killed after journaling but mid-write (no commit): rollback restores whatever was written."""
    target = spawn()
    before = kstate(target.pid)
    code = textwrap.dedent(f"""
        import os, signal
        from sutazai_hwopt.resources import ResourcePoolCoordinator, Change
        from sutazai_hwopt.resources.knobs import NiceKnob
        class DieAfterWrite(NiceKnob):
            name = "nice"
            def write(self, proc, path, value):
                super().write(proc, path, value)
                os.kill(os.getpid(), signal.SIGKILL)
        c = ResourcePoolCoordinator(state_dir={state_dir!r})
        c.transactor.knobs["nice"] = DieAfterWrite()
        c.apply_changes([Change("affinity", [{CPUS[0]}], pid={target.pid}),
                         Change("nice", 7, pid={target.pid}), Change("ionice", {{"class": "IDLE"}}, pid={target.pid})])
    """)
    child = spawn([sys.executable, "-c", code])
    assert child.wait(timeout=120) == -9
    assert kstate(target.pid)[1] == 7
    entries = ResourcePoolCoordinator(state_dir=state_dir).journal.active()
    assert [e.knob for e in entries] == ["affinity", "nice", "ionice"] and not any(e.committed for e in entries)
    ResourcePoolCoordinator(state_dir=state_dir).rollback()
    assert kstate(target.pid) == before


def test_half_failed_transaction_rolls_back_whole(coord, spawn, kstate):
    """When a later write fails, the earlier writes of the same transaction are undone and the error raised."""
    from sutazai_hwopt.resources.knobs import IoniceKnob

    class Refuses(IoniceKnob):
        def write(self, proc, path, value):
            raise PermissionError(1, "Operation not permitted")

    coord.transactor.knobs["ionice"] = Refuses()
    p = spawn()
    before = kstate(p.pid)
    with pytest.raises(errors.KernelPermissionError, match="ionice") as info:
        coord.apply_changes([Change("nice", 9, pid=p.pid), Change("affinity", [CPUS[-1]], pid=p.pid),
                             Change("ionice", {"class": "BE", "value": 7}, pid=p.pid)])
    assert "whole transaction (3 change(s)) was rolled back" in str(info.value)
    assert kstate(p.pid) == before
    assert coord.journal.active() == []


def test_kernel_permission_denied_is_reported(spawn, kstate):
    """Unprivileged: kernel EPERM raises KernelPermissionError, state intact; foreign pids are 'not permitted'."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start the unprivileged child")
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="hwopt-nobody-")
    os.chown(d, 65534, 65534)
    try:
        _run_as_nobody(d, spawn)
    finally:
        shutil.rmtree(d)


def _run_as_nobody(d, spawn):
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        # Import everything first: the interpreter's files may not be readable by nobody.
        import psutil, uuid, json, fcntl
        from sutazai_hwopt import errors
        from sutazai_hwopt.resources import ResourcePoolCoordinator, Change
        from sutazai_hwopt.resources import planning, strategies, cgroups_plan, verify
        topo = __import__("sutazai_hwopt.resources.topology", fromlist=["x"]).read_topology()
        os.setgid(65534); os.setuid(65534)
        p = subprocess.Popen(["sleep", "600"])
        try:
            c = ResourcePoolCoordinator(state_dir={d!r}, topology=topo)
            c.apply_changes([Change("nice", 5, pid=p.pid)])
            try:
                c.apply_changes([Change("affinity", [{CPUS[0]}], pid=p.pid), Change("nice", -5, pid=p.pid)])
                print("no error")
            except errors.KernelPermissionError as exc:
                ok = os.getpriority(os.PRIO_PROCESS, p.pid) == 5 and len(os.sched_getaffinity(p.pid)) == {len(CPUS)}
                print("denied", ok, "nice=-5" in str(exc))
            # A root-owned process: affinity is reported "not permitted" before anything is tried.
            h = c.apply_changes([Change("affinity", [{CPUS[0]}], pid=1)])
            print(h.results[0].status.replace(" ", "_"))
        finally:
            p.kill(); p.wait()
    """)
    child = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=d,
                  env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    out, _ = child.communicate(timeout=120)
    assert out.decode().split() == ["denied", "True", "True", "not_permitted"]


def test_dead_pid_in_change_set_touches_nothing(coord, spawn, kstate):
    """A change set naming an exited pid raises NotFoundError before anything is written."""
    live, dead = spawn(), spawn(["true"])
    dead.wait()
    before = kstate(live.pid)
    with pytest.raises(errors.NotFoundError, match=str(dead.pid)):
        coord.apply_changes([Change("nice", 3, pid=live.pid), Change("nice", 3, pid=dead.pid)])
    assert kstate(live.pid) == before


@pytest.mark.parametrize(("change", "match"), [
    (Change("nice", 25), "nice"),
    (Change("affinity", []), "affinity"),
    (Change("sched_policy", "SCHED_FIFO"), "real-time"),
    (Change("ionice", {"class": "XX"}), "class"),
    (Change("no_such_knob", 1), "unknown"),
])
def test_bad_change_values_leave_settings(coord, spawn, kstate, change, match):
    """Invalid knob values raise InvalidArgumentError and leave the earlier applied settings intact."""
    p = spawn()
    coord.apply_change(Change("nice", 4, pid=p.pid))
    before = kstate(p.pid)
    bad = Change(change.knob, change.new, pid=p.pid)
    with pytest.raises(errors.InvalidArgumentError, match=match):
        coord.apply_changes([Change("nice", 6, pid=p.pid), bad])
    assert kstate(p.pid) == before


def test_handle_rolls_back_only_its_change(coord, spawn, kstate):
    """A handle undoes its own change; a later change on the same knob wins and inherits the old value."""
    p = spawn()
    n0 = kstate(p.pid)[1]
    first = coord.apply_change(Change("nice", 3, pid=p.pid, owner="eliminator"))
    aff = coord.apply_change(Change("affinity", [CPUS[0]], pid=p.pid))
    second = coord.apply_change(Change("nice", 6, pid=p.pid))
    assert [r.status for r in first.rollback()] == ["superseded"]
    assert kstate(p.pid)[1] == 6 and kstate(p.pid)[0] == {CPUS[0]}
    second.rollback()
    assert kstate(p.pid)[1] == n0  # the original, not the superseded 3
    aff.rollback()
    assert kstate(p.pid)[0] == frozenset(CPUS)
    assert coord.journal.active() == []


def test_rollback_by_owner(coord, spawn, kstate):
    """rollback(owner=...) undoes one component's changes and keeps the others'."""
    p = spawn()
    coord.apply_change(Change("nice", 2, pid=p.pid, owner="resources"))
    coord.apply_change(Change("affinity", [CPUS[-1]], pid=p.pid, owner="eliminator"))
    coord.rollback(owner="eliminator")
    assert kstate(p.pid)[0] == frozenset(CPUS) and kstate(p.pid)[1] == 2


def test_rollback_skips_exited_process(coord, spawn):
    """Changes on a process that exited are dropped as 'process gone', not written to a reused pid."""
    p = spawn()
    coord.apply_change(Change("nice", 5, pid=p.pid))
    p.kill()
    p.wait()
    assert [r.status for r in coord.rollback()] == ["process gone"]


def test_unchanged_values_are_not_journaled(coord, spawn, kstate):
    """Setting a knob to the value it already has writes nothing to the journal."""
    p = spawn()
    h = coord.apply_change(Change("nice", kstate(p.pid)[1], pid=p.pid))
    assert h.results[0].status == "unchanged" and h.txn is None and coord.journal.active() == []


def test_thp_knob_only_for_calling_process(coord, spawn):
    """THP for another pid is reported 'not available'; the prctl works for the calling process itself."""
    p = spawn()
    h = coord.apply_change(Change("thp_disabled", True, pid=p.pid))
    assert h.results[0].status == "not available" and "calling process" in h.results[0].reason
    code = ("from sutazai_hwopt.resources import set_thp_disabled as s\n"
            "prev = s(True); now = s(prev); print(prev, now)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120).stdout
    assert out.split() == [b"False", b"True"]


def test_journal_is_private(coord, spawn):
    """The state directory is 0700 and the journal file 0600."""
    coord.apply_change(Change("nice", 1, pid=spawn().pid))
    assert os.stat(coord.journal.dir).st_mode & 0o777 == 0o700
    assert os.stat(coord.journal.path).st_mode & 0o777 == 0o600


def test_compaction_merges_plan_changes(coord, spawn, kstate):
    """compact() merges successive plan changes of one setting, keeps other owners' apart, and still restores."""
    p = spawn()
    before = kstate(p.pid)
    for n in (1, 2, 3):
        coord.apply_change(Change("nice", n, pid=p.pid))
    coord.apply_change(Change("affinity", [CPUS[0]], pid=p.pid, owner="eliminator"))
    coord.apply_change(Change("affinity", [CPUS[-1]], pid=p.pid, owner="eliminator"))
    assert coord.journal.compact() == 3
    nice = [e for e in coord.journal.active() if e.knob == "nice"]
    assert [(e.previous, e.new) for e in nice] == [(before[1], 3)]
    coord.rollback()
    assert kstate(p.pid) == before
