"""Properties of the balancing algorithms: exact weight shares, consistent hashing, load awareness."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sutazai_hwopt.balancer import ALGORITHMS, BackendService, DynamicLoadBalancer, RequestType
from sutazai_hwopt.testing import FakeClock


def lb_with(weights: list[float], algorithm: str) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(algorithm=algorithm, clock=FakeClock(), seed=7)
    for i, w in enumerate(weights):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i, weight=w, max_connections=10**6))
    return lb


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=12), st.integers(1, 3))
def test_smooth_wrr_exact_share_per_cycle(weights: list[int], cycles: int) -> None:
    """Smooth WRR gives each backend exactly its weight share over every full cycle, interleaved."""
    lb = lb_with([float(w) for w in weights], "weighted_round_robin")
    total = sum(weights)
    for _ in range(cycles):
        picks = Counter(lb.select_backend_sync().service_id for _ in range(total))
        assert picks == Counter({f"b{i}": w for i, w in enumerate(weights)})
    assert lb.in_flight() == total * cycles


def test_smooth_wrr_interleaves() -> None:
    """nginx's example: weights 5,1,1 give a a b a c a a, not a run of five a's."""
    lb = lb_with([5.0, 1.0, 1.0], "weighted_round_robin")
    seq = "".join("abc"[int(lb.select_backend_sync().service_id[1:])] for _ in range(7))
    assert seq == "aabacaa"


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 30), st.integers(0, 10**6))
def test_consistent_hash_moves_about_one_nth(n: int, salt: int) -> None:
    """Adding one backend to N moves only sessions to the new backend, about 1/(N+1) of them."""
    lb = lb_with([1.0] * n, "consistent_hash")
    sessions = [f"s{salt}-{i}" for i in range(1500)]

    def assign() -> dict[str, str]:
        out = {}
        for s in sessions:
            b = lb.select_backend_sync(session_id=s)
            lb.record_result(b.service_id, 0.0, True)
            out[s] = b.service_id
        return out

    before = assign()
    lb.register_service(BackendService(service_id="new", port=9999, max_connections=10**6))
    after = assign()
    moved = [s for s in sessions if before[s] != after[s]]
    assert all(after[s] == "new" for s in moved)
    p = 1.0 / (n + 1)
    sd = math.sqrt(len(sessions) * p * (1 - p))
    assert abs(len(moved) - len(sessions) * p) <= 5 * sd + 2
    lb.deregister_service("new")
    assert assign() == before


def test_consistent_hash_weight_share() -> None:
    """Weighted rendezvous hashing gives sessions in proportion to weight (3:1)."""
    lb = lb_with([3.0, 1.0], "consistent_hash")
    c = Counter()
    for i in range(4000):
        b = lb.select_backend_sync(session_id=f"u{i}")
        lb.record_result(b.service_id, 0.0, True)
        c[b.service_id] += 1
    assert 0.70 < c["b0"] / 4000 < 0.80


def test_ejected_session_falls_to_next_ranked_only() -> None:
    """Sessions of an unavailable backend move; sessions of the others stay put."""
    lb = lb_with([1.0] * 5, "consistent_hash")
    home = {}
    for i in range(500):
        b = lb.select_backend_sync(session_id=f"u{i}")
        lb.record_result(b.service_id, 0.0, True)
        home[f"u{i}"] = b.service_id
    for _ in range(2):  # two consecutive failures eject b0 (default threshold 2)
        lb.select_backend_sync(session_id=next(s for s, h in home.items() if h == "b0"))
        lb.record_result("b0", 0.0, False)
    assert lb.state_of("b0") == "ejected"
    for s, h in home.items():
        b = lb.select_backend_sync(session_id=s)
        lb.record_result(b.service_id, 0.0, True)
        assert (b.service_id == h) == (h != "b0")


@pytest.mark.parametrize("algo", ["least_connections", "p2c", "adaptive", "p2c_ewma", "latency_predicting"])
def test_load_aware_algorithms_avoid_busy_backend(algo: str) -> None:
    """Load-aware algorithms send new requests away from a backend with many requests in flight."""
    lb = lb_with([1.0] * 4, algo)
    for _ in range(12):  # warm up latency estimates
        s = lb.select_backend_sync()
        lb.record_result(s.service_id, 0.01, True)
    # Load every backend, then answer all requests except those on b0: b0 keeps them in flight.
    held = [lb.select_backend_sync().service_id for _ in range(80)]
    for sid in held:
        if sid != "b0":
            lb.record_result(sid, 0.01, True)
    assert lb.in_flight("b0") >= 5
    picks = Counter()
    for _ in range(200):
        s = lb.select_backend_sync()
        picks[s.service_id] += 1
        lb.record_result(s.service_id, 0.01, True)
    assert picks["b0"] <= 10


def test_round_robin_ignores_weights() -> None:
    """Round-robin rotates evenly whatever the weights."""
    lb = lb_with([10.0, 1.0], "round_robin")
    c = Counter(lb.select_backend_sync().service_id for _ in range(10))
    assert c == Counter({"b0": 5, "b1": 5})


def test_latency_predicting_learns_per_type() -> None:
    """ML routing learns per (backend, type) service time: heavy goes where heavy is fast, light elsewhere."""
    clock = FakeClock()
    lb = DynamicLoadBalancer(algorithm="latency_predicting", clock=clock, seed=3)
    for i in range(2):
        lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i))
    cost = {("b0", RequestType.COMPUTE_HEAVY): 1.0, ("b1", RequestType.COMPUTE_HEAVY): 0.1,
            ("b0", RequestType.LIGHT): 0.01, ("b1", RequestType.LIGHT): 0.05}
    for _ in range(50):
        for rt in (RequestType.COMPUTE_HEAVY, RequestType.LIGHT):
            s = lb.select_backend_sync(rt)
            lb.record_result(s.service_id, cost[(s.service_id, rt)], True, rt)
    heavy = Counter()
    light = Counter()
    for _ in range(40):
        s = lb.select_backend_sync(RequestType.COMPUTE_HEAVY)
        heavy[s.service_id] += 1
        lb.record_result(s.service_id, cost[(s.service_id, RequestType.COMPUTE_HEAVY)], True,
                         RequestType.COMPUTE_HEAVY)
        s = lb.select_backend_sync(RequestType.LIGHT)
        light[s.service_id] += 1
        lb.record_result(s.service_id, cost[(s.service_id, RequestType.LIGHT)], True, RequestType.LIGHT)
    assert heavy["b1"] >= 35
    assert light["b0"] >= 35


def test_every_named_algorithm_routes() -> None:
    """Every algorithm in ALGORITHMS selects a registered backend and returns in-flight to zero."""
    for name in ALGORITHMS:
        lb = lb_with([1.0, 2.0, 3.0], name)
        for _ in range(20):
            s = lb.select_backend_sync(session_id="x" if name == "consistent_hash" else None)
            lb.record_result(s.service_id, 0.001, True)
        assert lb.in_flight() == 0


@pytest.mark.parametrize("reference", [False, True])
def test_adaptive_scales_own_outstanding_by_peers(reference: bool) -> None:
    """Adaptive counts its own in-flight x peers (C3 compensation): one request on a 2x backend tips to the 1x one."""
    lb = DynamicLoadBalancer(algorithm="adaptive", clock=FakeClock(), seed=3, reference=reference)
    lb.register_service(BackendService(service_id="fast", port=8001, weight=2.0, max_connections=100))
    lb.register_service(BackendService(service_id="slow", port=8002, weight=1.0, max_connections=100))
    assert lb.select_backend_sync().service_id == "fast"  # idle: 1/2 < 1/1
    # in flight on fast: (4 x 1 + 1) / 2 = 2.5 > 1 (with peers = 1 it would be a tie at 1.0)
    assert lb.select_backend_sync().service_id == "slow"


def test_adaptive_peers_is_one_with_shared_counts() -> None:
    """With a host-wide shared table the other processes' counts are known: no compensation (peers = 1)."""
    from sutazai_hwopt.balancer.algorithms import Adaptive

    class FakeShared:  # only identity matters for the construction-time choice
        version = 0

    a = Adaptive()
    assert a.state.peers == 4.0
    lb = DynamicLoadBalancer(algorithm=a, shared=FakeShared())
    assert a.state.peers == 1.0
    b = Adaptive()
    lb.set_algorithm(RequestType.LIGHT, b)
    assert b.state.peers == 1.0


