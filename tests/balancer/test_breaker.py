"""CircuitBreaker: triggers, half-open probe limit, probe timeout, back-off, listeners, no lock across calls."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sutazai_hwopt.balancer import CircuitBreaker
from sutazai_hwopt.errors import CircuitOpenError, InvalidArgumentError
from sutazai_hwopt.testing import FakeClock


class Boom(Exception):
    pass


class NotMyFault(Boom):
    pass


def boom() -> None:
    raise Boom()


def trip(cb: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            cb.call(boom)


def test_consecutive_failures_open_and_reject() -> None:
    """N consecutive failures open the circuit; calls are then rejected without running."""
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=3, clock=clock)
    trip(cb, 2)
    assert cb.state == "closed"
    trip(cb, 1)
    assert cb.state == "open"
    ran = []
    with pytest.raises(CircuitOpenError):
        cb.call(lambda: ran.append(1))
    assert ran == []
    assert cb.metrics()["rejected"] == 1


def test_failure_rate_over_window_opens() -> None:
    """A failure rate at the threshold over the sliding window opens the circuit."""
    cb = CircuitBreaker(failure_threshold=100, failure_rate_threshold=0.5, window_size=10, min_calls=10,
                        clock=FakeClock())
    for i in range(9):
        if i % 2:
            trip(cb, 1)
        else:
            cb.call(lambda: None)
    assert cb.state == "closed"
    trip(cb, 1)
    assert cb.state == "open"


def test_excluded_and_uncounted_exceptions() -> None:
    """Excluded exceptions and ones outside failure_exceptions pass through without counting."""
    cb = CircuitBreaker(failure_threshold=1, exclude_exceptions=(NotMyFault,),
                        failure_exceptions=(Boom,), clock=FakeClock())

    def nmf() -> None:
        raise NotMyFault()

    def ke() -> None:
        raise KeyError("x")

    for f, e in ((nmf, NotMyFault), (ke, KeyError)):
        with pytest.raises(e):
            cb.call(f)
    assert cb.state == "closed"
    assert cb.metrics()["ignored"] == 2


def test_half_open_admits_at_most_k_probes() -> None:
    """Half-open lets at most k concurrent probes through; k successes... one success closes by default."""
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, half_open_max_calls=2, open_duration_s=1.0, clock=clock)
    trip(cb, 1)
    clock.advance(1.0)
    tokens = [cb.allow(), cb.allow()]
    for _ in range(20):
        with pytest.raises(CircuitOpenError):
            cb.allow()
    assert cb.metrics()["probes_in_flight"] == 2
    cb.record(tokens[0], False)
    assert cb.state == "closed"
    cb.record(tokens[1], False)
    assert cb.metrics()["probes_in_flight"] == 0


def test_probe_failure_reopens_for_longer() -> None:
    """A failed probe re-opens the circuit; open periods grow (1, 2, 4 s) up to the cap; a close resets."""
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, open_duration_s=1.0, backoff_multiplier=2.0,
                        max_open_duration_s=4.0, clock=clock)
    trip(cb, 1)
    periods = []
    for _ in range(4):
        t0 = clock()
        while cb.state == "open":
            clock.advance(0.5)
        periods.append(clock() - t0)
        trip(cb, 1)  # the probe fails
    assert periods == [1.0, 2.0, 4.0, 4.0]
    clock.advance(4.0)
    cb.call(lambda: None)
    assert cb.state == "closed"
    trip(cb, 1)
    t0 = clock()
    while cb.state == "open":
        clock.advance(0.5)
    assert clock() - t0 == 1.0


def test_probe_timeout_reopens() -> None:
    """A probe running past probe_timeout_s counts as failed; its late result is ignored."""
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, probe_timeout_s=2.0, clock=clock)
    trip(cb, 1)
    clock.advance(1.0)
    token = cb.allow()
    clock.advance(2.5)
    with pytest.raises(CircuitOpenError, match="probe exceeded"):
        cb.allow()
    assert cb.metrics()["state"] == "open"
    cb.record(token, False)  # the late success must not close it
    assert cb.metrics()["state"] == "open"


def test_async_probe_timeout_cancels() -> None:
    """An async half-open probe is cancelled at the probe timeout and counts as a failure."""
    clock = FakeClock()
    cb = CircuitBreaker(failure_threshold=1, probe_timeout_s=0.01, clock=clock)
    trip(cb, 1)
    clock.advance(1.0)

    async def slow() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await cb.call_async(slow)

    asyncio.run(main())
    assert cb.metrics()["state"] == "open"


def test_listeners_and_decorator() -> None:
    """Listeners see every transition in order; the decorator wraps sync and async functions."""
    clock = FakeClock()
    seen: list[tuple[str, str]] = []
    cb = CircuitBreaker(failure_threshold=1, clock=clock, listeners=(lambda b, o, n: seen.append((o, n)),))

    @cb
    def f(x: int) -> int:
        if x < 0:
            raise Boom()
        return x

    @cb
    async def g(x: int) -> int:
        return x * 2

    assert f(2) == 2
    with pytest.raises(Boom):
        f(-1)
    clock.advance(1.0)
    assert asyncio.run(g(3)) == 6
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_no_lock_held_across_the_call() -> None:
    """A call blocked inside the breaker does not block other callers (checked with events, not time)."""
    cb = CircuitBreaker()
    inside = threading.Event()
    release = threading.Event()
    other_done = threading.Event()

    def blocker() -> None:
        inside.set()
        assert release.wait(30)

    t1 = threading.Thread(target=cb.call, args=(blocker,))
    t1.start()
    assert inside.wait(30)
    t2 = threading.Thread(target=lambda: (cb.call(lambda: None), other_done.set()))
    t2.start()
    finished = other_done.wait(30)
    release.set()
    t1.join()
    t2.join()
    assert finished


def test_bad_arguments() -> None:
    """Bad breaker settings raise InvalidArgumentError naming the argument."""
    for kw in ({"failure_threshold": 0}, {"failure_rate_threshold": 1.5}, {"half_open_max_calls": 0},
               {"min_calls": 50, "window_size": 10}, {"exclude_exceptions": [KeyError]},
               {"backoff_multiplier": 0.5}):
        with pytest.raises(InvalidArgumentError, match=next(iter(kw))):
            CircuitBreaker(**kw)  # type: ignore[arg-type]
