"""Cgroup knobs of a plan: which group each agent goes to and what is written there, and what this host permits.

Layout: ``<mount>/<cgroup_name>/<agent_id>`` in every writable hierarchy that carries the controller.

* v1 ``cpu``: ``cpu.shares`` = the agent's CFS weight (both use 1024 for nice 0) and ``cpu.cfs_quota_us`` =
  its quota over a 100 ms period (``-1`` for exclusive agents: their cores are theirs anyway); the parent
  group's ``cpu.shares`` is the sum of its agents' weights, since it competes with root-level tasks as one;
* v1 ``cpuset``: the parent gets every allowed CPU and memory node (v1 children start empty), the agent its CPUs
  and, with ``enable_numa``, only its node's memory (``cpuset.mems``), which is how an agent's memory is kept on
  its node without touching the agent's own code;
* v2 (``cpu.weight``, ``cpu.max``, ``cpuset.cpus``, ``memory.high``): used when the controller is enabled in
  the root's ``cgroup.subtree_control``; otherwise reported as not available (on this host v2 carries no cpu
  controller). The library never enables controllers itself: that changes the whole machine.

The v1 ``memory`` hierarchy is never touched: moving an agent there could take it out of the memory limit its
container placed it in.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..config import HardwareConfig
from .allocation import Allocation
from .cgroups import CgroupHierarchy, CgroupLayout
from .knobs import AVAILABLE, NOT_AVAILABLE, NOT_PERMITTED
from .registry import Agent
from .topology import Topology, format_cpulist, parse_cpulist
from .transactions import Change

__all__ = ["cgroup_changes", "cgroup_report", "group_name"]

_PERIOD_US = 100_000
DISABLED = "disabled"


def group_name(agent_id: str) -> str:
    """A directory-safe group name for an agent id."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", agent_id)[:200] or "_"


def _v2_enabled(h: CgroupHierarchy) -> set[str]:
    try:
        with open(os.path.join(h.mount, "cgroup.subtree_control")) as f:
            return set(f.read().split())
    except OSError:
        return set()


def cgroup_report(layout: CgroupLayout, cfg: HardwareConfig) -> dict[str, dict[str, str]]:
    """Status of every cgroup knob on this host: available / not permitted / not available / disabled."""
    out: dict[str, dict[str, str]] = {}

    def put(name: str, status: str, reason: str) -> None:
        if status == AVAILABLE and not cfg.use_cgroups:
            status, reason = DISABLED, "use_cgroups is false in this mode/config"
        out[name] = {"status": status, "reason": reason}

    for ctrl, files in (("cpu", ("cpu.shares", "cpu.cfs_quota_us")), ("cpuset", ("cpuset.cpus",))):
        h = layout.v1(ctrl)
        for f in files:
            if h is None:
                put(f"cgroup v1 {f}", NOT_AVAILABLE, f"no v1 {ctrl} hierarchy mounted")
            elif not h.writable():
                put(f"cgroup v1 {f}", NOT_PERMITTED, f"{h.mount} is not writable by uid {os.geteuid()}")
            else:
                put(f"cgroup v1 {f}", AVAILABLE, h.mount)
    v2 = layout.v2
    for ctrl, files in (("cpu", ("cpu.max", "cpu.weight")), ("cpuset", ("cpuset.cpus",)),
                        ("memory", ("memory.high",))):
        for f in files:
            if v2 is None:
                put(f"cgroup v2 {f}", NOT_AVAILABLE, "no v2 hierarchy mounted")
            elif ctrl not in v2.controllers:
                put(f"cgroup v2 {f}", NOT_AVAILABLE, f"the v2 hierarchy at {v2.mount} has no {ctrl} controller")
            elif not v2.writable():
                put(f"cgroup v2 {f}", NOT_PERMITTED, f"{v2.mount} is not writable by uid {os.geteuid()}")
            elif ctrl not in _v2_enabled(v2):
                put(f"cgroup v2 {f}", NOT_AVAILABLE, f"{ctrl} is not enabled in {v2.mount}/cgroup.subtree_control "
                    "(the library does not enable controllers)")
            else:
                put(f"cgroup v2 {f}", AVAILABLE, v2.mount)
    return out


def _root_mems(h: CgroupHierarchy) -> str:
    for name in ("cpuset.mems", "cpuset.mems.effective", "cpuset.effective_mems"):
        try:
            with open(os.path.join(h.mount, name)) as f:
                text = f.read().strip()
            if text:
                return text
        except OSError:
            continue
    return "0"


def _cpus(cpus: Any) -> str:
    return format_cpulist(cpus)


