"""Which cgroup / container a process runs in, from ``/proc/<pid>/cgroup``.

Container ids are recognised in the path layouts of the common runtimes (Docker cgroupfs and systemd drivers,
containerd/CRI, CRI-O, Podman/libpod, Kubernetes pod slices); an id is mapped to a name through
``/var/lib/docker/containers/<id>/config.v2.json`` (``Name``) when that file is readable, else the short id.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

__all__ = ["CgroupInfo", "container_name", "parse_cgroup", "read_cgroup"]

_ID = r"([0-9a-f]{64})"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"/docker-{_ID}\.scope")),
    ("docker", re.compile(rf"/docker/{_ID}")),
    ("containerd", re.compile(rf"/cri-containerd-{_ID}\.scope")),
    ("crio", re.compile(rf"/crio-(?:conmon-)?{_ID}\.scope")),
    ("podman", re.compile(rf"/libpod-(?:conmon-)?{_ID}(?:\.scope)?")),
    ("kubepods", re.compile(rf"/kubepods[^\n]*/{_ID}")),
    ("containerd", re.compile(rf"/{_ID}$")),
)


@dataclass(frozen=True)
class CgroupInfo:
    """The cgroup path a process is in (v2 unified path, else the v1 memory or cpu path) and its container."""

    path: str
    runtime: str | None = None
    container_id: str | None = None

    @property
    def short_id(self) -> str | None:
        return self.container_id[:12] if self.container_id else None


def parse_cgroup(text: str) -> CgroupInfo:
    """Parse the text of ``/proc/<pid>/cgroup`` (v1, v2 or hybrid).

    Example:
        >>> parse_cgroup("0::/system.slice/docker-" + "ab" * 32 + ".scope\\n").runtime
        'docker'
    """
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths["unified"] = path
        for c in controllers.split(","):
            paths.setdefault(c, path)
    chosen = "/"
    for key in ("unified", "memory", "cpu", "cpuacct", "pids"):
        p = paths.get(key)
        if p and p != "/":
            chosen = p
            break
    for p in [chosen, *paths.values()]:
        for runtime, pat in _PATTERNS:
            m = pat.search(p)
            if m:
                return CgroupInfo(path=chosen, runtime=runtime, container_id=m.group(1))
    return CgroupInfo(path=chosen)


def read_cgroup(pid: int) -> CgroupInfo | None:
    """The cgroup of ``pid``; ``None`` when the process is gone."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            return parse_cgroup(fh.read())
    except OSError:
        return None


_names: dict[str, str] = {}


def container_name(info: CgroupInfo, docker_root: str = "/var/lib/docker/containers") -> str | None:
    """A human name for the container of ``info`` (cached); ``None`` when not in a container."""
    cid = info.container_id
    if cid is None:
        return None
    name = _names.get(cid)
    if name is None:
        name = cid[:12]
        try:
            with open(os.path.join(docker_root, cid, "config.v2.json"), encoding="utf-8") as fh:
                raw = json.load(fh).get("Name")
            if isinstance(raw, str) and raw:
                name = raw.lstrip("/")
        except (OSError, ValueError):
            pass
        _names[cid] = name
    return name
