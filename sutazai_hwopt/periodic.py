"""One background daemon thread that calls a function every ``interval_s`` until stopped.

Agents run a few such loops beside their work (the BLAS thread-pool governor, the prefetch reporter); each must
survive a failing call (logged, the loop goes on) and stop promptly without deadlocking when asked from the loop
itself."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["PeriodicThread"]


class PeriodicThread:
    """Calls ``fn()`` every ``interval_s`` on a daemon thread named ``name``; an exception is logged as ``what``."""

    def __init__(self, fn: Callable[[], object], interval_s: float, *, name: str, what: str,
                 log: logging.Logger) -> None:
        self.fn = fn
        self.interval_s = interval_s
        self.name = name
        self.what = what
        self.log = log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the loop (once; a second call does nothing)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop and wait for it (up to 5 s), unless called from the loop itself."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.fn()
            except Exception:  # never let one failed call end the loop
                self.log.exception("%s failed", self.what)
