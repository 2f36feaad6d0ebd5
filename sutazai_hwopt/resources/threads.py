"""Math libraries sized to their placement: an agent's BLAS / OpenMP thread pools follow its CPU affinity.

OpenBLAS, MKL, BLIS and OpenMP start one worker thread per core of the machine, whatever CPUs the process may
run on. 131 numpy processes pinned to a few CPUs each would otherwise run 131 x cores threads: the
oversubscription placement exists to stop. :class:`ThreadPoolGovernor` runs inside the agent process, reads
its own affinity (``os.sched_getaffinity`` of its main thread), and limits every pool threadpoolctl finds to
that many threads; a cheap affinity check on a timer notices when the daemon re-places the process, and a
periodic re-scan notices libraries loaded later (numpy imported after ``connect()``).

threadpoolctl (installed with scikit-learn, and a declared dependency) is imported only when a governor runs.
BLAS limits are process-wide; an OpenMP runtime's limit is per thread in libgomp, so the first check runs on
the thread that starts the governor (``connect()``'s caller) and later changes reach OpenMP code run by that
thread only when it calls :meth:`ThreadPoolGovernor.check` itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ..logs import get_logger
from ..periodic import PeriodicThread

__all__ = ["ThreadPoolGovernor", "affinity_cpus", "limit_thread_pools", "thread_pool_sizes"]

log = get_logger("resources")

#: Every this many affinity checks the loaded libraries are scanned again (a library loaded since, or a limit
#: someone reset); the affinity check itself is one system call.
RESCAN_EVERY = 5


def affinity_cpus(pid: int | None = None) -> frozenset[int]:
    """The CPUs ``pid`` may run on; by default this process's main thread (affinity is kept per thread, and
    the governor's own thread must not read only itself)."""
    return frozenset(os.sched_getaffinity(os.getpid() if pid is None else pid))


def thread_pool_sizes() -> list[dict[str, Any]]:
    """Every thread pool loaded in this process: ``user_api`` (blas/openmp), ``internal_api``, ``num_threads``."""
    import threadpoolctl

    return [{"user_api": str(p.get("user_api")), "internal_api": str(p.get("internal_api")),
             "num_threads": int(p.get("num_threads") or 0), "prefix": str(p.get("prefix"))}
            for p in threadpoolctl.threadpool_info()]


def limit_thread_pools(n_threads: int) -> list[dict[str, Any]]:
    """Limit every loaded BLAS and OpenMP pool to ``n_threads``; returns the sizes afterwards."""
    import threadpoolctl

    threadpoolctl.threadpool_limits(limits=max(1, int(n_threads)))
    # threadpoolctl >= 3.6 lets only the first thread that set a (pthreads) OpenBLAS limit set it again, until
    # that thread gives up control; give it up, so the next re-limit may come from another thread (the
    # governor's). A user's own ``with threadpool_limits(...)`` block still holds control while it runs.
    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release()
    return thread_pool_sizes()


class ThreadPoolGovernor:
    """Keep this process's math-library thread pools as large as its CPU affinity, and say when they change.

    Args:
        interval_s: period of the affinity check on the background thread (:meth:`start`).
        on_change: called with :meth:`report` after each (re-)limit, e.g. to tell the host service; its
            exceptions are logged and swallowed (a daemon that went away must not break the agent).
    """

    def __init__(self, *, interval_s: float = 1.0,
                 on_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.interval_s = interval_s
        self.on_change = on_change
        self._cpus: frozenset[int] | None = None
        self._pools: list[dict[str, Any]] = []
        self._checks = 0
        self._lock = threading.Lock()
        self._periodic = PeriodicThread(self.check, interval_s, name="hwopt-threadpools", what="thread-pool check",
                                        log=log)

    def report(self) -> dict[str, Any]:
        """What the governor applied: the affinity it sized to and each pool's size."""
        with self._lock:
            return {"cpus": sorted(self._cpus or ()), "thread_pools": [dict(p) for p in self._pools]}

    def check(self) -> bool:
        """Re-limit if the affinity changed (or, every :data:`RESCAN_EVERY` checks, a pool is off); True if so."""
        cpus = affinity_cpus()
        with self._lock:
            self._checks += 1
            rescan = self._checks % RESCAN_EVERY == 1
            if cpus == self._cpus and (not rescan or thread_pool_sizes() == self._pools):
                return False  # same CPUs, and (when scanned) the same libraries at the sizes set
            self._pools = limit_thread_pools(len(cpus))
            moved = self._cpus is not None and cpus != self._cpus
            self._cpus = cpus
        log.info("thread pools limited to %d threads (%s CPUs %s)", len(cpus), "new" if moved else "on",
                 ",".join(map(str, sorted(cpus))))
        if self.on_change is not None:
            try:
                self.on_change(self.report())
            except Exception as exc:
                log.warning("thread-pool report not delivered: %s", exc)
        return True

    def start(self) -> ThreadPoolGovernor:
        """Check now on this thread, then every ``interval_s`` on a daemon thread; returns self."""
        self.check()
        self._periodic.start()
        return self

    def stop(self) -> None:
        """Stop the background checks (the limits stay as they are)."""
        self._periodic.stop()