def cgroup_changes(topology: Topology, cfg: HardwareConfig, alloc: Allocation,
                   agents: dict[str, Agent]) -> list[Change]:
    """The cgroup changes of a plan for every writable hierarchy (empty when none is usable)."""
    report = cgroup_report(topology.cgroups, cfg)
    changes: list[Change] = []

    def ch(knob: str, new: Any, path: str, pid: int | None = None, agent: str | None = None) -> None:
        changes.append(Change(knob, new, pid=pid, path=path, agent_id=agent, reason="plan cgroups"))

    layout = topology.cgroups
    cpu_h = layout.v1("cpu") if report["cgroup v1 cpu.shares"]["status"] == AVAILABLE else None
    set_h = layout.v1("cpuset") if report["cgroup v1 cpuset.cpus"]["status"] == AVAILABLE else None
    v2 = layout.v2
    v2_ctrls = {c for c, f in (("cpu", "cpu.max"), ("cpuset", "cpuset.cpus"), ("memory", "memory.high"))
                if report[f"cgroup v2 {f}"]["status"] == AVAILABLE}
    if cpu_h is not None:
        base = os.path.join(cpu_h.mount, cfg.cgroup_name)
        ch("cgroup_dir", True, base)
        # The parent group competes with root-level tasks as one entity: give it the agents' summed weight
        # so that, together, they weigh what they would as separate processes.
        total = sum(p.weight for p in alloc.placements.values())
        ch("cgroup_file", str(max(2, min(262144, total))), os.path.join(base, "cpu.shares"))
    if set_h is not None:
        base = os.path.join(set_h.mount, cfg.cgroup_name)
        ch("cgroup_dir", True, base)
        ch("cgroup_file", _cpus(topology.cpus), os.path.join(base, "cpuset.cpus"))
        ch("cgroup_file", _root_mems(set_h), os.path.join(base, "cpuset.mems"))
    if v2 is not None and v2_ctrls:
        base = os.path.join(v2.mount, cfg.cgroup_name)
        ch("cgroup_dir", True, base)
        ch("cgroup_file", " ".join(f"+{c}" for c in sorted(v2_ctrls)), os.path.join(base, "cgroup.subtree_control"))
    for aid, p in alloc.placements.items():
        agent = agents[aid]
        rel = f"/{cfg.cgroup_name}/{group_name(aid)}"
        quota_us = -1 if p.exclusive else max(1000, int(p.quota * _PERIOD_US))
        if cpu_h is not None:
            d = cpu_h.mount + rel
            ch("cgroup_dir", True, d, agent=aid)
            ch("cgroup_file", str(p.weight), os.path.join(d, "cpu.shares"), agent=aid)
            ch("cgroup_file", str(quota_us), os.path.join(d, "cpu.cfs_quota_us"), agent=aid)
            ch("cgroup_member", rel, cpu_h.mount, pid=agent.pid, agent=aid)
        if set_h is not None:
            d = set_h.mount + rel
            mems = str(p.numa_node) if cfg.enable_numa and p.numa_node is not None else _root_mems(set_h)
            if p.numa_node is not None and p.numa_node not in parse_cpulist(_root_mems(set_h)):
                mems = _root_mems(set_h)
            ch("cgroup_dir", True, d, agent=aid)
            ch("cgroup_file", mems, os.path.join(d, "cpuset.mems"), agent=aid)
            ch("cgroup_file", _cpus(p.cpus), os.path.join(d, "cpuset.cpus"), agent=aid)
            ch("cgroup_member", rel, set_h.mount, pid=agent.pid, agent=aid)
        if v2 is not None and v2_ctrls:
            d = v2.mount + rel
            ch("cgroup_dir", True, d, agent=aid)
            if "cpu" in v2_ctrls:
                # cpu.weight is 1..10000 with 100 for nice 0; CFS weight 1024 is nice 0.
                ch("cgroup_file", str(max(1, min(10000, round(p.weight * 100 / 1024)))),
                   os.path.join(d, "cpu.weight"), agent=aid)
                ch("cgroup_file", "max" if quota_us < 0 else f"{quota_us} {_PERIOD_US}",
                   os.path.join(d, "cpu.max"), agent=aid)
            if "cpuset" in v2_ctrls:
                ch("cgroup_file", _cpus(p.cpus), os.path.join(d, "cpuset.cpus"), agent=aid)
            if "memory" in v2_ctrls:
                mb = agent.requirements.memory_mb
                ch("cgroup_file", str(mb * 1024**2) if mb else "max", os.path.join(d, "memory.high"), agent=aid)
            ch("cgroup_member", rel, v2.mount, pid=agent.pid, agent=aid)
    return changes
