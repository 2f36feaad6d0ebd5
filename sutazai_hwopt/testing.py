"""Helpers for testing code that uses sutazai_hwopt (and for the library's own tests).

* :class:`FakeClock` — a monotonic clock you advance by hand; every component that takes ``clock=`` accepts it,
  so TTLs, health checks, back-offs and windows can be tested without sleeping.
* :func:`throwaway_namespace` — a unique shared-memory pool namespace whose segments are unlinked afterwards.
"""

from __future__ import annotations

import threading

__all__ = ["FakeClock", "throwaway_namespace"]


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


# ---- shared-memory pools -------------------------------------------------------------------------------------
import contextlib as _contextlib  # noqa: E402
from collections.abc import Iterator as _Iterator  # noqa: E402


@_contextlib.contextmanager
def throwaway_namespace(prefix: str = "test") -> _Iterator[str]:
    """Yield a fresh pool namespace; afterwards unlink every shared-memory segment created in it.

    Use it so tests (or examples) never leave pools in ``/dev/shm``, even when they fail::

        with throwaway_namespace() as ns, MemoryPoolManager(namespace=ns) as pm:
            pm.create_pool("scratch", size=1 << 20)
    """
    import os
    import secrets

    from .shm import PREFIX, SHM_DIR, unlink_segment, validate_name

    namespace = validate_name("prefix", f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield namespace
    finally:
        # every owner tag (ours, a group share's, or one planted by a test's second user): the name is unique
        for name in os.listdir(SHM_DIR):
            parts = name.split(".")
            if len(parts) > 3 and parts[0] == PREFIX and parts[2] == namespace:
                unlink_segment(name)
