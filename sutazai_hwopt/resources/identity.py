"""A process identity that survives pid reuse: the pid plus its start time.

A bare pid is not an identity: once the process exits the kernel hands the number to the next process. The
start time (field 22 of ``/proc/<pid>/stat``, clock ticks after boot; proc(5)) never changes for a process, so
``(pid, start_time)`` names one process for the life of the boot. Every knob checks it right before writing,
so a change meant for a dead agent never lands on a stranger.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import NotFoundError
from ..procid import process_start_time as read_start_time

__all__ = ["AgentProcess", "read_start_time"]


@dataclass(frozen=True)
class AgentProcess:
    """One process: ``pid`` and ``start_time`` (ticks after boot). Compare, hash and store it freely."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> AgentProcess:
        """The identity of the live process ``pid``.

        Raises:
            NotFoundError: no such process (or only a zombie is left).
        """
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError(f"pid must be a positive integer, got {pid!r}")
        start = read_start_time(pid)
        if start is None:
            raise NotFoundError(f"pid {pid} does not exist (or has exited)")
        return cls(pid, start)

    def is_alive(self) -> bool:
        """Whether the same process (not a reuse of its pid) is still running."""
        return read_start_time(self.pid) == self.start_time

    def check(self) -> None:
        """Raise :class:`NotFoundError` unless this exact process still runs."""
        now = read_start_time(self.pid)
        if now != self.start_time:
            why = "has exited" if now is None else f"was reused by another process (start time {now})"
            raise NotFoundError(f"process pid {self.pid} (start time {self.start_time}) {why}")

    def tids(self) -> list[int]:
        """The thread ids of the process (the kernel's per-task knobs must be set on each)."""
        try:
            return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return [self.pid]
