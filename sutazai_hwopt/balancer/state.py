"""Per-backend runtime state: in-flight count, latency estimates, statistics, and outlier ejection.

Outlier ejection follows Envoy's outlier detection (consecutive failures, failure rate over a window,
ejection time = base x number of ejections, capped share of ejected hosts); re-admission is half-open in
the circuit-breaker sense: after the ejection time the backend admits at most ``probes`` requests until one
succeeds. When active health checks run, they gate re-admission (a backend whose check fails stays out, one
whose check recovers comes back without risking a caller's request) — see docs/balancer.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sketch import LatencySketch
from .types import BackendService, RequestType

__all__ = ["HEALTHY", "EJECTED", "PROBING", "Backend", "OutlierPolicy", "TypeStats"]

HEALTHY = 0
EJECTED = 1
PROBING = 2
STATE_NAMES = {HEALTHY: "healthy", EJECTED: "ejected", PROBING: "probing"}


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


class TypeStats:
    """Counters and latency sketch of one (backend, request type)."""

    __slots__ = ("errors", "requests", "service_est", "sketch")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.sketch = LatencySketch()
        self.service_est = 0.0  # learned service time (latency-predicting policy); 0 = unknown

    def as_dict(self) -> dict[str, float]:
        d = self.sketch.summary()
        return {"requests": self.requests, "errors": self.errors, "p50_s": d["p50"], "p95_s": d["p95"],
                "p99_s": d["p99"], "mean_s": d["mean"], "service_estimate_s": self.service_est}


class Backend:
    """Mutable state of one registered backend. Fields are public to the algorithms of this package."""

    __slots__ = (
        "active_ok",
        "base",
        "check_fail_run",
        "check_failed_in_ejection",
        "check_pass_run",
        "consecutive",
        "ejected_until",
        "ejections",
        "ewma",
        "ewma_t",
        "in_flight",
        "index",
        "max_conn",
        "pending_work",
        "probes_in_flight",
        "recovered_at",
        "ring",
        "ring_fails",
        "ring_i",
        "ring_n",
        "service",
        "sid",
        "state",
        "stats",
        "swrr_current",
        "total_ejections",
        "weight",
    )

    def __init__(self, service: BackendService, index: int) -> None:
        self.service = service
        self.sid = service.service_id
        self.weight = service.weight
        self.max_conn = service.max_connections
        self.index = index
        self.in_flight = 0
        self.ewma = 0.0          # peak-EWMA latency (seconds), 0 = no sample yet
        self.ewma_t = 0.0
        self.base = 0.0          # long-run mean latency of successes (slow EWMA): the backend's "normal"
        self.pending_work = 0.0  # latency-predicting: sum of predicted service of local in-flight requests
        self.state = HEALTHY
        self.ejected_until = 0.0
        self.ejections = 0
        self.total_ejections = 0
        self.recovered_at = 0.0
        self.probes_in_flight = 0
        self.consecutive = 0
        self.ring: list[int] = []
        self.ring_i = 0
        self.ring_fails = 0
        self.ring_n = 0
        self.active_ok = True
        self.check_pass_run = 0
        self.check_fail_run = 0
        self.check_failed_in_ejection = False
        self.stats: dict[RequestType, TypeStats] = {}
        self.swrr_current = 0.0

    def type_stats(self, rt: RequestType) -> TypeStats:
        st = self.stats.get(rt)
        if st is None:
            st = self.stats[rt] = TypeStats()
        return st

    def observe_latency(self, sample: float, now: float, tau: float) -> None:
        """Peak-EWMA (Finagle): jump up to a worse sample at once, decay towards better ones over ``tau``."""
        if self.ewma == 0.0 or sample > self.ewma:
            self.ewma = sample
        else:
            dt = now - self.ewma_t
            w = math.exp(-dt / tau) if dt > 0 else 1.0
            # A sample arriving at the same instant still moves the estimate a little (w = 1 would ignore it).
            if w > 0.9:
                w = 0.9
            self.ewma = self.ewma * w + sample * (1.0 - w)
        self.ewma_t = now

    def observe_base(self, sample: float) -> None:
        """Slow count-based EWMA (about 500 samples) of successful latency: what is normal for this backend."""
        self.base = sample if self.base == 0.0 else self.base + (sample - self.base) * 0.002

    def record_outcome(self, failed: int, window: int) -> None:
        """Update the consecutive-failure counter and the failure-rate ring of the last ``window`` outcomes."""
        if failed:
            self.consecutive += 1
        else:
            self.consecutive = 0
        ring = self.ring
        if len(ring) < window:
            ring.append(failed)
            self.ring_fails += failed
        else:
            i = self.ring_i
            self.ring_fails += failed - ring[i]
            ring[i] = failed
            self.ring_i = (i + 1) % window
        self.ring_n += 1

    def reset_window(self) -> None:
        self.ring = []
        self.ring_i = 0
        self.ring_fails = 0
        self.consecutive = 0

    def as_dict(self) -> dict[str, object]:
        total_req = sum(s.requests for s in self.stats.values())
        total_err = sum(s.errors for s in self.stats.values())
        merged = LatencySketch()
        for s in self.stats.values():
            merged.merge(s.sketch)
        q = merged.summary()
        return {
            "service_id": self.sid, "host": self.service.host, "port": self.service.port,
            "weight": self.weight, "max_connections": self.max_conn, "in_flight": self.in_flight,
            "state": STATE_NAMES[self.state], "active_healthy": self.active_ok,
            "requests": total_req, "errors": total_err, "ejections": self.total_ejections,
            "latency_ewma_s": self.ewma, "p50_s": q["p50"], "p95_s": q["p95"], "p99_s": q["p99"],
            "by_type": {rt.value: s.as_dict() for rt, s in self.stats.items()},
        }
