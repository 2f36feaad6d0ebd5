"""Client-side load balancing for agent processes: algorithms, outlier ejection, health checks, breakers.

``DynamicLoadBalancer`` routes requests over ``BackendService`` backends; ``CircuitBreaker`` is usable on its
own; a backend embeds ``Reporter`` (or ``ReportingMiddleware``) to publish its own load to the host's
balancers. See docs/balancer.md.
"""

from __future__ import annotations

from .algorithms import ALGORITHMS, Algorithm
from .balancer import DynamicLoadBalancer
from .breaker import CircuitBreaker
from .lease import Lease
from .reporter import Reporter, ReportingMiddleware
from .sketch import LatencySketch
from .types import BackendService, RequestType

__all__ = ["ALGORITHMS", "Algorithm", "BackendService", "CircuitBreaker", "DynamicLoadBalancer",
           "LatencySketch", "Lease", "Reporter", "ReportingMiddleware", "RequestType"]
