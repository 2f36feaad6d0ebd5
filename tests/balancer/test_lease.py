"""Leases: in-flight counts return to zero after any mix of outcomes, exceptions and cancellations."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.errors import NoBackendAvailableError, StateError
from sutazai_hwopt.testing import FakeClock

ACTIONS = st.lists(st.sampled_from(["ok", "fail", "raise", "cancel", "mark_fail", "ignore", "manual"]),
                   min_size=1, max_size=40)


def make(algorithm: str = "adaptive") -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(algorithm=algorithm, clock=FakeClock(), seed=5)
    for i in range(3):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i, max_connections=4))
    return lb


class Boom(Exception):
    pass


@settings(max_examples=40, deadline=None)
@given(ACTIONS, st.sampled_from(["adaptive", "round_robin", "p2c_ewma", "latency_predicting"]))
def test_async_leases_never_leak(actions: list[str], algorithm: str) -> None:
    """Concurrent async leases with successes, failures, exceptions and cancellations leave zero in flight."""
    lb = make(algorithm)

    async def one(action: str, gate: asyncio.Event) -> None:
        try:
            async with lb.lease(wait_timeout=5.0) as backend:
                assert lb.in_flight(backend.service_id) >= 1
                if action == "cancel":
                    await gate.wait()  # cancelled here
                await asyncio.sleep(0)
                if action == "raise":
                    raise Boom()
        except (Boom, NoBackendAvailableError):
            pass

    async def main() -> None:
        gate = asyncio.Event()
        tasks = [asyncio.ensure_future(one(a, gate)) for a in actions]
        for _ in range(5):
            await asyncio.sleep(0)
        for t, a in zip(tasks, actions):
            if a == "cancel":
                t.cancel()
        gate.set()  # a "cancel" task that only got its backend after the cancellations finishes normally
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    assert lb.in_flight() == 0


@settings(max_examples=40, deadline=None)
@given(ACTIONS)
def test_sync_leases_and_manual_calls_never_leak(actions: list[str]) -> None:
    """Sync leases and manual select/record pairs, in any mix, leave zero in flight."""
    lb = make()
    for a in actions:
        if a == "manual":
            s = lb.select_backend_sync()
            lb.record_result(s.service_id, 0.01, True)
            continue
        try:
            with lb.lease() as backend:
                assert lb.in_flight(backend.service_id) == 1
                if a == "raise":
                    raise Boom()
                if a == "cancel":
                    raise asyncio.CancelledError()
                if a == "mark_fail":
                    pass
        except (Boom, asyncio.CancelledError):
            pass
    assert lb.in_flight() == 0


def test_cancellation_is_not_counted_as_failure() -> None:
    """A cancelled request releases its slot without counting an error against the backend."""
    lb = make()

    async def main() -> None:
        async def hold() -> None:
            async with lb.lease():
                await asyncio.sleep(3600)

        t = asyncio.ensure_future(hold())
        await asyncio.sleep(0)
        assert lb.in_flight() == 1
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert lb.in_flight() == 0
    assert sum(b["errors"] for b in lb.analytics()["backends"].values()) == 0


def test_mark_failure_and_ignore() -> None:
    """mark_failure counts an error on normal exit; ignore() releases without counting anything."""
    lb = make("round_robin")
    lease = lb.lease()
    with lease as b:
        lease.mark_failure()
    assert lb.analytics()["backends"][b.service_id]["errors"] == 1
    lease2 = lb.lease()
    with lease2 as b2:
        lease2.ignore()
    assert lb.analytics()["backends"][b2.service_id]["requests"] == 0
    assert lb.in_flight() == 0


def test_lease_enter_twice_is_an_error() -> None:
    """Entering a lease twice raises StateError and leaks nothing."""
    lb = make()
    lease = lb.lease()
    with lease, pytest.raises(StateError), lease:
        pass
    assert lb.in_flight() == 0


def test_cancel_while_waiting_holds_nothing() -> None:
    """A caller cancelled while waiting for a free backend holds no slot."""
    lb = DynamicLoadBalancer(clock=FakeClock())
    lb.register_service(BackendService(service_id="only", port=8000, max_connections=1))

    async def main() -> None:
        first = await lb.select_backend()
        waiter = asyncio.ensure_future(lb.select_backend(wait_timeout=60))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        lb.record_result(first.service_id, 0.01, True)

    asyncio.run(main())
    assert lb.in_flight() == 0
