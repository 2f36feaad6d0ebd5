"""An agent's report to the host service: its thread-pool sizes (and, if it measures one, its p99 latency; and
its caches' prefetch decisions, :mod:`.agent_prefetch`).

Both sides of one small contract live here. In the agent, :func:`govern_threads` starts a
:class:`~sutazai_hwopt.resources.threads.ThreadPoolGovernor` (``connect()`` does it) that keeps the BLAS/OpenMP
pools at the size of the CPUs the daemon placed the process on and sends ``PUT /api/agents/{id}/report``
whenever it re-limits them. In the daemon, :func:`check_report` validates that body; ``status`` and the
dashboard show what was reported. Neither side imports the other's modules, so this one imports no client and
no service: the agent passes the function that sends.
"""

from __future__ import annotations

import math
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidArgumentError
from ..resources.threads import ThreadPoolGovernor
from .agent_prefetch import check_prefetch

__all__ = ["check_report", "govern_threads", "report_path", "stop_governing"]

_GOVERNORS: dict[str, ThreadPoolGovernor] = {}
_LOCK = threading.Lock()
_MAX_POOLS = 64
_MAX_CPUS = 4096


def report_path(agent_id: str) -> str:
    """The API path an agent reports to."""
    return f"/api/agents/{urllib.parse.quote(agent_id, safe='')}/report"


def govern_threads(agent_id: str, send: Callable[[str, dict[str, Any]], Any], *,
                   interval_s: float = 1.0) -> ThreadPoolGovernor:
    """Size this process's math-library thread pools to its placement and report each change via ``send``.

    ``send(path, body)`` makes the authenticated ``PUT`` (``HostClient.request``). One governor per agent id;
    a second call for the same id replaces the first.
    """
    stop_governing(agent_id)
    governor = ThreadPoolGovernor(interval_s=interval_s,
                                  on_change=lambda report: send(report_path(agent_id), report))
    with _LOCK:
        _GOVERNORS[agent_id] = governor
    return governor.start()


def stop_governing(agent_id: str) -> None:
    """Stop re-limiting for ``agent_id`` (the pools keep their current size)."""
    with _LOCK:
        governor = _GOVERNORS.pop(agent_id, None)
    if governor is not None:
        governor.stop()


def check_report(body: Mapping[str, Any]) -> dict[str, Any]:
    """The validated report: ``cpus`` (ints), ``thread_pools`` (``user_api``, ``internal_api``,
    ``num_threads``, optional ``prefix``), ``p99_ms`` (a number >= 0, or null), ``prefetch`` (rows of
    :func:`.agent_prefetch.check_prefetch`); each optional, and only the fields given are returned (the daemon
    keeps the others from earlier reports).

    Raises:
        InvalidArgumentError: an unknown field, a wrong type or an out-of-range value (the API answers 422).
    """
    unknown = set(body) - {"cpus", "thread_pools", "p99_ms", "prefetch"}
    if unknown:
        raise InvalidArgumentError(f"unknown field(s): {', '.join(sorted(unknown))}; "
                                   "allowed: cpus, thread_pools, p99_ms, prefetch")
    cpus = body.get("cpus", [])
    if not isinstance(cpus, list) or len(cpus) > _MAX_CPUS or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < _MAX_CPUS for c in cpus):
        raise InvalidArgumentError(f"cpus must be a list of CPU numbers, got {cpus!r}"[:200])
    pools = body.get("thread_pools", [])
    if not isinstance(pools, list) or len(pools) > _MAX_POOLS:
        raise InvalidArgumentError(f"thread_pools must be a list of at most {_MAX_POOLS} objects")
    out_pools = []
    for p in pools:
        if not isinstance(p, dict) or set(p) - {"user_api", "internal_api", "num_threads", "prefix"}:
            raise InvalidArgumentError(f"a thread pool is an object with user_api, internal_api, num_threads "
                                       f"(and prefix), got {p!r}"[:200])
        n = p.get("num_threads")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1 << 16:
            raise InvalidArgumentError(f"num_threads must be an integer 0..65536, got {n!r}")
        names = {k: p.get(k, "") for k in ("user_api", "internal_api", "prefix")}
        if not all(isinstance(v, str) and len(v) <= 128 for v in names.values()):
            raise InvalidArgumentError("user_api, internal_api and prefix must be strings of at most 128 characters")
        out_pools.append({**names, "num_threads": n})
    p99 = body.get("p99_ms")
    if p99 is not None and (isinstance(p99, bool) or not isinstance(p99, (int, float))
                            or not math.isfinite(p99) or p99 < 0):
        raise InvalidArgumentError(f"p99_ms must be a number >= 0 or null, got {p99!r}")
    out: dict[str, Any] = {"cpus": sorted(set(cpus)), "thread_pools": out_pools,
                           "p99_ms": None if p99 is None else float(p99)}
    if "prefetch" in body:
        out["prefetch"] = check_prefetch(body["prefetch"])
    return {k: v for k, v in out.items() if k in body}  # a report updates only what it names
