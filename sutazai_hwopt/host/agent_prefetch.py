"""An agent's prefetch decisions, seen by the host service: reported by the agent, validated and shown by the daemon.

Prefetching runs in each agent process (``cache.prefetch.PrefetchGovernor`` decides, from measurements, whether
its model runs); the daemon cannot read it from shared memory. So, as for thread pools (:mod:`.agent_threads`),
the agent tells it: ``connect()`` starts a :class:`PrefetchReporter`, a daemon thread that every ``interval_s``
(0.5 s) reads the state of each open cache's governor (a few attribute reads: nothing on the caller's request
path) and sends ``PUT /api/agents/{id}/report`` with ``{"prefetch": [row, ...]}`` when a decision or its reason
changed, and otherwise at most every ``heartbeat_s`` (5 s) while the figures move. In the daemon,
:func:`check_prefetch` validates the rows (``agent_threads.check_report`` calls it), :func:`prefetch_view` is
what ``GET /api/metrics`` and ``/metrics`` show, and the dashboard's cache panel and ``status`` read the rows from
the agents' reports. This module imports no client and no service: the agent passes the function that sends.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidArgumentError
from ..logs import get_logger
from ..periodic import PeriodicThread

__all__ = ["PREFETCH_FIELDS", "PrefetchReporter", "check_prefetch", "prefetch_rows", "prefetch_view",
           "report_prefetch_state", "stop_reporting_prefetch"]

log = get_logger("cache")   # the agent-side reports are about its caches

#: The fields of one row (one cache of the agent's process); every one is required.
PREFETCH_FIELDS = ("cache", "mode", "state", "reason_code", "reason", "precision", "coverage", "prefetched",
                   "used", "requests", "switches")
_MAX_CACHES = 64
_MAX_COUNT = (1 << 63) - 1
_PREFETCH_MODULE = "sutazai_hwopt.cache.prefetch"

_REPORTERS: dict[str, PrefetchReporter] = {}
_LOCK = threading.Lock()


# ---- agent side -------------------------------------------------------------------------------------------------
def prefetch_rows() -> list[dict[str, Any]]:
    """One row per open cache with a prefetch governor in this process (``PrefetchGovernor.summary``).

    A process that never imported the prefetch module has no governor: it is not imported here for nothing.
    """
    if _PREFETCH_MODULE not in sys.modules:
        return []
    from ..cache.prefetch import live_governors

    return [g.summary() for g in live_governors()]


def _decisions() -> tuple[tuple[str, str, str, int], ...]:
    """What a change is: each governor's label, state, reason and switch count (attribute reads only)."""
    if _PREFETCH_MODULE not in sys.modules:
        return ()
    from ..cache.prefetch import live_governors

    return tuple((g.label, g.state, g.reason, g.switch_count) for g in live_governors())


class PrefetchReporter:
    """Sends this process's prefetch rows on each change of a decision, and at most every ``heartbeat_s`` else.

    Args:
        send: called with the report body ``{"prefetch": rows}``; its exceptions are logged (once per outage)
            and the next attempt waits ``heartbeat_s`` (a daemon that went away must not break the agent).
        interval_s: how often the decisions are read.
        heartbeat_s: least time between two reports when no decision changed (and none while nothing moved).
    """

    def __init__(self, send: Callable[[dict[str, Any]], Any], *, interval_s: float = 0.5,
                 heartbeat_s: float = 5.0) -> None:
        self.send = send
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.sent = 0                       # reports delivered
        self._key: tuple[Any, ...] = ()     # the decisions last delivered
        self._rows: list[dict[str, Any]] = []
        self._sent_at = -math.inf
        self._retry_at = -math.inf
        self._failing = False
        self._periodic = PeriodicThread(self.poll, interval_s, name="hwopt-prefetch-report", what="prefetch report",
                                        log=log)

    def poll(self) -> bool:
        """Send now if a decision changed, or if the heartbeat is due and a figure moved; True if delivered."""
        now = time.monotonic()
        if now < self._retry_at:
            return False
        key = _decisions()
        if key == self._key and now - self._sent_at < self.heartbeat_s:
            return False
        rows = prefetch_rows()
        if key == self._key and rows == self._rows:
            self._sent_at = now      # nothing moved: no report, look again after the next heartbeat
            return False
        try:
            self.send({"prefetch": rows})
        except Exception as exc:
            if not self._failing:
                log.warning("prefetch report not delivered (retrying every %.0f s): %s", self.heartbeat_s, exc)
            self._failing = True
            self._retry_at = now + self.heartbeat_s
            return False
        self._failing = False
        self._key, self._rows, self._sent_at = key, rows, now
        self.sent += 1
        return True

    def start(self) -> PrefetchReporter:
        """Poll every ``interval_s`` on a daemon thread; returns self."""
        self._periodic.start()
        return self

    def stop(self) -> None:
        """Stop reporting (the daemon keeps the last rows until the agent leaves)."""
        self._periodic.stop()



