"""Client-side load balancing for agent processes: algorithms, outlier ejection, health checks, breakers.

``DynamicLoadBalancer`` routes requests over ``BackendService`` backends; ``CircuitBreaker`` is usable on its
own. See docs/balancer.md.
"""

from __future__ import annotations

from .algorithms import ALGORITHMS, Algorithm
from .balancer import DynamicLoadBalancer
from .breaker import CircuitBreaker
from .lease import Lease
from .sketch import LatencySketch
from .types import BackendService, RequestType

__all__ = ["ALGORITHMS", "Algorithm", "BackendService", "CircuitBreaker", "DynamicLoadBalancer",
           "LatencySketch", "Lease", "RequestType"]
