"""Registration, validation, selection limits and analytics of DynamicLoadBalancer."""

from __future__ import annotations

import asyncio

import pytest

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer, RequestType
from sutazai_hwopt.errors import (
    AlreadyExistsError,
    HwoptError,
    InvalidArgumentError,
    NoBackendAvailableError,
    NotFoundError,
    StateError,
    WeightError,
)
from sutazai_hwopt.testing import FakeClock


def make(n: int = 3, algorithm: str = "round_robin", **kw: object) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(algorithm=algorithm, clock=FakeClock(), seed=1)
    for i in range(n):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i, **kw))  # type: ignore[arg-type]
    return lb


@pytest.mark.parametrize("kwargs, err", [
    ({"service_id": ""}, InvalidArgumentError),
    ({"service_id": "x", "port": 0}, InvalidArgumentError),
    ({"service_id": "x", "port": 65536}, InvalidArgumentError),
    ({"service_id": "x", "weight": -1.0}, WeightError),
    ({"service_id": "x", "weight": float("nan")}, WeightError),
    ({"service_id": "x", "weight": 0}, WeightError),
    ({"service_id": "x", "max_connections": 0}, InvalidArgumentError),
    ({"service_id": "x", "health_path": "health"}, InvalidArgumentError),
])
def test_bad_backend_rejected(kwargs: dict, err: type) -> None:
    """Bad BackendService fields raise the library's typed errors naming the value."""
    with pytest.raises(err) as ei:
        BackendService(**kwargs)
    assert isinstance(ei.value, HwoptError)


def test_duplicate_and_unknown_ids_leave_balancer_serving() -> None:
    """Duplicate ids, unknown ids and unknown request types raise, and the balancer keeps its backends."""
    lb = make(2)
    with pytest.raises(AlreadyExistsError):
        lb.register_service(BackendService(service_id="b0", port=9999))
    with pytest.raises(NotFoundError):
        lb.deregister_service("nope")
    with pytest.raises(InvalidArgumentError):
        lb.select_backend_sync("not-a-type")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        lb.register_service("b3")  # type: ignore[arg-type]
    assert [s.service_id for s in lb.services()] == ["b0", "b1"]
    assert lb.services()[0].port == 8000
    got = {lb.select_backend_sync().service_id for _ in range(4)}
    assert got == {"b0", "b1"}


def test_record_result_validation() -> None:
    """record_result rejects unknown ids, negative latency and double recording without changing counts."""
    lb = make(1)
    s = lb.select_backend_sync()
    with pytest.raises(InvalidArgumentError):
        lb.record_result(s.service_id, -1.0, True)
    with pytest.raises(NotFoundError):
        lb.record_result("nope", 0.1, True)
    assert lb.in_flight("b0") == 1
    lb.record_result(s.service_id, 0.1, True)
    with pytest.raises(StateError):
        lb.record_result(s.service_id, 0.1, True)
    assert lb.in_flight() == 0


def test_max_connections_enforced_and_typed_error() -> None:
    """A backend never gets more than max_connections in flight; all full raises NoBackendAvailableError."""
    lb = make(2, max_connections=2)
    picks = [lb.select_backend_sync().service_id for _ in range(4)]
    assert sorted(picks) == ["b0", "b0", "b1", "b1"]
    with pytest.raises(NoBackendAvailableError) as ei:
        lb.select_backend_sync()
    assert isinstance(ei.value, RuntimeError)
    lb.record_result("b1", 0.01, True)
    assert lb.select_backend_sync().service_id == "b1"


def test_no_backend_registered() -> None:
    """An empty balancer raises NoBackendAvailableError saying none is registered."""
    lb = DynamicLoadBalancer()
    with pytest.raises(NoBackendAvailableError, match="no backend is registered"):
        lb.select_backend_sync()


def test_async_wait_for_free_backend() -> None:
    """select_backend(wait_timeout=...) waits until a slot frees; without a free slot it times out typed."""
    lb = make(1, max_connections=1)

    async def main() -> None:
        first = await lb.select_backend()
        waiter = asyncio.ensure_future(lb.select_backend(wait_timeout=30))
        await asyncio.sleep(0)
        assert not waiter.done()
        lb.record_result(first.service_id, 0.01, True)
        second = await waiter
        assert second.service_id == "b0"
        with pytest.raises(NoBackendAvailableError):
            await lb.select_backend(wait_timeout=0.01)
        lb.record_result(second.service_id, 0.01, True)

    asyncio.run(main())
    assert lb.in_flight() == 0


def test_deregister_while_in_flight_drains() -> None:
    """A deregistered backend gets no new requests; results of its in-flight requests are still accepted."""
    lb = make(2)
    s = lb.select_backend_sync()
    lb.deregister_service(s.service_id)
    assert all(lb.select_backend_sync().service_id != s.service_id for _ in range(3))
    lb.record_result(s.service_id, 0.05, True)
    with pytest.raises(NotFoundError):
        lb.record_result(s.service_id, 0.05, True)


def test_analytics_reports_quantiles_and_types() -> None:
    """analytics() gives per-backend, per-type counts, errors and p50/p99 close to the recorded latencies."""
    lb = make(1)
    for i in range(100):
        s = lb.select_backend_sync(RequestType.COMPUTE_HEAVY)
        lb.record_result(s.service_id, 0.001 * (i + 1), i % 10 != 0, RequestType.COMPUTE_HEAVY)
    a = lb.analytics()["backends"]["b0"]
    t = a["by_type"]["compute_heavy"]
    assert t["requests"] == 100 and t["errors"] == 10
    assert abs(t["p50_s"] - 0.050) <= 0.050 * 0.05
    assert abs(t["p99_s"] - 0.099) <= 0.099 * 0.05
    assert a["in_flight"] == 0


def test_per_type_algorithm_and_session_affinity() -> None:
    """Request types can use their own algorithm; a session id sticks to one backend."""
    lb = make(4, algorithm="round_robin")
    lb.set_algorithm(RequestType.COMPUTE_HEAVY, "least_connections")
    seen = set()
    for _ in range(10):
        s = lb.select_backend_sync(session_id="user-42")
        seen.add(s.service_id)
        lb.record_result(s.service_id, 0.01, True)
    assert len(seen) == 1
    with pytest.raises(InvalidArgumentError):
        lb.set_algorithm(RequestType.LIGHT, "random")