@pytest.mark.parametrize("reference", [False, True])
def test_adaptive_breaks_ties_randomly(reference: bool) -> None:
    """Equal-cost backends are picked from a seeded random scan start: clients with different seeds do not
    walk the same order (no herding), and every backend still gets its share."""
    def picks(seed: int) -> list[str]:
        lb = DynamicLoadBalancer(algorithm="adaptive", clock=FakeClock(), seed=seed, reference=reference)
        for i in range(8):
            lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i, max_connections=100))
        out = []
        for _ in range(400):
            s = lb.select_backend_sync()
            out.append(s.service_id)
            lb.record_result(s.service_id, 0.01, True)
        return out

    a, b = picks(1), picks(2)
    assert a != b and a == picks(1)
    seen = Counter(a)
    assert len(seen) == 8 and min(seen.values()) >= 20


@pytest.mark.parametrize("reference", [False, True])
def test_adaptive_counts_outstanding_by_learned_type_cost(reference: bool) -> None:
    """Once COMPUTE_HEAVY is learned to cost 10x, one heavy request in flight weighs like 10 light ones."""
    clock = FakeClock()
    lb = DynamicLoadBalancer(algorithm="adaptive", clock=clock, seed=5, reference=reference)
    for sid in ("a", "b"):
        lb.register_service(BackendService(service_id=sid, port=8001 if sid == "a" else 8002))
    for _ in range(50):
        for rt, lat in ((RequestType.DEFAULT, 0.01), (RequestType.COMPUTE_HEAVY, 0.1)):
            s = lb.select_backend_sync(rt)
            lb.record_result(s.service_id, lat, True, rt)
    clock.advance(1.0)  # the decay tick refreshes the relative costs
    heavy = lb.select_backend_sync(RequestType.COMPUTE_HEAVY).service_id
    assert lb._c.tcost[RequestType.COMPUTE_HEAVY].cost == pytest.approx(10.0)
    assert lb._c.tcost[RequestType.DEFAULT].cost == 1.0
    light = [lb.select_backend_sync(RequestType.DEFAULT).service_id for _ in range(5)]
    assert heavy not in light  # by count alone (peers 4) the 2nd light request would tie with the heavy one
    lb.record_result(heavy, 0.1, True, RequestType.COMPUTE_HEAVY)
    for sid in light:
        lb.record_result(sid, 0.01, True)
    assert all(lb._backends[s].load == 0.0 for s in ("a", "b"))