def report_prefetch_state(agent_id: str, send: Callable[[dict[str, Any]], Any], *,
                          interval_s: float = 0.5, heartbeat_s: float = 5.0) -> PrefetchReporter:
    """Report this process's prefetch decisions for ``agent_id`` via ``send(body)`` (the authenticated ``PUT`` to
    ``agent_threads.report_path(agent_id)``). One reporter per agent id; a second call for the same id replaces
    the first.
    """
    stop_reporting_prefetch(agent_id)
    reporter = PrefetchReporter(send, interval_s=interval_s, heartbeat_s=heartbeat_s)
    with _LOCK:
        _REPORTERS[agent_id] = reporter
    return reporter.start()


def stop_reporting_prefetch(agent_id: str) -> None:
    """Stop the prefetch reports of ``agent_id``."""
    with _LOCK:
        reporter = _REPORTERS.pop(agent_id, None)
    if reporter is not None:
        reporter.stop()


# ---- daemon side ------------------------------------------------------------------------------------------------
def _fraction(row: Mapping[str, Any], key: str) -> float:
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise InvalidArgumentError(f"prefetch {key} must be a number in [0, 1], got {v!r}"[:200])
    return float(v)


def _count(row: Mapping[str, Any], key: str) -> int:
    v = row[key]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_COUNT:
        raise InvalidArgumentError(f"prefetch {key} must be an integer >= 0, got {v!r}"[:200])
    return v


def _text(row: Mapping[str, Any], key: str, limit: int) -> str:
    v = row[key]
    if not isinstance(v, str) or len(v) > limit or any(c < " " or "\x7f" <= c <= "\x9f" for c in v):
        raise InvalidArgumentError(f"prefetch {key} must be text of at most {limit} characters without control "
                                   f"characters, got {v!r}"[:200])
    return v


def check_prefetch(rows: Any) -> list[dict[str, Any]]:
    """The validated ``prefetch`` field of a report: a list of at most 64 rows, one per cache, each with exactly
    :data:`PREFETCH_FIELDS` (``state`` one of off/trial/on, ``reason_code`` one of
    ``cache.prefetch.REASON_CODES``, fractions in [0, 1], counts >= 0, distinct ``cache`` names).

    Raises:
        InvalidArgumentError: anything else (the API answers 422 and keeps the previous report).
    """
    from ..cache.prefetch import OFF, ON, REASON_CODES, TRIAL

    if not isinstance(rows, list) or len(rows) > _MAX_CACHES:
        raise InvalidArgumentError(f"prefetch must be a list of at most {_MAX_CACHES} objects")
    out = []
    for row in rows:
        if not isinstance(row, dict) or set(row) != set(PREFETCH_FIELDS):
            raise InvalidArgumentError(f"a prefetch row is an object with exactly {', '.join(PREFETCH_FIELDS)}, "
                                       f"got {row!r}"[:300])
        cache = _text(row, "cache", 128)
        if not cache:
            raise InvalidArgumentError("prefetch cache must not be empty")
        state, code = row["state"], row["reason_code"]
        if state not in (OFF, TRIAL, ON):
            raise InvalidArgumentError(f"prefetch state must be one of off, trial, on, got {state!r}"[:200])
        if code not in REASON_CODES:
            raise InvalidArgumentError(f"prefetch reason_code must be one of {', '.join(REASON_CODES)}, "
                                       f"got {code!r}"[:300])
        out.append({"cache": cache, "mode": _text(row, "mode", 32), "state": state, "reason_code": code,
                    "reason": _text(row, "reason", 300), "precision": _fraction(row, "precision"),
                    "coverage": _fraction(row, "coverage"),
                    **{k: _count(row, k) for k in ("prefetched", "used", "requests", "switches")}})
    if len({r["cache"] for r in out}) != len(out):
        raise InvalidArgumentError("prefetch rows must name distinct caches")
    return out


def prefetch_view(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each reporting agent's rows, with ``enabled`` (the model runs: state trial or on) and when it reported."""
    return {agent_id: [{**row, "enabled": row["state"] != "off", "reported_at": r.get("reported_at")}
                       for row in r["prefetch"]]
            for agent_id, r in sorted(reports.items()) if r.get("prefetch")}
