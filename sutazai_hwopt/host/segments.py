"""This user's shared-memory segments as the CLI shows and removes them (``status``, ``clean``, ``stop --purge``).

Segments outlive the processes that made them (other agents attach to them), so nothing removes them by itself.
Removing a segment a live process still maps frees nothing (the kernel keeps the memory until the last mapping
goes) and makes the next process of that namespace create a fresh, empty one beside it, so :func:`purge` refuses
while any process maps one, unless forced. Names, listing and unlinking come from :mod:`sutazai_hwopt.shm`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..shm import PREFIX, SHM_DIR, list_segment_names, unlink_segment, validate_name

__all__ = ["NamespaceUsage", "format_bytes", "holders", "process_name", "purge", "usage"]


@dataclass
class NamespaceUsage:
    """The segments of one namespace: how many, the memory they hold now, and their apparent (budgeted) size."""

    namespace: str
    segments: list[str] = field(default_factory=list)
    resident_bytes: int = 0
    apparent_bytes: int = 0


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style size for people."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def usage() -> dict[str, NamespaceUsage]:
    """Every namespace of this user that has segments in ``/dev/shm`` (named ``sutazai_hwopt.u<uid>.<ns>.*``)."""
    owner = f"{PREFIX}.u{os.geteuid()}."
    out: dict[str, NamespaceUsage] = {}
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        return out
    for name in names:
        if not name.startswith(owner):
            continue
        namespace = name[len(owner):].split(".", 1)[0]
        try:
            st = os.stat(os.path.join(SHM_DIR, name), follow_symlinks=False)
        except OSError:
            continue   # removed meanwhile
        entry = out.setdefault(namespace, NamespaceUsage(namespace))
        entry.segments.append(name)
        entry.resident_bytes += st.st_blocks * 512
        entry.apparent_bytes += st.st_size
    return out


def holders(names: Iterable[str]) -> dict[int, set[str]]:
    """Processes (other than this one) that map any of the segments ``names``: pid -> the names it maps.

    Read from ``/proc/<pid>/maps``; processes whose maps we may not read (other users') are skipped: our
    segments are mode 0600, so only we and root can map them.
    """
    paths = {os.path.join(SHM_DIR, n): n for n in names}
    found: dict[int, set[str]] = {}
    if not paths:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.rstrip("\n").split(maxsplit=5)
                    if len(parts) == 6 and parts[5] in paths:
                        found.setdefault(int(entry), set()).add(paths[parts[5]])
        except OSError:
            continue
    return found


def purge(namespace: str, *, force: bool = False) -> tuple[list[str], dict[int, set[str]]]:
    """Unlink every segment of ``namespace`` (this user's), unless a live process maps one and not ``force``.

    Returns ``(removed, holders)``: ``removed`` is empty when refused because of ``holders``.
    """
    validate_name("namespace", namespace)
    names = list_segment_names(namespace)
    busy = holders(names)
    if busy and not force:
        return [], busy
    return [n for n in names if unlink_segment(n)], busy


def process_name(pid: int) -> str:
    """The command name of ``pid`` (for messages), or ``?``."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "?"
