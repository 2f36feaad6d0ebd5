"""Per-agent sampling: agent processes and their children in scanner slots, rates from two passes.

Fast path (every pass): one ``ProcScanner.scan`` over held descriptors, a pread of each agent's
``task/<pid>/children`` so a child started a moment ago is counted from the next pass, and vectorised
numpy (``bincount``) to turn per-process counter deltas into per-agent rates.
Slow path (adaptive, CPU-time budgeted): USS/PSS from ``smaps_rollup`` (up to 0.4 ms per process, far too
costly at 1 Hz), open-file counts, children of non-main threads, and the cgroup. Agents whose RSS moved most
since their last slow refresh go first, then the stalest, until the per-pass budget is spent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .._native import procscan
from ..logs import get_logger
from .containers import CgroupInfo, container_name, read_cgroup
from .procfs import read_children, read_smaps_rollup

__all__ = ["AGENT_COLUMNS", "AgentSampler", "AgentState"]

log = get_logger("profiler")

_C = {name: i for i, name in enumerate(procscan.COLUMNS)}
_TICK = float(os.sysconf("SC_CLK_TCK"))
_PAGE = float(os.sysconf("SC_PAGE_SIZE"))

#: Derived per-agent columns written to the agent ring each pass (agent + its children).
AGENT_COLUMNS = ("cpu_percent", "rss_bytes", "run_wait_ratio", "wait_share", "read_bps", "write_bps",
                 "io_syscalls_ps", "ctx_switches_ps", "voluntary_ctx_ps", "involuntary_ctx_ps", "threads",
                 "major_faults_ps", "nprocs", "alive")
A = {name: i for i, name in enumerate(AGENT_COLUMNS)}


@dataclass
class AgentState:
    """What the sampler knows about one agent between passes."""

    agent_id: str
    pid: int
    index: int  # column in the agent ring
    slot: int  # scanner slot of the main process
    children: dict[int, int] = field(default_factory=dict)  # child pid -> slot
    children_fd: int = -1
    alive: bool = True
    uss_bytes: float = float("nan")
    pss_bytes: float = float("nan")
    swap_bytes: float = float("nan")
    open_files: float = float("nan")
    cgroup: CgroupInfo | None = None
    slow_at: float = -1.0  # clock time of the last slow refresh
    slow_rss: float = 0.0  # RSS at the last slow refresh


class AgentSampler:
    """Holds the scanner slots of every agent and child; :meth:`sample` returns the derived agent matrix."""

    def __init__(self, *, capacity: int = 256, slow_budget_s: float = 0.0005,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cap = max(8, capacity)
        self._scanner = procscan.ProcScanner(self._cap)
        self._raw = np.full((self._cap, procscan.NCOLUMNS), np.nan)
        self._prev = np.full((self._cap, procscan.NCOLUMNS), np.nan)
        self._ok = np.zeros(self._cap, dtype=np.uint8)
        self._owner = np.full(self._cap, -1, dtype=np.int64)  # slot -> agent index
        self._slot_pid = np.zeros(self._cap, dtype=np.int64)
        self._fresh = np.ones(self._cap, dtype=bool)  # slot has no previous reading yet
        self._free = list(range(self._cap - 1, -1, -1))
        self.agents: dict[str, AgentState] = {}
        self._by_index: list[AgentState] = []
        self._prev_t: float | None = None
        self.slow_budget_s = slow_budget_s
        self.slow_cpu_s = 0.0  # cumulative CPU seconds spent on the slow path
        self._with_status = True

    # -- registry -------------------------------------------------------------------------------------
    def _alloc(self, pid: int, owner: int) -> int | None:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        if not self._scanner.open_slot(slot, pid, self._with_status):
            self._free.append(slot)
            return None
        self._owner[slot] = owner
        self._slot_pid[slot] = pid
        self._fresh[slot] = True
        return slot

    def _release(self, slot: int) -> None:
        self._scanner.close_slot(slot)
        self._owner[slot] = -1
        self._slot_pid[slot] = 0
        self._prev[slot] = np.nan
        self._free.append(slot)

    def _grow(self) -> None:
        new_cap = self._cap * 2
        scanner = procscan.ProcScanner(new_cap)
        for slot in range(self._cap):
            if self._owner[slot] >= 0 and not scanner.open_slot(slot, int(self._slot_pid[slot]), self._with_status):
                self._owner[slot] = -1
        self._scanner.close_all()
        self._scanner = scanner

        def pad(a: np.ndarray, fill: object) -> np.ndarray:
            b = np.empty((new_cap, *a.shape[1:]), dtype=a.dtype)
            b[...] = fill
            b[: self._cap] = a
            return b

        self._raw, self._prev = pad(self._raw, np.nan), pad(self._prev, np.nan)
        self._ok, self._owner = pad(self._ok, 0), pad(self._owner, -1)
        self._slot_pid, self._fresh = pad(self._slot_pid, 0), pad(self._fresh, True)
        self._free.extend(range(new_cap - 1, self._cap - 1, -1))
        self._cap = new_cap

    def add(self, agent_id: str, pid: int) -> AgentState | None:
        """Start sampling ``pid`` as ``agent_id``; ``None`` when the process does not exist."""
        index = len(self._by_index)
        slot = self._alloc(pid, index)
        if slot is None:
            return None
        st = AgentState(agent_id=agent_id, pid=pid, index=index, slot=slot)
        try:
            st.children_fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            st.children_fd = -1
        st.cgroup = read_cgroup(pid)
        self.agents[agent_id] = st
        self._by_index.append(st)
        return st

    def remove(self, agent_id: str) -> None:
        """Stop sampling ``agent_id`` (its ring column stays, marked not alive)."""
        st = self.agents.pop(agent_id, None)
        if st is None:
            return
        self._detach(st)

    def _detach(self, st: AgentState) -> None:
        if st.slot >= 0:
            self._release(st.slot)
            st.slot = -1
        for slot in st.children.values():
            self._release(slot)
        st.children.clear()
        if st.children_fd >= 0:
            os.close(st.children_fd)
            st.children_fd = -1
        st.alive = False

    def close(self) -> None:
        for st in list(self.agents.values()):
            self._detach(st)
        self._scanner.close_all()

    @property
    def n_index(self) -> int:
        return len(self._by_index)

    def state_at(self, index: int) -> AgentState:
        return self._by_index[index]

    @property
    def open_fds(self) -> int:
        return int(self._scanner.open_fds) + sum(1 for s in self.agents.values() if s.children_fd >= 0)

    # -- children -------------------------------------------------------------------------------------
    def _sync_children(self, st: AgentState, found: set[int]) -> None:
        for pid in found - st.children.keys():
            if pid == st.pid:
                continue
            slot = self._alloc(pid, st.index)
            if slot is not None:
                st.children[pid] = slot
        for pid in st.children.keys() - found:
            self._release(st.children.pop(pid))

    def _fast_children(self) -> None:
        for st in self.agents.values():
            if st.children_fd < 0 or not st.alive:
                continue
            try:
                data = os.pread(st.children_fd, 65536, 0)
            except OSError:
                continue
            found = {int(x) for x in data.split()}
            if not found and not st.children:
                continue
            # grandchildren of known children are added on the slow path; keep them while they live
            keep = {p for p in st.children if p not in found and self._ok[st.children[p]]}
            self._sync_children(st, found | keep)

    # -- sampling -------------------------------------------------------------------------------------
    def sample(self) -> tuple[float, np.ndarray]:
        """One pass: returns (time, matrix[n_index, len(AGENT_COLUMNS)]) of derived per-agent values."""
        self._fast_children()
        now = self._clock()
        self._scanner.scan(self._raw, self._ok, self._with_status)
        dt = (now - self._prev_t) if self._prev_t is not None else float("nan")
        n = self.n_index
        out = np.full((n, len(AGENT_COLUMNS)), np.nan)
        owner = self._owner
        used = owner >= 0
        ok = used & (self._ok == 1)
        # processes that are gone: children are dropped, an agent's own process marks the agent dead
        for slot in np.flatnonzero(used & (self._ok == 0)):
            if owner[slot] < 0:  # released with its agent earlier in this loop
                continue
            st = self._by_index[int(owner[slot])]
            if slot == st.slot:
                log.info("agent %s (pid %d) exited", st.agent_id, st.pid)
                self._detach(st)
            else:
                pid = int(self._slot_pid[slot])
                st.children.pop(pid, None)
                self._release(int(slot))
        idx = owner[ok]
        raw, prev = self._raw[ok], self._prev[ok]
        valid = ~self._fresh[ok]
        if n:
            rss = np.bincount(idx, raw[:, _C["rss_pages"]], minlength=n) * _PAGE
            thr = np.bincount(idx, raw[:, _C["threads"]], minlength=n)
            nprocs = np.bincount(idx, minlength=n).astype(float)
            out[:, A["rss_bytes"]] = rss
            out[:, A["threads"]] = thr
            out[:, A["nprocs"]] = nprocs
            alive = np.array([s.alive for s in self._by_index], dtype=float)
            out[:, A["alive"]] = alive
            if dt == dt and dt > 0:
                d = np.where(valid[:, None], raw - prev, 0.0)
                np.nan_to_num(d, copy=False)
                np.maximum(d, 0.0, out=d)

                def rate(*cols: str) -> np.ndarray:
                    w = d[:, _C[cols[0]]].copy()
                    for c in cols[1:]:
                        w += d[:, _C[c]]
                    return np.bincount(idx, w, minlength=n) / dt

                out[:, A["cpu_percent"]] = rate("utime", "stime") / _TICK * 100.0
                run = rate("run_ns") / 1e9
                wait = rate("wait_ns") / 1e9
                out[:, A["run_wait_ratio"]] = wait
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[:, A["wait_share"]] = np.where(run + wait > 0, wait / (run + wait), 0.0)
                out[:, A["read_bps"]] = rate("read_bytes")
                out[:, A["write_bps"]] = rate("write_bytes")
                out[:, A["io_syscalls_ps"]] = rate("syscr", "syscw")
                vol = rate("voluntary_ctxt_switches")
                inv = rate("nonvoluntary_ctxt_switches")
                out[:, A["voluntary_ctx_ps"]] = vol
                out[:, A["involuntary_ctx_ps"]] = inv
                out[:, A["ctx_switches_ps"]] = vol + inv
                out[:, A["major_faults_ps"]] = rate("majflt")
            dead = alive == 0
            out[dead] = np.nan
            out[dead, A["alive"]] = 0.0
        self._prev[ok] = self._raw[ok]
        self._fresh[ok] = False
        self._prev_t = now
        self._slow_path(out, now)
        return now, out

    # -- slow path ------------------------------------------------------------------------------------
    def _slow_order(self, out: np.ndarray, now: float) -> list[AgentState]:
        live = [s for s in self.agents.values() if s.alive]

        def urgency(s: AgentState) -> float:
            if s.slow_at < 0:
                return 1e18
            rss = out[s.index, A["rss_bytes"]] if s.index < out.shape[0] else 0.0
            moved = abs(float(rss) - s.slow_rss) / max(s.slow_rss, 1.0) if rss == rss else 0.0
            return (now - s.slow_at) * (1.0 + 20.0 * moved)

        return sorted(live, key=urgency, reverse=True)

    def _slow_path(self, out: np.ndarray, now: float) -> None:
        if not self.agents or self.slow_budget_s <= 0:
            return
        t0 = time.thread_time()
        for st in self._slow_order(out, now):
            self.refresh_slow(st, now, out)
            if time.thread_time() - t0 >= self.slow_budget_s:
                break
        self.slow_cpu_s += time.thread_time() - t0

    def refresh_slow(self, st: AgentState, now: float, out: np.ndarray | None = None) -> None:
        """USS/PSS, open files, all threads' children and the cgroup of one agent."""
        pids = [st.pid, *st.children]
        found: set[int] = set()
        frontier = [st.pid]
        while frontier and len(found) < 4096:  # descendants of every thread, not only the main one
            nxt: list[int] = []
            for p in frontier:
                for c in read_children(p):
                    if c not in found:
                        found.add(c)
                        nxt.append(c)
            frontier = nxt
        if st.alive:
            self._sync_children(st, found)
        uss = pss = swap = 0.0
        nfiles = 0.0
        any_ok = False
        for p in pids:
            r = read_smaps_rollup(p)
            if r is not None:
                any_ok = True
                uss += r[0]
                pss += r[1]
                swap += r[2]
            try:
                nfiles += len(os.listdir(f"/proc/{p}/fd"))
            except OSError:
                pass
        if any_ok:
            st.uss_bytes, st.pss_bytes, st.swap_bytes, st.open_files = uss, pss, swap, nfiles
        cg = read_cgroup(st.pid)
        if cg is not None:
            st.cgroup = cg
        st.slow_at = now
        if out is not None and st.index < out.shape[0]:
            st.slow_rss = float(out[st.index, A["rss_bytes"]])

    def container_of(self, st: AgentState) -> str | None:
        return container_name(st.cgroup) if st.cgroup is not None else None
