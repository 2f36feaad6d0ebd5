"""Value types of the balancer: the backend description a caller registers and the request types it routes.

:class:`BackendService` is immutable and validated at construction, so a bad registration fails before it
touches the balancer. The mutable per-backend runtime state lives in :mod:`.state`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ..errors import InvalidArgumentError, WeightError

__all__ = ["BackendService", "RequestType"]


class RequestType(str, enum.Enum):
    """Kinds of request a caller routes; each may use its own algorithm and has its own statistics."""

    DEFAULT = "default"
    LIGHT = "light"
    COMPUTE_HEAVY = "compute_heavy"
    MEMORY_HEAVY = "memory_heavy"
    IO_BOUND = "io_bound"
    STREAMING = "streaming"


@dataclass(frozen=True)
class BackendService:
    """One backend a balancer can route to.

    Args:
        service_id: unique, non-empty id.
        host: host name or address (health checks connect to it).
        port: TCP port, 1-65535.
        weight: relative capacity, > 0 and finite (weighted algorithms and hashing use it).
        max_connections: most requests this client keeps in flight on the backend, >= 1.
        health_path: optional HTTP path for active checks (``None``: TCP connect only).

    Example:
        >>> BackendService(service_id="agent_001", host="localhost", port=8001, weight=1.5).weight
        1.5
    """

    service_id: str
    host: str = "127.0.0.1"
    port: int = 8000
    weight: float = 1.0
    max_connections: int = 100
    health_path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.service_id, str) or not self.service_id:
            raise InvalidArgumentError(f"service_id must be a non-empty string, got {self.service_id!r}")
        if not isinstance(self.host, str) or not self.host:
            raise InvalidArgumentError(f"host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidArgumentError(f"port must be an integer in 1..65535, got {self.port!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise WeightError(f"weight must be a finite number > 0, got {w!r}")
        mc = self.max_connections
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            raise InvalidArgumentError(f"max_connections must be an integer >= 1, got {mc!r}")
        if self.health_path is not None and (not isinstance(self.health_path, str)
                                             or not self.health_path.startswith("/")):
            raise InvalidArgumentError(f"health_path must be None or start with '/', got {self.health_path!r}")
        object.__setattr__(self, "weight", float(w))
