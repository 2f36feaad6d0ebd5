"""Process identity that survives pid reuse: a pid plus its start time.

A bare pid is not an identity: once a process exits the kernel hands its number to the next one. The start time
(field 22 of ``/proc/<pid>/stat``, clock ticks after boot; proc(5)) never changes for a process, so
``(pid, start_time)`` names one process for the life of the boot. Every part that records which process holds
something (pool blocks, cache pins, placement, the host service's pid file) uses these two functions.
"""

from __future__ import annotations

__all__ = ["is_same_process", "process_start_time"]


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot, or ``None`` if it does not exist or is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2:].split()
    if len(rest) < 20 or rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def is_same_process(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is still the process that had ``start_time`` (not a stranger reusing the pid)."""
    return pid > 0 and process_start_time(pid) == start_time
