"""Custom detectors: register_detector adds a bottleneck type; a detector that raises is logged and skipped."""

from __future__ import annotations

import logging
import os

import pytest

from sutazai_hwopt.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from sutazai_hwopt.profiler import Bottleneck, DetectorRegistry, PerformanceProfiler

HOT_CPU = {"cpu": {"utilization": 99.0, "count": 2.0}, "pressure": {"cpu": {"some": 90.0}}}


def backlog(system_metrics, agent_profiles):
    depth = system_metrics.get("queue", {}).get("depth", 0)
    if depth < 100:
        return None
    return {"severity": "high", "resource": "queue", "evidence": {"depth": depth}, "agents": sorted(agent_profiles),
            "message": f"{depth} requests queued"}


def broken(system_metrics, agent_profiles):
    raise RuntimeError("detector bug")


def test_custom_type_is_reported_beside_the_builtin_findings(caplog: pytest.LogCaptureFixture) -> None:
    """A registered detector's finding has its type; a raising detector is logged, skipped, and neither the
    built-in checks nor the detector registered after it are lost."""
    with PerformanceProfiler(agents={"me": os.getpid()}) as prof:
        prof.register_detector("broken", broken)
        prof.register_detector("queue_backlog", backlog)
        prof.register_detector("as_objects", lambda sm, ap: [Bottleneck("ignored", "low", "x", {"n": 1.0})])
        with caplog.at_level(logging.ERROR, logger="sutazai_hwopt.profiler"):
            found = prof.detect_bottlenecks({**HOT_CPU, "queue": {"depth": 250}}, {"a1": {}})
        types = [b.type for b in found]
        assert "high_cpu_usage" in types and "queue_backlog" in types and "as_objects" in types
        assert "broken" not in types and "detector 'broken' raised" in caplog.text
        b = next(b for b in found if b.type == "queue_backlog")
        assert (b.severity, b.resource, b.evidence, b.agents) == ("high", "queue", {"depth": 250}, ["a1"])
        assert types.index("queue_backlog") < types.index("as_objects")       # most severe first
        assert [b.type for b in prof.detect_bottlenecks({"queue": {"depth": 5}}, {})] == ["as_objects"]
        prof.sample()
        prof.sample()
        assert any(b.type == "as_objects" for b in prof.detect_bottlenecks())   # over the latest pass too


@pytest.mark.parametrize("result", ["text", 42, [{"severity": "extreme"}], [object()], {"evidence": [1]}])
def test_a_detector_answering_nonsense_is_skipped(result: object, caplog: pytest.LogCaptureFixture) -> None:
    """A detector whose answer is not a finding is logged and skipped like one that raises."""
    reg = DetectorRegistry()
    reg.register("odd", lambda sm, ap: result)
    reg.register("fine", lambda sm, ap: {"severity": "low"})
    with caplog.at_level(logging.ERROR, logger="sutazai_hwopt.profiler"):
        assert [b.type for b in reg.run({}, {})] == ["fine"]
    assert "detector 'odd' raised" in caplog.text


def test_register_detector_refuses_bad_input() -> None:
    """Bad names, built-in types, non-callables and duplicates are refused; unregister removes."""
    reg = DetectorRegistry()
    for name in ("", "9lives", "has space", 3, "x" * 65):
        with pytest.raises(InvalidArgumentError):
            reg.register(name, backlog)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="built-in"):
        reg.register("memory_pressure", backlog)
    with pytest.raises(InvalidArgumentError, match="callable"):
        reg.register("queue_backlog", "backlog")  # type: ignore[arg-type]
    reg.register("queue_backlog", backlog)
    with pytest.raises(AlreadyExistsError):
        reg.register("queue_backlog", backlog)
    assert reg.names == ("queue_backlog",) and "queue_backlog" in reg
    reg.unregister("queue_backlog")
    with pytest.raises(NotFoundError):
        reg.unregister("queue_backlog")
