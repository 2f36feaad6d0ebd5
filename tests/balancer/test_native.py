"""The compiled core against its pure-Python reference: same selections, counters and quantiles."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sutazai_hwopt._native import balancer_core
from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer, LatencySketch, RequestType
from sutazai_hwopt.balancer.sketch import ReferenceLatencySketch
from sutazai_hwopt.config import BalancerSection
from sutazai_hwopt.errors import HwoptError
from sutazai_hwopt.testing import FakeClock


def test_default_import_uses_compiled_core() -> None:
    """The balancer's default hot path and sketch are the compiled ones (a broken build cannot fall back)."""
    lb = DynamicLoadBalancer()
    assert isinstance(lb._c, balancer_core.Core)
    assert lb.select_backend_sync == lb._c.select
    assert lb.record_result == lb._c.record
    assert LatencySketch is balancer_core.Sketch
    assert balancer_core.__file__.endswith(".so")


class SketchMachine(RuleBasedStateMachine):
    """Compiled Sketch vs ReferenceLatencySketch: identical counts and quantiles after any sequence of adds."""

    def __init__(self) -> None:
        super().__init__()
        self.c = LatencySketch(0.02)
        self.p = ReferenceLatencySketch(0.02)

    @rule(v=st.one_of(st.just(0.0), st.floats(1e-10, 1e4)))
    def add(self, v: float) -> None:
        self.c.add(v)
        self.p.add(v)

    @rule(q=st.floats(0.0, 1.0))
    def quantile(self, q: float) -> None:
        assert self.c.quantile(q) == self.p.quantile(q)

    @invariant()
    def same(self) -> None:
        assert self.c.count == self.p.count
        assert self.c.summary() == self.p.summary()


TestSketchMachine = SketchMachine.TestCase
TestSketchMachine.settings = settings(max_examples=30, stateful_step_count=40, deadline=None)

ALGOS = ["adaptive", "round_robin", "p2c", "least_connections"]


class BalancerMachine(RuleBasedStateMachine):
    """A compiled-path balancer and a pure-Python one, fed the same operations, stay identical."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.lbs: list[DynamicLoadBalancer] = []
        self.held: list[tuple[str, RequestType]] = []
        self.n = 0

    @precondition(lambda self: not self.lbs)
    @rule(algo=st.sampled_from(ALGOS), n=st.integers(1, 6), mc=st.integers(1, 4))
    def setup(self, algo: str, n: int, mc: int) -> None:
        for reference in (False, True):
            lb = DynamicLoadBalancer(BalancerSection(consecutive_failures=2, max_ejection_percent=50.0),
                                     algorithm=algo, clock=self.clock, seed=11, reference=reference)
            for i in range(n):
                lb.register_service(BackendService(service_id=f"b{i}", port=8000 + i, weight=1.0 + i % 3,
                                                   max_connections=mc))
            self.lbs.append(lb)
        self.n = n

    def both(self, fn_name: str, *args: object) -> object:
        out = []
        for lb in self.lbs:
            try:
                out.append(("ok", getattr(lb, fn_name)(*args)))
            except HwoptError as e:
                out.append(("err", type(e)))
        assert out[0] == out[1], (fn_name, args, out)
        return out[0]

    @precondition(lambda self: self.lbs)
    @rule(heavy=st.booleans())
    def select(self, heavy: bool) -> None:
        rt = RequestType.COMPUTE_HEAVY if heavy else RequestType.DEFAULT
        kind, val = self.both("select_backend_sync", rt)  # type: ignore[misc]
        if kind == "ok":
            self.held.append((val.service_id, rt))

    @precondition(lambda self: self.lbs and self.held)
    @rule(i=st.integers(0, 100), ok=st.booleans(), lat=st.floats(0.0, 2.0))
    def record(self, i: int, ok: bool, lat: float) -> None:
        sid, rt = self.held.pop(i % len(self.held))
        self.both("record_result", sid, lat, ok, rt)

    @precondition(lambda self: self.lbs)
    @rule(dt=st.floats(0.0, 1.5))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @precondition(lambda self: self.lbs)
    @rule(i=st.integers(0, 5), ok=st.booleans())
    def health(self, i: int, ok: bool) -> None:
        self.both("report_health", f"b{i % self.n}", ok)

    @invariant()
    def identical(self) -> None:
        if self.lbs:
            a, b = (lb.analytics() for lb in self.lbs)
            assert a == b
            assert self.lbs[0].in_flight() == len(self.held)


TestBalancerMachine = BalancerMachine.TestCase
TestBalancerMachine.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
