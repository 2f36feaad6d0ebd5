"""CircuitBreaker: closed / open / half-open, usable on its own from threads and from asyncio.

State machine as in Nygard, "Release It!" (2007, ch. 5) with the triggers and half-open limits of
Resilience4j's ``CircuitBreaker``: it opens on ``failure_threshold`` consecutive failures or on a failure
rate >= ``failure_rate_threshold`` over the last ``window_size`` calls (once ``min_calls`` are in the window);
after the open duration it admits at most ``half_open_max_calls`` probes; ``success_threshold`` probe
successes close it, one probe failure (or a probe running past ``probe_timeout_s``) re-opens it for a longer
time (``open_duration_s x backoff_multiplier^k``, capped).

The lock only guards the bookkeeping before and after the protected call, never the call itself, so
concurrent callers run in parallel (pybreaker holds its lock across the call; see benches/bench_balancer.py).
Listeners run outside the lock.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..errors import CircuitOpenError, InvalidArgumentError

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

_T = TypeVar("_T")
_CLOSED_TOKEN = 0
Listener = Callable[["CircuitBreaker", str, str], None]


def _check(name: str, value: Any, lo: float, hi: float = math.inf, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise InvalidArgumentError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}")


class CircuitBreaker:
    """A circuit breaker that never holds its lock across the protected call.

    Args:
        name: shown in errors, logs and metrics.
        failure_threshold: consecutive failures that open the circuit.
        failure_rate_threshold: failure share (0..1] of the window that opens it.
        window_size: calls in the sliding window; ``min_calls`` needed before the rate counts.
        open_duration_s: first open period; each re-open multiplies it by ``backoff_multiplier`` up to
            ``max_open_duration_s``; a close resets it.
        half_open_max_calls: probes admitted at once while half-open (k).
        success_threshold: probe successes that close the circuit.
        probe_timeout_s: a probe running longer counts as failed (async calls are also cancelled).
        failure_exceptions: exception types that count as failures (others pass through, not counted).
        exclude_exceptions: subclasses of those that are not failures (e.g. a 404 error type).
        clock: monotonic seconds (``FakeClock`` in tests).
        listeners: ``f(breaker, old_state, new_state)`` called after each state change.

    Example:
        >>> cb = CircuitBreaker(failure_threshold=2)
        >>> cb.call(lambda: 42)
        42
        >>> cb.state
        'closed'
    """

    def __init__(self, name: str = "breaker", *, failure_threshold: int = 5, failure_rate_threshold: float = 0.5,
                 window_size: int = 20, min_calls: int = 10, open_duration_s: float = 1.0,
                 max_open_duration_s: float = 60.0, backoff_multiplier: float = 2.0,
                 half_open_max_calls: int = 1, success_threshold: int = 1, probe_timeout_s: float | None = None,
                 failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
                 exclude_exceptions: tuple[type[BaseException], ...] = (),
                 clock: Callable[[], float] | None = None, listeners: tuple[Listener, ...] = ()) -> None:
        _check("failure_threshold", failure_threshold, 1, integer=True)
        _check("failure_rate_threshold", failure_rate_threshold, 0.0, 1.0)
        if failure_rate_threshold == 0.0:
            raise InvalidArgumentError("failure_rate_threshold must be > 0 (0 would open on any call)")
        _check("window_size", window_size, 1, integer=True)
        _check("min_calls", min_calls, 1, window_size, integer=True)
        _check("open_duration_s", open_duration_s, 0.0)
        _check("max_open_duration_s", max_open_duration_s, open_duration_s)
        _check("backoff_multiplier", backoff_multiplier, 1.0)
        _check("half_open_max_calls", half_open_max_calls, 1, integer=True)
        _check("success_threshold", success_threshold, 1, integer=True)
        if probe_timeout_s is not None:
            _check("probe_timeout_s", probe_timeout_s, 0.0)
        for label, excs in (("failure_exceptions", failure_exceptions), ("exclude_exceptions", exclude_exceptions)):
            if not isinstance(excs, tuple) or not all(isinstance(e, type) and issubclass(e, BaseException)
                                                      for e in excs):
                raise InvalidArgumentError(f"{label} must be a tuple of exception types, got {excs!r}")
        self.name = name
        self._fail_n = failure_threshold
        self._rate = failure_rate_threshold
        self._win = window_size
        self._min = min_calls
        self._open_s = open_duration_s
        self._max_open_s = max_open_duration_s
        self._mult = backoff_multiplier
        self._k = half_open_max_calls
        self._succ_n = success_threshold
        self._probe_timeout = probe_timeout_s
        self._fail_exc = failure_exceptions
        self._excl_exc = exclude_exceptions
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._listeners: list[Listener] = list(listeners)
        self._lock = threading.Lock()
        self._state = CLOSED
        self._ring: list[int] = []
        self._ring_i = 0
        self._ring_fails = 0
        self._consecutive = 0
        self._open_until = 0.0
        self._opens_in_row = 0
        self._probes: dict[int, float] = {}
        self._probe_ok = 0
        self._ids = itertools.count(1)
        self._m = {"calls": 0, "successes": 0, "failures": 0, "rejected": 0, "ignored": 0, "opened": 0,
                   "half_opened": 0, "closed": 0, "probe_timeouts": 0}

    # ------------------------------------------------------------------------------------------- state
    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (an open circuit whose time is up reads ``half_open``)."""
        s = self._state
        if s == OPEN and self._clock() >= self._open_until:
            return HALF_OPEN
        return s

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(breaker, old, new)`` after every state change."""
        self._listeners.append(listener)

    def metrics(self) -> dict[str, Any]:
        """Counters, the current state, the window's failure rate and the in-flight probes."""
        with self._lock:
            m: dict[str, Any] = dict(self._m)
            m["state"] = self._state
            m["failure_rate"] = self._ring_fails / len(self._ring) if self._ring else 0.0
            m["probes_in_flight"] = len(self._probes)
            m["open_until"] = self._open_until
        return m

    def _to(self, new: str, events: list[tuple[str, str]]) -> None:
        old = self._state
        self._state = new
        events.append((old, new))

    def _fire(self, events: list[tuple[str, str]]) -> None:
        for old, new in events:
            for f in list(self._listeners):
                f(self, old, new)

    def _open(self, now: float, events: list[tuple[str, str]]) -> None:
        dur = min(self._open_s * self._mult ** self._opens_in_row, self._max_open_s)
        self._opens_in_row += 1
        self._open_until = now + dur
        self._probes.clear()
        self._probe_ok = 0
        self._ring.clear()
        self._ring_i = self._ring_fails = self._consecutive = 0
        self._m["opened"] += 1
        self._to(OPEN, events)

    # ---------------------------------------------------------------------------------- admit / outcome
    def allow(self) -> int:
        """Admit one call or raise :class:`CircuitOpenError`; returns a token for :meth:`record`.

        Low-level: :meth:`call`, :meth:`call_async` and the decorator use it for you.
        """
        with self._lock:  # fast path: closed
            if self._state is CLOSED:
                self._m["calls"] += 1
                return _CLOSED_TOKEN
        events: list[tuple[str, str]] = []
        try:
            with self._lock:
                if self._state == CLOSED:
                    self._m["calls"] += 1
                    return _CLOSED_TOKEN
                now = self._clock()
                if self._state == OPEN:
                    if now < self._open_until:
                        self._m["rejected"] += 1
                        raise CircuitOpenError(f"circuit {self.name!r} is open for another "
                                               f"{self._open_until - now:.3g} s")
                    self._probes.clear()
                    self._probe_ok = 0
                    self._m["half_opened"] += 1
                    self._to(HALF_OPEN, events)
                if self._probe_timeout is not None:
                    late = [t for t, t0 in self._probes.items() if now - t0 > self._probe_timeout]
                    if late:
                        self._m["probe_timeouts"] += len(late)
                        self._m["failures"] += 1
                        self._open(now, events)
                        self._m["rejected"] += 1
                        raise CircuitOpenError(f"circuit {self.name!r} re-opened: a probe exceeded "
                                               f"{self._probe_timeout} s")
                if len(self._probes) >= self._k:
                    self._m["rejected"] += 1
                    raise CircuitOpenError(f"circuit {self.name!r} is half-open with {len(self._probes)} of "
                                           f"{self._k} probes in flight")
                token = next(self._ids)
                self._probes[token] = now
                self._m["calls"] += 1
                return token
        finally:
            if events:
                self._fire(events)

    def record(self, token: int, failed: bool | None) -> None:
        """Outcome of an admitted call: ``True`` failed, ``False`` succeeded, ``None`` not counted."""
        if failed is False and token == _CLOSED_TOKEN:  # fast path: a success while closed
            with self._lock:
                self._m["successes"] += 1
                if self._state is CLOSED:
                    self._consecutive = 0
                    ring = self._ring
                    if len(ring) < self._win:
                        ring.append(0)
                    else:
                        i = self._ring_i
                        self._ring_fails -= ring[i]
                        ring[i] = 0
                        self._ring_i = (i + 1) % self._win
            return
        events: list[tuple[str, str]] = []
        with self._lock:
            m = self._m
            if failed is None:
                m["ignored"] += 1
                self._probes.pop(token, None)
            elif token != _CLOSED_TOKEN:
                if self._probes.pop(token, None) is not None:  # a live probe of the current half-open spell
                    if failed:
                        m["failures"] += 1
                        self._open(self._clock(), events)
                    else:
                        m["successes"] += 1
                        self._probe_ok += 1
                        if self._probe_ok >= self._succ_n:
                            self._opens_in_row = 0
                            self._probes.clear()
                            m["closed"] += 1
                            self._to(CLOSED, events)
                else:
                    m["failures" if failed else "successes"] += 1
            else:
                m["failures" if failed else "successes"] += 1
                if self._state == CLOSED:  # results arriving while open/half-open say nothing new
                    f = 1 if failed else 0
                    ring = self._ring
                    if len(ring) < self._win:
                        ring.append(f)
                        self._ring_fails += f
                    else:
                        i = self._ring_i
                        self._ring_fails += f - ring[i]
                        ring[i] = f
                        self._ring_i = (i + 1) % self._win
                    if f:
                        self._consecutive += 1
                        if (self._consecutive >= self._fail_n or (
                                len(ring) >= self._min and self._ring_fails >= self._rate * len(ring))):
                            self._open(self._clock(), events)
                    else:
                        self._consecutive = 0
        if events:
            self._fire(events)

    def _classify(self, exc: BaseException) -> bool | None:
        if isinstance(exc, self._excl_exc) or not isinstance(exc, self._fail_exc):
            return None
        return True

    # ------------------------------------------------------------------------------------------ calling
    def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn(*args, **kwargs)`` through the breaker (no lock is held while it runs)."""
        token = self.allow()
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            self.record(token, self._classify(e))
            raise
        self.record(token, False)
        return result

    async def call_async(self, fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        """Await ``fn(*args, **kwargs)`` through the breaker; a half-open probe is bounded by the probe timeout."""
        token = self.allow()
        try:
            if token != _CLOSED_TOKEN and self._probe_timeout is not None:
                result = await asyncio.wait_for(fn(*args, **kwargs), timeout=self._probe_timeout)
            else:
                result = await fn(*args, **kwargs)
        except BaseException as e:
            self.record(token, self._classify(e))
            raise
        self.record(token, False)
        return result

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator for sync or async functions."""
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(fn, *args, **kwargs)
            return awrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)
        return wrapper
