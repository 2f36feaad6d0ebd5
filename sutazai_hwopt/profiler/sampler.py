"""Per-agent sampling: agent processes and their children in scanner slots, rates from two passes.

Fast path (every pass): one ``ProcScanner.scan`` over held descriptors (stat, schedstat, io and a hash of
``task/<pid>/children``; ``status`` only every ``status_every`` passes, as it costs as much as the other
three together), the child list re-read only for agents whose hash changed, and vectorised numpy
(``bincount``) to turn per-process counter deltas into per-agent rates. A child born since the previous pass
is read at once and counted from its birth (its counters start at zero), so a burst of children shows up
in the very pass that finds them. Context switches per second come from schedstat's timeslice count every
pass; the voluntary / involuntary split from ``status`` at its slower cadence.
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

    def __init__(self, *, capacity: int = 256, slow_budget_s: float = 0.0003, status_every: int = 5,
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
        self.status_every = max(1, int(status_every))
        self._pass = 0
        self._prev_boot: float | None = None
        self._prev_status = np.full((self._cap, 2), np.nan)
        self._status_fresh = np.ones(self._cap, dtype=bool)
        self._prev_status_t: float | None = None
        self._volinv = np.zeros((0, 2))

    # -- registry -------------------------------------------------------------------------------------
    def _alloc(self, pid: int, owner: int, main: bool = False) -> int | None:
        if not self._free:
            self._grow()
        slot = self._free.pop()
        if not self._scanner.open_slot(slot, pid, self._with_status, main):
            self._free.append(slot)
            return None
        self._owner[slot] = owner
        self._slot_pid[slot] = pid
        self._fresh[slot] = True
        self._status_fresh[slot] = True
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
            if self._owner[slot] >= 0:
                st = self._by_index[int(self._owner[slot])]
                if not scanner.open_slot(slot, int(self._slot_pid[slot]), self._with_status, slot == st.slot):
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
        self._prev_status, self._status_fresh = pad(self._prev_status, np.nan), pad(self._status_fresh, True)
        self._free.extend(range(new_cap - 1, self._cap - 1, -1))
        self._cap = new_cap

    def add(self, agent_id: str, pid: int) -> AgentState | None:
        """Start sampling ``pid`` as ``agent_id``; ``None`` when the process does not exist."""
        index = len(self._by_index)
        slot = self._alloc(pid, index, main=True)
        if slot is None:
            return None
        st = AgentState(agent_id=agent_id, pid=pid, index=index, slot=slot)
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
        return int(self._scanner.open_fds)

    # -- children -------------------------------------------------------------------------------------
    def _sync_children(self, st: AgentState, found: set[int]) -> list[int]:
        """Open slots for new children and drop vanished ones; returns the new slots."""
        new: list[int] = []
        for pid in found - st.children.keys():
            if pid == st.pid:
                continue
            slot = self._alloc(pid, st.index)
            if slot is not None:
                st.children[pid] = slot
                new.append(slot)
        for pid in st.children.keys() - found:
            self._release(st.children.pop(pid))
        return new

    def _fast_children(self) -> None:
        """Re-read the child list of agents whose ``children`` hash changed; read new children at once."""
        hcol = _C["children_hash"]
        for st in list(self.agents.values()):
            if not st.alive or st.slot < 0 or not self._ok[st.slot]:
                continue
            h = self._raw[st.slot, hcol]
            if h == self._prev[st.slot, hcol] or (h == 0 and not st.children):
                continue
            found: set[int] = set()
            if h != 0:
                try:
                    with open(f"/proc/{st.pid}/task/{st.pid}/children", "rb") as fh:
                        found = {int(x) for x in fh.read().split()}
                except (OSError, ValueError):
                    continue
            # grandchildren (added on the slow path) stay while they live
            keep = {p for p, slot in st.children.items() if p not in found and self._ok[slot]
                    and self._raw[slot, _C["state"]] == self._raw[slot, _C["state"]]}
            for slot in self._sync_children(st, found | keep):
                self._scanner.scan_one(slot, self._raw, self._ok, True)

    # -- sampling -------------------------------------------------------------------------------------
    def sample(self) -> tuple[float, np.ndarray]:
        """One pass: returns (time, matrix[n_index, len(AGENT_COLUMNS)]) of derived per-agent values."""
        now = self._clock()
        boot = time.clock_gettime(time.CLOCK_BOOTTIME) * _TICK
        status_pass = self._pass % self.status_every == 0
        self._pass += 1
        self._scanner.scan(self._raw, self._ok, status_pass)
        # processes that are gone: children are dropped, an agent's own process marks the agent dead
        owner = self._owner
        for slot in np.flatnonzero((owner >= 0) & (self._ok == 0)):
            if owner[slot] < 0:  # released with its agent earlier in this loop
                continue
            st = self._by_index[int(owner[slot])]
            if slot == st.slot:
                log.info("agent %s (pid %d) exited", st.agent_id, st.pid)
                self._detach(st)
            else:
                st.children.pop(int(self._slot_pid[slot]), None)
                self._release(int(slot))
        self._fast_children()
        dt = (now - self._prev_t) if self._prev_t is not None else float("nan")
        n = self.n_index
        out = np.full((n, len(AGENT_COLUMNS)), np.nan)
        owner = self._owner
        ok = (owner >= 0) & (self._ok == 1)
        idx = owner[ok]
        raw, prev = self._raw[ok], self._prev[ok]
        fresh = self._fresh[ok]
        if self._prev_boot is not None:  # born after the previous pass: counters started at zero
            born = fresh & (raw[:, _C["starttime"]] >= self._prev_boot - 1)
            prev[born] = 0.0
            valid = ~fresh | born
        else:
            valid = ~fresh
        if n:
            out[:, A["rss_bytes"]] = np.bincount(idx, raw[:, _C["rss_pages"]], minlength=n) * _PAGE
            out[:, A["threads"]] = np.bincount(idx, raw[:, _C["threads"]], minlength=n)
            out[:, A["nprocs"]] = np.bincount(idx, minlength=n).astype(float)
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
                out[:, A["ctx_switches_ps"]] = rate("slices")
                out[:, A["major_faults_ps"]] = rate("majflt")
            if status_pass:
                self._status_rates(now, ok, idx, raw, valid, n)
            if self._volinv.shape[0] == n:
                out[:, A["voluntary_ctx_ps"]] = self._volinv[:, 0]
                out[:, A["involuntary_ctx_ps"]] = self._volinv[:, 1]
            dead = alive == 0
            out[dead] = np.nan
            out[dead, A["alive"]] = 0.0
        self._prev[ok] = self._raw[ok]
        self._fresh[ok] = False
        self._prev_t, self._prev_boot = now, boot
        self._slow_path(out, now)
        return now, out

    def _status_rates(self, now: float, ok: np.ndarray, idx: np.ndarray, raw: np.ndarray, valid: np.ndarray,
                      n: int) -> None:
        cur = raw[:, [_C["voluntary_ctxt_switches"], _C["nonvoluntary_ctxt_switches"]]]
        if self._prev_status_t is not None and now > self._prev_status_t:
            dts = now - self._prev_status_t
            use = valid & ~self._status_fresh[ok]
            d = np.where(use[:, None], cur - np.where(self._prev_status[ok] == self._prev_status[ok],
                                                      self._prev_status[ok], cur), 0.0)
            np.nan_to_num(d, copy=False)
            np.maximum(d, 0.0, out=d)
            self._volinv = np.stack([np.bincount(idx, d[:, 0], minlength=n),
                                     np.bincount(idx, d[:, 1], minlength=n)], axis=1) / dts
        self._prev_status[ok] = cur
        self._status_fresh[ok] = False
        self._prev_status_t = now

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
