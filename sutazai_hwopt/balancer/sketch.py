"""Streaming latency quantiles: a log-bucket histogram with DDSketch's relative-error mapping.

Algorithm: Masson, Rim and Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with Relative-Error
Guarantees", VLDB 2019 (section 2). A value ``x > 0`` goes to bucket ``ceil(log_gamma(x))`` with
``gamma = (1 + a) / (1 - a)``; any quantile is then returned within relative error ``a`` of the true sample
quantile. Buckets are a sparse dict, so memory grows with the spread of latencies seen (about 460 buckets
cover 1 µs..1000 s at a = 2 %), not with the number of samples, and two sketches merge by adding counts.

Why not the ``ddsketch`` package: it implements the same mapping, but as a pure-Python object whose ``add``
costs about twice as much as this module's Python model (``benches/bench_balancer.py`` prints both), and the
balancer records into a sketch on every call inside its compiled hot path (1 µs budget for selection plus
recording). So the compiled core (``_native/balancer_core.pyx``, class ``Sketch``) implements the paper's
mapping in C, and :class:`ReferenceLatencySketch` here is its plain-Python reference model: tests drive both with
the same values and compare every quantile, and check quantiles against the exact ones within ``a``.
``LatencySketch`` is the compiled class. (``PyLatencySketch``, this class's former name, still resolves, with a
``DeprecationWarning``.)
"""

from __future__ import annotations

import math
import warnings

from .._native.balancer_core import Sketch as LatencySketch
from ..errors import InvalidArgumentError

__all__ = ["LatencySketch", "ReferenceLatencySketch"]

_MIN_VALUE = 1e-9  # values at or below this (including 0) are counted in the zero bucket


class ReferenceLatencySketch:
    """Relative-error quantile sketch of non-negative values (seconds); reference model of the compiled one.

    Example:
        >>> s = ReferenceLatencySketch()
        >>> for v in (0.010, 0.020, 0.030, 0.040):
        ...     s.add(v)
        >>> abs(s.quantile(0.5) - 0.020) < 0.020 * 0.02
        True
    """

    __slots__ = ("_buckets", "_gamma", "_inv_log_gamma", "_zero", "count", "max", "total")

    def __init__(self, relative_accuracy: float = 0.02) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise InvalidArgumentError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zero = 0
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        """Count one value; negative or NaN values are rejected (they would corrupt every quantile)."""
        if value > _MIN_VALUE:
            i = math.ceil(math.log(value) * self._inv_log_gamma)
            b = self._buckets
            b[i] = b.get(i, 0) + 1
            if value > self.max:
                self.max = value
        elif value >= 0.0:
            self._zero += 1
        else:
            raise InvalidArgumentError(f"value must be >= 0, got {value!r}")
        self.count += 1
        self.total += value

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) within the relative accuracy; 0.0 when empty."""
        if not 0.0 <= q <= 1.0:
            raise InvalidArgumentError(f"q must be in [0, 1], got {q!r}")
        if self.count == 0:
            return 0.0
        rank = q * (self.count - 1)
        seen = self._zero
        if rank < seen:
            return 0.0
        for i in sorted(self._buckets):
            seen += self._buckets[i]
            if seen > rank:
                return 2.0 * self._gamma ** i / (self._gamma + 1.0)
        return self.max

    def merge(self, other: ReferenceLatencySketch) -> None:
        """Add another sketch's counts (it must use the same accuracy)."""
        if other._gamma != self._gamma:
            raise InvalidArgumentError("cannot merge sketches of different relative accuracy")
        for i, c in other._buckets.items():
            self._buckets[i] = self._buckets.get(i, 0) + c
        self._zero += other._zero
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def summary(self) -> dict[str, float]:
        """Count, mean and p50/p95/p99 as a plain dict."""
        return {
            "count": float(self.count),
            "mean": self.total / self.count if self.count else 0.0,
            "p50": self.quantile(0.50),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "max": self.max,
        }


def __getattr__(name: str) -> type[ReferenceLatencySketch]:
    """``PyLatencySketch``: the deprecated former name of :class:`ReferenceLatencySketch`."""
    if name == "PyLatencySketch":
        warnings.warn("sutazai_hwopt.balancer.sketch.PyLatencySketch is deprecated; use ReferenceLatencySketch",
                      DeprecationWarning, stacklevel=2)
        return ReferenceLatencySketch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
