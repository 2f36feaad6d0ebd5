"""The adaptive policy's use of host-wide and published figures: the latency factor only without a host-wide
count, compiled and Python costs alike, and a published slowdown that ages while the backend is idle.

No timing: backends' figures are set directly or published through a real table with simulated service times.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator

import pytest

from sutazai_hwopt._native import balancer_core
from sutazai_hwopt.balancer import BackendService, Reporter
from sutazai_hwopt.balancer.algorithms import Adaptive
from sutazai_hwopt.balancer.shared import SharedState
from sutazai_hwopt.balancer.state import Backend


@pytest.fixture()
def table() -> Iterator[SharedState]:
    s = SharedState.create(f"hwopt_test_pol_{uuid.uuid4().hex[:12]}", slots=8)
    yield s
    s.close()
    s.unlink()


def _backend(i: int = 0, weight: float = 1.0) -> Backend:
    return Backend(BackendService(service_id=f"b{i}", port=8000 + i, weight=weight), i)


def _state(b: Backend, own: int, others: int, work: float, workers: float) -> Backend:
    """``own`` unit requests of this process in flight, ``others`` requests of other processes of ``work``."""
    b.in_flight = own
    b.load = float(own)
    b.extra = float(others)
    b.xwork = work
    b.pworkers = workers
    b.pslow = 1.0 if workers else 0.0
    return b


def test_latency_factor_only_without_a_host_wide_count() -> None:
    """A backend whose latency runs above twice its normal is penalised only when its host-wide outstanding
    count is unknown (no slot): with one, the queue behind that latency is already counted."""
    cost = Adaptive(peers=1.0).cost
    b = _state(_backend(), 0, 0, 0.0, 0.0)
    b.base, b.ewma = 0.010, 0.080
    assert cost(b) == pytest.approx(2.0)  # sqrt(0.08 / 0.02)
    b.slot = 3
    assert cost(b) == 1.0


def test_compiled_and_python_costs_pick_alike() -> None:
    """native_select (the compiled adaptive_cost) and Adaptive.select agree on random published states."""
    rng = random.Random(11)
    for trial in range(300):
        cands = []
        for i in range(6):
            b = _backend(i, rng.choice([0.2, 0.5, 1.0]))
            own, others = rng.randrange(4), rng.randrange(5)
            _state(b, own, others, others * rng.choice([1.0, 2.5, 10.0]), rng.choice([0.0, 1.0, 2.0, 4.0]))
            if b.pworkers and rng.random() < 0.3:
                b.pslow = rng.uniform(2.0, 5.0)
            if not b.pworkers:
                b.base, b.ewma = 0.01, rng.choice([0.0, 0.015, 0.05])
                b.slot = rng.choice([-1, 2])
            cands.append(b)
        mc = rng.choice([1.0, 10.0])
        picks = []
        for compiled in (True, False):
            algo = Adaptive(rng=random.Random(trial), peers=1.0)
            if compiled:
                got = balancer_core.native_select(algo.native_code, algo.state, cands, mc)
            else:
                algo.tcost = {None: balancer_core.TypeCost()}  # type: ignore[dict-item]
                algo.tcost[None].cost = mc  # type: ignore[index]
                got = algo.select(cands, None, None)  # type: ignore[arg-type]
            picks.append(got.sid)
        assert picks[0] == picks[1], trial


def _slowed(table: SharedState, sid: str) -> Reporter:
    """A reporter whose recent service time is 5x its normal one (simulated service times)."""
    rep = Reporter(table, sid, workers=2)
    for _ in range(600):
        rep.core.enter()
        rep.core.exit(0.010, True)
    for _ in range(30):
        rep.core.enter()
        rep.core.exit(0.050, True)
    return rep


def test_published_slowdown_ages_while_idle_and_avoided(table: SharedState) -> None:
    """Each look at an idle backend without a new completion discounts its published slowdown (half the excess
    after PSLOW_STALE_VIEWS looks); a request in flight stops the ageing, and a completion restores the figure."""
    rep = _slowed(table, "s")
    b = _backend()
    b.slot = table.slot("s")
    b.pub_live = True
    seen = []
    for _ in range(120):
        balancer_core.shared_view([b], table.words)
        seen.append(b.pslow)
    full = seen[0]
    assert full > 3.0
    assert all(x > y > 1.0 for x, y in itertools.pairwise(seen))
    assert seen[50] - 1.0 == pytest.approx((full - 1.0) / 2)
    rep.core.enter()  # busy: the figure may be refreshed soon, it does not age
    for _ in range(20):
        balancer_core.shared_view([b], table.words)
    assert b.pslow == pytest.approx(1.0 + (full - 1.0) * 50 / (50 + 119))
    rep.core.exit(0.050, True)  # a new completion (still slow): the full figure again
    balancer_core.shared_view([b], table.words)
    assert b.pslow > 3.0 and b.pstale == 0
    rep.close()


def test_recovered_backend_gets_traffic_again(table: SharedState) -> None:
    """Two equal backends, one publishing a 4x slowdown and idle, the other kept at 2 requests in flight (2
    workers, one queued place counted: cost 2): the slowed one gets nothing at first, then, as its figure ages
    unrefreshed (below 2x after about 100 looks), a request; answered at normal speed, its published service
    time falls. Without the ageing it would never be tried."""
    from sutazai_hwopt.balancer import DynamicLoadBalancer
    from sutazai_hwopt.testing import FakeClock

    rep = _slowed(table, "s")
    ok = Reporter(table, "n", workers=2)
    for _ in range(600):
        ok.core.enter()
        ok.core.exit(0.010, True)
    lb = DynamicLoadBalancer(seed=3, shared=table, clock=FakeClock())
    for sid in ("s", "n"):
        lb.register_service(BackendService(service_id=sid, port=8001))
    picks = [lb.select_backend_sync().service_id for _ in range(2)]
    assert picks == ["n"] * 2
    for _ in range(400):
        sid = lb.select_backend_sync().service_id
        picks.append(sid)
        if sid == "s":
            break
        lb.record_result("n", 0.010, True)  # one of the two ends: n stays at two in flight
    assert "s" not in picks[:50] and picks[-1] == "s"
    before = table.published("s")["svc"]  # type: ignore[index]
    rep.core.enter()
    rep.core.exit(0.010, True)
    lb.record_result("s", 0.010, True)
    assert table.published("s")["svc"] < before  # type: ignore[index]
    for _ in range(2):
        lb.record_result("n", 0.010, True)
    rep.close()
    ok.close()
    lb.close()
