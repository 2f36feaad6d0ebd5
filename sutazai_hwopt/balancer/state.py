"""Per-backend runtime state (compiled: ``_native/balancer_core.pyx``) and the outlier-ejection parameters.

Outlier ejection follows Envoy's outlier detection (consecutive failures, failure rate over a window,
ejection time = base x number of ejections, capped share of ejected hosts); re-admission is half-open in
the circuit-breaker sense: after the ejection time the backend admits at most ``probes`` requests until one
succeeds. When active health checks run, they gate re-admission (a backend whose check fails stays out, one
whose check recovers comes back without risking a caller's request) — see docs/balancer.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from .._native.balancer_core import BACKEND_STATES, Backend, TypeStats
from .._native.balancer_core import Sketch as LatencySketch

__all__ = ["EJECTED", "HEALTHY", "PROBING", "STATE_NAMES", "Backend", "BackendState", "OutlierPolicy",
           "TypeStats", "backend_as_dict"]


class BackendState(enum.IntEnum):
    """A backend's outlier state (``Backend.state``); the codes are the compiled core's, defined once in
    ``_native/balancer_codes.pxi`` (``tests/balancer/test_parity.py`` checks the two agree)."""

    HEALTHY = BACKEND_STATES["healthy"]
    EJECTED = BACKEND_STATES["ejected"]
    PROBING = BACKEND_STATES["probing"]


# Plain ints for the Python paths (an int compares faster than an IntEnum member).
HEALTHY: Final[int] = int(BackendState.HEALTHY)
EJECTED: Final[int] = int(BackendState.EJECTED)
PROBING: Final[int] = int(BackendState.PROBING)
#: state code -> the name analytics() and state_of() report.
STATE_NAMES: Final[dict[int, str]] = {int(s): s.name.lower() for s in BackendState}


@dataclass(frozen=True)
class OutlierPolicy:
    """Passive outlier detection and ejection parameters (validated by the balancer)."""

    consecutive_failures: int = 3
    failure_rate_threshold: float = 0.5
    window: int = 32
    min_requests: int = 10
    base_ejection_s: float = 1.0
    max_ejection_s: float = 30.0
    max_ejection_percent: float = 50.0
    probes: int = 1
    ewma_tau_s: float = 1.0
    failure_penalty_s: float = 1.0


def backend_as_dict(b: Backend) -> dict[str, object]:
    """A backend's state, counters and latency quantiles as a plain dict (for analytics)."""
    total_req = sum(st.requests for st in b.stats.values())
    total_err = sum(st.errors for st in b.stats.values())
    merged = LatencySketch()
    for st in b.stats.values():
        merged.merge(st.sketch)
    q = merged.summary()
    by_type = {}
    for rt, st in b.stats.items():
        d = st.sketch.summary()
        by_type[rt.value] = {"requests": st.requests, "errors": st.errors, "p50_s": d["p50"],
                             "p95_s": d["p95"], "p99_s": d["p99"], "mean_s": d["mean"],
                             "service_estimate_s": st.service_est}
    return {
        "service_id": b.sid, "host": b.service.host, "port": b.service.port,
        "weight": b.weight, "max_connections": b.max_conn, "in_flight": b.in_flight,
        "state": STATE_NAMES[b.state], "active_healthy": b.active_ok,
        "requests": total_req, "errors": total_err, "ejections": b.total_ejections,
        "latency_ewma_s": b.ewma, "p50_s": q["p50"], "p95_s": q["p95"], "p99_s": q["p99"],
        "by_type": by_type,
    }
