"""Find the cgroup hierarchies of this host (v1, v2 or a hybrid of both) and what the library may write there.

Hosts mix both versions: this one mounts v1 ``cpu``, ``cpuset`` and ``memory`` and a v2 hierarchy without a
``cpu`` controller. The mount table (``/proc/self/mountinfo``, see proc(5)) says which controller lives where;
``/proc/<pid>/cgroup`` says where a process sits in each hierarchy (cgroups(7), "/proc files"). Nothing here
writes; the knobs in :mod:`.knobs` do, through the journal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupHierarchy", "CgroupLayout", "detect_cgroups", "read_int_file"]


@dataclass(frozen=True)
class CgroupHierarchy:
    """One mounted hierarchy: its version, mount point and the controllers it carries."""

    version: int
    mount: str
    controllers: frozenset[str]

    def path_of(self, pid: int | str = "self") -> str | None:
        """The absolute directory of ``pid``'s cgroup in this hierarchy, or ``None`` if not listed."""
        rel = _membership(pid).get(self._key())
        if rel is None:
            return None
        return os.path.normpath(self.mount + "/" + rel.lstrip("/"))

    def relative_of(self, pid: int | str = "self") -> str | None:
        """``pid``'s cgroup path relative to the mount (``/`` for the root)."""
        return _membership(pid).get(self._key())

    def writable(self) -> bool:
        """Whether a child group can be created under the root of this hierarchy."""
        return os.access(self.mount, os.W_OK)

    def _key(self) -> str:
        if self.version == 2:
            return ""
        return ",".join(sorted(self.controllers))


@dataclass(frozen=True)
class CgroupLayout:
    """Every hierarchy found; ``v1(controller)`` / ``v2`` pick the one to use for a knob."""

    hierarchies: tuple[CgroupHierarchy, ...] = field(default_factory=tuple)

    def v1(self, controller: str) -> CgroupHierarchy | None:
        """The v1 hierarchy carrying ``controller`` (``cpu``, ``cpuset``, ``memory``), if mounted."""
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        return None

    @property
    def v2(self) -> CgroupHierarchy | None:
        """The unified (v2) hierarchy, if mounted."""
        for h in self.hierarchies:
            if h.version == 2:
                return h
        return None

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary (for ``export_stats`` and the knob report)."""
        return {
            "v1": {c: h.mount for h in self.hierarchies if h.version == 1 for c in sorted(h.controllers)},
            "v2": None if self.v2 is None else {"mount": self.v2.mount,
                                                 "controllers": sorted(self.v2.controllers)},
        }


def read_int_file(path: str | os.PathLike[str]) -> int | None:
    """An integer file's value, ``None`` for ``max``, a missing file or garbage."""
    try:
        text = Path(path).read_text().split()[0]
    except (OSError, IndexError):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _membership(pid: int | str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as controller-list -> path (``""`` is the v2 entry)."""
    out: dict[str, str] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        # v1 named hierarchies ("name=systemd") carry no resource controller.
        key = ",".join(sorted(c for c in ctrls.split(",") if c and not c.startswith("name=")))
        if ctrls and not key:
            continue
        out[key] = path
    return out


def detect_cgroups(mountinfo: str = "/proc/self/mountinfo") -> CgroupLayout:
    """Read the mount table and list the cgroup hierarchies (empty layout if none or unreadable)."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return CgroupLayout()
    found: list[CgroupHierarchy] = []
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, mount, opts = rfields[0], fields[4], rfields[2].split(",")
        if fstype == "cgroup2":
            try:
                ctrls = frozenset(Path(mount, "cgroup.controllers").read_text().split())
            except OSError:
                ctrls = frozenset()
            found.append(CgroupHierarchy(2, mount, ctrls))
        elif fstype == "cgroup":
            ctrls = frozenset(o for o in opts if o in _V1_CONTROLLERS)
            if ctrls:
                found.append(CgroupHierarchy(1, mount, ctrls))
    return CgroupLayout(tuple(found))


_V1_CONTROLLERS = frozenset({"cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "devices", "freezer",
                             "net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"})
