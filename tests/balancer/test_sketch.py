"""The latency sketch returns quantiles within its relative accuracy; the package exports the public names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sutazai_hwopt
from sutazai_hwopt.balancer import LatencySketch
from sutazai_hwopt.errors import InvalidArgumentError


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-6, 100.0), min_size=1, max_size=400), st.sampled_from([0.5, 0.95, 0.99]))
def test_quantile_within_relative_accuracy(values: list[float], q: float) -> None:
    """Each quantile is within 2 % of the exact sample quantile of the same rank."""
    s = LatencySketch(0.02)
    for v in values:
        s.add(v)
    exact = sorted(values)[int(q * (len(values) - 1))]
    assert abs(s.quantile(q) - exact) <= 0.02 * exact * 1.0001


def test_merge_and_bad_values() -> None:
    """Merging adds counts; negative values and bad q raise without changing the sketch."""
    a, b = LatencySketch(), LatencySketch()
    for v in (0.1, 0.2):
        a.add(v)
    b.add(0.0)
    a.merge(b)
    assert a.count == 3
    with pytest.raises(InvalidArgumentError):
        a.add(-1.0)
    with pytest.raises(InvalidArgumentError):
        a.quantile(1.5)
    assert a.count == 3
    with pytest.raises(InvalidArgumentError):
        a.merge(LatencySketch(0.05))


def test_root_exports() -> None:
    """The package root exports the balancer's public classes lazily."""
    from sutazai_hwopt import balancer

    for name in ("DynamicLoadBalancer", "BackendService", "RequestType", "CircuitBreaker"):
        assert name in sutazai_hwopt.__all__
        assert getattr(sutazai_hwopt, name) is getattr(balancer, name)


def test_former_reference_name_is_a_deprecated_alias() -> None:
    from sutazai_hwopt.balancer import sketch

    with pytest.warns(DeprecationWarning, match="ReferenceLatencySketch"):
        cls = sketch.PyLatencySketch
    assert cls is sketch.ReferenceLatencySketch
    assert "PyLatencySketch" not in sketch.__all__
