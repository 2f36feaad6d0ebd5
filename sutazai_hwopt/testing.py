"""Helpers for testing code that uses sutazai_hwopt (and for the library's own tests).

* :class:`FakeClock` — a monotonic clock you advance by hand; every component that takes ``clock=`` accepts it,
  so TTLs, health checks, back-offs and windows can be tested without sleeping.
"""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A manual monotonic clock in seconds: ``clock()`` reads it, ``advance(dt)`` moves it forward.

    Example:
        >>> clock = FakeClock(start=100.0)
        >>> clock.advance(2.5)
        102.5
        >>> clock()
        102.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (never backward) and return the new time."""
        if not seconds >= 0:
            from .errors import InvalidArgumentError

            raise InvalidArgumentError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now
