"""Shared state across real processes: one process's ejection stops the others; outstanding counts add up."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import uuid

import pytest

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.balancer.shared import SharedState
from sutazai_hwopt.errors import IncompatibleLayoutError, PoolExhaustedError


def _make(shared: SharedState) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(algorithm="round_robin", shared=shared)
    for i in range(4):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i))
    return lb


def _failer(name: str, ready: mp.Event) -> None:  # type: ignore[valid-type]
    """Child: fail b1 until its own balancer ejects it (which publishes the ejection)."""
    shared = SharedState.attach(name)
    lb = _make(shared)
    while lb.state_of("b1") != "ejected":
        s = lb.select_backend_sync()
        lb.record_result(s.service_id, 0.001, s.service_id != "b1")
    ready.set()  # type: ignore[attr-defined]
    shared.close()


def _holder(name: str, n: int, held: mp.Event, go: mp.Event) -> None:  # type: ignore[valid-type]
    """Child: hold n requests on b0 until told to finish them."""
    shared = SharedState.attach(name)
    lb = DynamicLoadBalancer(algorithm="round_robin", shared=shared)
    lb.register_service(BackendService(service_id="b0", port=8000))
    for _ in range(n):
        lb.select_backend_sync()
    held.set()  # type: ignore[attr-defined]
    assert go.wait(60)  # type: ignore[attr-defined]
    for _ in range(n):
        lb.record_result("b0", 0.001, True)
    shared.close()


@pytest.fixture()
def shared() -> SharedState:
    name = f"hwopt_test_lb_{uuid.uuid4().hex[:12]}"
    s = SharedState.create(name, slots=16)
    yield s
    s.close()
    s.unlink()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_ejection_published_to_other_process(shared: SharedState) -> None:
    """After a child process ejects b1, this process sends nothing to b1 without seeing a failure itself."""
    lb = _make(shared)
    assert {lb.select_backend_sync().service_id for _ in range(4)} == {"b0", "b1", "b2", "b3"}
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_failer, args=(shared.name, ready))
    p.start()
    p.join(120)
    assert p.exitcode == 0 and ready.is_set()
    assert shared.ejected_until("b1") > 0
    picks = [lb.select_backend_sync().service_id for _ in range(12)]
    assert "b1" not in picks
    assert lb.state_of("b1") == "ejected"


def test_outstanding_counts_add_up_across_processes(shared: SharedState) -> None:
    """Children's held requests add up host-wide, steer another balancer away, and return to zero after."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    held = [ctx.Event(), ctx.Event()]
    procs = [ctx.Process(target=_holder, args=(shared.name, n, h, go)) for n, h in zip((3, 5), held)]
    for p in procs:
        p.start()
    for h in held:
        assert h.wait(120)
    assert shared.outstanding("b0") == 8
    # A balancer sharing the table sees the host-wide load: with b0 busy elsewhere it picks b1.
    lb = DynamicLoadBalancer(algorithm="adaptive", shared=shared)
    lb.register_service(BackendService(service_id="b0", port=8000))
    lb.register_service(BackendService(service_id="b1", port=8001))
    assert [lb.select_backend_sync().service_id for _ in range(5)] == ["b1"] * 5
    for _ in range(5):
        lb.record_result("b1", 0.001, True)
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert shared.outstanding("b0") == 0


def test_segment_private_and_checked(shared: SharedState) -> None:
    """The segment is mode 0600; attaching to a foreign segment raises; a full table raises typed."""
    mode = stat.S_IMODE(os.stat(f"/dev/shm/{shared.segment_name}").st_mode)
    assert mode == 0o600
    from sutazai_hwopt.shm import close_quietly, create_segment, segment_name, unlink_segment

    foreign = f"hwopt_test_foreign_{uuid.uuid4().hex[:8]}"
    other = create_segment(segment_name(foreign, "lb", "table"), 4096)   # ours, but not a balancer table
    try:
        with pytest.raises(IncompatibleLayoutError):
            SharedState.attach(foreign)
    finally:
        close_quietly(other)
        unlink_segment(other.name)
    for i in range(16):
        shared.slot(f"s{i}")
    with pytest.raises(PoolExhaustedError):
        shared.slot("one-too-many")


def _namespace_failer(ns: str, ready: mp.Event) -> None:  # type: ignore[valid-type]
    """Child: a balancer configured only with the namespace (no table handed in) fails b1 until it ejects it."""
    from sutazai_hwopt.config import load_config

    lb = DynamicLoadBalancer(load_config(overrides={"balancer": {"namespace": ns,
                                                                 "algorithm": "round_robin"}}))
    for i in range(4):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i))
    while lb.state_of("b1") != "ejected":
        s = lb.select_backend_sync()
        lb.record_result(s.service_id, 0.001, s.service_id != "b1")
    ready.set()  # type: ignore[attr-defined]
    lb.close()


def test_balancers_of_one_namespace_share_by_default() -> None:
    """Balancers given only a namespace (config key or argument) attach one host-wide table: a spawned
    process's ejection reaches this one, in-flight counts are seen by both, close() unmaps and stops sharing."""
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace("lbns") as ns:
        lb = DynamicLoadBalancer(algorithm="round_robin", namespace=ns)
        other = DynamicLoadBalancer(algorithm="round_robin", namespace=ns)
        private = DynamicLoadBalancer(algorithm="round_robin")
        for b in (lb, other, private):
            for i in range(4):
                b.register_service(BackendService(service_id=f"b{i}", port=8000 + i))
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        p = ctx.Process(target=_namespace_failer, args=(ns, ready))
        p.start()
        assert ready.wait(120)
        p.join(120)
        assert p.exitcode == 0
        picks = {lb.select_backend_sync().service_id for _ in range(8)}
        assert "b1" not in picks                         # the child's ejection, seen through the namespace
        assert "b1" in {private.select_backend_sync().service_id for _ in range(8)}   # not shared
        assert other._shared is not None and sum(other._shared.outstanding(f"b{i}") for i in range(4)) == 8
        lb.close()
        lb.close()                                       # idempotent
        assert lb._shared is None
        lb.select_backend_sync()                         # still routes, on its own view
        other.close()


def test_bad_balancer_namespace_is_refused() -> None:
    from sutazai_hwopt.errors import HwoptError

    with pytest.raises(HwoptError, match="name"):
        DynamicLoadBalancer(namespace="../etc")
