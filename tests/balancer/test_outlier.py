"""Passive outlier ejection, growing back-off, half-open probes, active-check gating and panic threshold."""

from __future__ import annotations

import pytest

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.config import BalancerSection
from sutazai_hwopt.errors import NoBackendAvailableError
from sutazai_hwopt.testing import FakeClock


def make(n: int, clock: FakeClock, **cfg: object) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(BalancerSection(**cfg), algorithm="round_robin", clock=clock)  # type: ignore[arg-type]
    for i in range(n):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i))
    return lb


def fail_on(lb: DynamicLoadBalancer, sid: str, times: int) -> None:
    """Route until ``sid`` is chosen ``times`` times, failing it and succeeding others."""
    done = 0
    while done < times:
        s = lb.select_backend_sync()
        ok = s.service_id != sid
        lb.record_result(s.service_id, 0.01, ok)
        done += not ok


def test_consecutive_failures_eject_with_growing_backoff() -> None:
    """Consecutive failures eject; each re-ejection lasts longer (1 s, 2 s, 4 s), capped."""
    clock = FakeClock()
    lb = make(4, clock, consecutive_failures=3, base_ejection_s=1.0, max_ejection_s=3.0)
    fail_on(lb, "b1", 3)
    assert lb.state_of("b1") == "ejected"
    lengths = []
    for _ in range(4):
        t0 = clock()
        while lb.state_of("b1") == "ejected":
            clock.advance(0.25)
        lengths.append(clock() - t0)
        assert lb.state_of("b1") == "probing"
        fail_on(lb, "b1", 1)  # the probe fails: ejected again, for longer
        assert lb.state_of("b1") == "ejected"
    assert lengths == [1.0, 2.0, 3.0, 3.0]


def test_no_requests_while_ejected_and_at_most_k_probes() -> None:
    """An ejected backend gets no request; half-open it admits at most k probes; a success re-admits it."""
    clock = FakeClock()
    lb = make(3, clock, half_open_probes=2)
    fail_on(lb, "b0", 2)
    assert lb.state_of("b0") == "ejected"
    for _ in range(30):
        s = lb.select_backend_sync()
        assert s.service_id != "b0"
        lb.record_result(s.service_id, 0.01, True)
    clock.advance(1.0)
    held = [lb.select_backend_sync().service_id for _ in range(30)]
    assert held.count("b0") == 2
    for sid in held:
        if sid != "b0":
            lb.record_result(sid, 0.01, True)
    lb.record_result("b0", 0.01, True)
    assert lb.state_of("b0") == "healthy"
    lb.record_result("b0", 0.01, True)
    assert lb.in_flight() == 0


def test_failure_rate_window_ejects() -> None:
    """A failure rate at the threshold over the window ejects even without consecutive failures."""
    clock = FakeClock()
    lb = make(1, clock, consecutive_failures=100, failure_window=10, failure_min_requests=10,
              failure_rate_threshold=0.5, max_ejection_percent=100.0)
    for i in range(10):
        s = lb.select_backend_sync()
        lb.record_result(s.service_id, 0.01, i % 2 == 0)
    assert lb.state_of("b0") == "ejected"
    with pytest.raises(NoBackendAvailableError):
        lb.select_backend_sync()


def test_panic_threshold_caps_ejections() -> None:
    """No more than max_ejection_percent of backends are ejected, even if all fail."""
    clock = FakeClock()
    lb = make(4, clock, max_ejection_percent=50.0)
    for _ in range(40):
        s = lb.select_backend_sync()
        lb.record_result(s.service_id, 0.01, False)
    states = [lb.state_of(f"b{i}") for i in range(4)]
    assert states.count("ejected") == 2
    lb.select_backend_sync()


def test_active_checks_gate_readmission() -> None:
    """While active checks fail, an expired ejection is extended; once they pass, it comes back early."""
    clock = FakeClock()
    lb = make(3, clock, healthy_threshold=2, unhealthy_threshold=3)
    fail_on(lb, "b2", 2)
    lb.report_health("b2", False)
    clock.advance(1.5)
    assert lb.state_of("b2") == "ejected"  # the timer expired, but the check still fails
    lb.report_health("b2", True)
    assert lb.state_of("b2") == "ejected"
    lb.report_health("b2", True)
    assert lb.state_of("b2") == "probing"
    s = [lb.select_backend_sync().service_id for _ in range(3)]
    assert "b2" in s
    for sid in s:
        lb.record_result(sid, 0.01, True)
    assert lb.state_of("b2") == "healthy"


def test_unhealthy_by_checks_gets_no_traffic() -> None:
    """unhealthy_threshold failing checks take a backend out; healthy_threshold passes bring it back."""
    clock = FakeClock()
    lb = make(2, clock, healthy_threshold=2, unhealthy_threshold=2)
    lb.report_health("b0", False)
    assert lb.state_of("b0") == "healthy"
    lb.report_health("b0", False)
    assert lb.state_of("b0") == "unhealthy"
    assert {lb.select_backend_sync().service_id for _ in range(4)} == {"b1"}
    lb.report_health("b0", True)
    lb.report_health("b0", True)
    assert lb.state_of("b0") == "healthy"



@pytest.mark.parametrize("reference", [False, True])
def test_streak_rule_ejects_despite_queued_successes(reference: bool) -> None:
    """Successes of requests sent before a failure streak began do not reset it: two fresh failures eject."""
    clock = FakeClock()
    lb = DynamicLoadBalancer(BalancerSection(consecutive_failures=2, max_ejection_percent=100.0),
                             algorithm="round_robin", clock=clock, reference=reference)
    lb.register_service(BackendService(service_id="a", port=8001))
    for _ in range(3):  # queued at t=0
        lb.select_backend_sync()
    clock.advance(1.0)
    lb.select_backend_sync()  # sent at t=1, fails fast: the streak starts
    clock.advance(0.001)
    lb.record_result("a", 0.001, False)
    lb.record_result("a", 1.001, True)  # sent at t=0, before the streak: does not end it
    lb.record_result("a", 1.001, True)
    assert lb.state_of("a") == "healthy"
    lb.select_backend_sync()
    clock.advance(0.001)
    lb.record_result("a", 0.001, False)
    assert lb.state_of("a") == "ejected"
    lb.record_result("a", 1.002, True)  # the last queued answer arrives late; ejection stands
    assert lb.in_flight() == 0


def test_success_sent_after_the_first_failure_ends_the_streak() -> None:
    """The streak is kept across older successes and ended by one sent at or after its first failure."""
    from sutazai_hwopt.balancer.state import Backend

    b = Backend(BackendService(service_id="x", port=8001), 0)
    b.record_outcome(1, 32, 5.0)
    b.record_outcome(0, 32, 4.0)
    assert b.consecutive == 1
    b.record_outcome(1, 32, 5.2)
    assert b.consecutive == 2
    b.record_outcome(0, 32, 5.0)
    assert b.consecutive == 0
    b.record_outcome(0, 32)  # no send time given: a success always resets (old behaviour)
    b.record_outcome(1, 32)
    b.record_outcome(0, 32)
    assert b.consecutive == 0
