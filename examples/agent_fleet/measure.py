"""What the harness reads from the OS about the fleet: PSS (total and the weights' mappings) and CPU time."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process (``/proc/<pid>/smaps_rollup``), 0 if it is gone."""
    return pss_parts(pid)["total"]


def pss_parts(pid: int) -> dict[str, int]:
    """A process's PSS (``total``) and its split by what backs it (``Pss_Anon``/``Pss_File``/``Pss_Shmem`` of
    ``smaps_rollup``), all 0 if it is gone.

    Tells where a fleet's memory goes: private heaps (interpreters, private caches, naive's weights), files
    (code, savvy's mapped ``.npy``) and shared memory (the library's pool and cache segments).
    """
    parts = {"total": 0, "anon": 0, "file": 0, "shmem": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                key = "total" if name == "Pss" else name[4:].lower() if name.startswith("Pss_") else ""
                if key in parts:
                    parts[key] += int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return parts


def range_pss_bytes(pid: int, start: int, length: int) -> int:
    """PSS of the mappings of ``pid`` that overlap ``[start, start + length)`` (``/proc/<pid>/smaps``).

    Used for the weights: a private anonymous mapping (naive), the ``.npy`` file mapping (savvy) or the pool
    segment (library); the agent reports its weights' address and size.
    """
    total = 0
    inside = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo < start + length and hi > start
                elif inside and head == "Pss:":
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine() -> dict[str, object]:
    """The facts about the host a reader needs to judge the figures."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        mem = 0
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_bytes": mem, "kernel": os.uname().release,
            "load_avg_at_start": os.getloadavg()}
