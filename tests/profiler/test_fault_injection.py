"""Real bottlenecks from child processes are detected with the right type and agent (bounded polls, no timing)."""

from __future__ import annotations

import os

import pytest

from sutazai_hwopt.profiler.faults import EXPECTED, FaultAgent, run_trial

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kinds", [["cpu", "starved"], ["memory"], ["io"], ["ctx"]])
def test_each_injected_fault_is_detected_with_its_type_and_agent(kinds: list[str]) -> None:
    """Each fault agent gets its expected finding; idle agents and inconsistent types stay (almost) absent."""
    r = run_trial(kinds, seed=0, idle=2, interval_s=0.5, baseline_passes=2, observe_passes=30,
                  stop_when_detected=True)
    assert set(r.faults.values()) == {EXPECTED[k] for k in kinds}
    missed = [a for a, t in r.time_to_detect.items() if t is None]
    assert not missed, f"not detected: {missed}; false findings: {r.false_findings}"
    assert not [f for f in r.false_findings if f[2].startswith("idle")], r.false_findings
    assert r.true_positives / (r.true_positives + r.false_positives) >= 0.9, r.false_findings


def test_fault_agents_leave_no_process_behind() -> None:
    """Stopping a fault agent kills the children it forked (the whole session)."""
    agent = FaultAgent("cpu", seed=1)
    agent.start()
    pgid = agent.pid
    agent.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_unknown_fault_kind_is_refused() -> None:
    """An unknown kind is an InvalidArgumentError before any process starts."""
    from sutazai_hwopt.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="kind must be one of"):
        FaultAgent("meltdown")
