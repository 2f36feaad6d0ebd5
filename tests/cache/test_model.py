"""The compiled core against the plain-Python reference model, policy by policy (hypothesis state machines)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sutazai_hwopt._native.cache_core import CacheCore
from sutazai_hwopt.cache.reference import POLICIES, ReferenceCache
from sutazai_hwopt.testing import FakeClock

KEYS = st.integers(0, 14)


class CoreVsModel(RuleBasedStateMachine):
    """Drive CacheCore and ReferenceCache with the same operations; compare results, counters, policy state."""

    policy = "lru"
    weighted = False
    prio = False
    ttl = False

    @initialize(maxsize=st.integers(1, 6), max_weight=st.integers(6, 16))
    def setup(self, maxsize: int, max_weight: int) -> None:
        self.clock = FakeClock(100.0)
        mw = max_weight if self.weighted else None
        self.core = CacheCore(maxsize, self.policy, -1 if mw is None else mw, None, None, None, self.clock,
                              0.01, 7)
        self.model = ReferenceCache(maxsize, self.policy, mw, self.clock, None, 0.01, 7)

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        assert self.core.get(key, "miss") == self.model.get(key, "miss")

    @rule(key=KEYS, value=st.integers(0, 3), weight=st.integers(0, 6), prio=st.integers(0, 3),
          ttl=st.sampled_from([None, None, 1.0, 2.5]))
    def put(self, key: int, value: int, weight: int, prio: int, ttl: float | None) -> None:
        w = weight if self.weighted else 1
        p = prio if self.prio else 0
        t = ttl if self.ttl else None
        got = self.core.put(key, (key, value), weight=w if self.weighted else None, ttl=t, priority=p)
        assert got == self.model.put(key, (key, value), w, t, p)

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        want = self.model.delete(key)
        try:
            del self.core[key]
            got = True
        except KeyError:
            got = False
        assert got == want

    @rule(key=KEYS)
    def contains(self, key: int) -> None:
        assert (key in self.core) == self.model.contains(key)

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        if self.ttl:
            self.clock.advance(dt)

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "core"):
            return
        assert self.core.counters() == self.model.all_counters()
        assert self.core._policy_state() == self.model.policy_state()
        assert self.core.check()


SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _machine(policy: str, weighted: bool = False, prio: bool = False, ttl: bool = False) -> type:
    return type(f"M_{policy}", (CoreVsModel,), {"policy": policy, "weighted": weighted, "prio": prio,
                                                 "ttl": ttl})


@pytest.mark.parametrize("policy", POLICIES)
def test_core_matches_model(policy: str) -> None:
    """Every policy: same get/put/del results, counters and list orders as the reference model."""
    SETTINGS(_machine(policy)).TestCase().runTest()


@pytest.mark.parametrize("policy", POLICIES)
def test_core_matches_model_weights_priorities_ttl(policy: str) -> None:
    """With weights, a byte bound, priorities and TTLs mixed in, core and model still agree exactly."""
    SETTINGS(_machine(policy, weighted=True, prio=True, ttl=True)).TestCase().runTest()


@pytest.mark.parametrize("policy", ["lirs", "adaptive"])
def test_lirs_after_the_only_lir_entry_is_deleted(policy: str) -> None:
    """Deleting the only LIR block, then hitting a HIR block outside S, once left S with a non-LIR block at the
    bottom; a later promotion demoted a ghost into Q (a NULL-key slot among resident entries). Found by the
    state machine above; core and model must agree and check() must hold at every step."""
    clock = FakeClock(100.0)
    core = CacheCore(2, policy, -1, None, None, None, clock, 0.01, 7)
    model = ReferenceCache(2, policy, None, clock, None, 0.01, 7)
    for op, key in [("put", 7), ("put", 4), ("del", 7), ("get", 4), ("put", 7), ("put", 13), ("put", 12),
                    ("put", 11), ("put", 12), ("get", 4), ("get", 12), ("put", 4)]:
        if op == "put":
            assert core.put(key, key) == model.put(key, key, 1, None, 0)
        elif op == "del":
            del core[key]
            assert model.delete(key)
        else:
            assert core.get(key, "miss") == model.get(key, "miss")
        assert core._policy_state() == model.policy_state()
        assert core.check()
