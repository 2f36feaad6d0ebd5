"""Hypothesis state machine: the compiled shared index against a dict model, check() after every step."""

from __future__ import annotations

import gc

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sutazai_hwopt.cache.codec import key_hash
from sutazai_hwopt.cache.shared_index import SharedTier
from sutazai_hwopt.memory.segment import list_segments
from sutazai_hwopt.testing import throwaway_namespace

KEYS = st.sampled_from([b"k%d" % i for i in range(24)])


class IndexMachine(RuleBasedStateMachine):
    """Random put/get/delete/evict/clear/pin/repair sequences on a small tier (so eviction happens)."""

    def __init__(self) -> None:
        super().__init__()
        self._ns_cm = throwaway_namespace("csm")
        self.ns = self._ns_cm.__enter__()
        self.tier = SharedTier(self.ns, "l2", 1 << 20, max_entries=16)
        self.model: dict[bytes, tuple[bytes, int]] = {}
        self.views: list[tuple[memoryview, bytes]] = []

    def teardown(self) -> None:
        self.views.clear()
        gc.collect()
        self.tier.destroy()
        assert list_segments(self.ns) == []
        self._ns_cm.__exit__(None, None, None)

    def _sync(self) -> None:
        # Entries may only disappear by eviction: the index must be a subset of the model with equal values.
        keys = set(self.tier.index.keys())
        for k in list(self.model):
            if k not in keys:
                del self.model[k]
        assert keys == set(self.model)

    @rule(k=KEYS, size=st.sampled_from([0, 1, 100, 2000, 5000, 70000]), prio=st.integers(0, 9),
          fill=st.integers(0, 255))
    def put(self, k: bytes, size: int, prio: int, fill: int) -> None:
        value = bytes([fill]) * size
        self.tier.put(k, key_hash(k), 1, b"h" + k, [value], prio)
        self.model[k] = (value, prio)
        self._sync()
        assert k in self.model, "a value just put must be present"

    @rule(k=KEYS)
    def get(self, k: bytes) -> None:
        r = self.tier.index.get(k, key_hash(k), False)
        if k in self.model:
            assert r is not None
            kind, prio, head, body = r
            assert (kind, head, bytes(body), prio) == (1, b"h" + k, self.model[k][0], self.model[k][1])
        else:
            assert r is None

    @rule(k=KEYS)
    def pin(self, k: bytes) -> None:
        r = self.tier.get(k, key_hash(k))
        if k in self.model:
            assert r is not None
            self.views.append((memoryview(r[3]), self.model[k][0]))
        else:
            assert r is None

    @precondition(lambda self: self.views)
    @rule(i=st.integers(0, 100))
    def unpin(self, i: int) -> None:
        self.views.pop(i % len(self.views))
        gc.collect()

    @rule(k=KEYS)
    def delete(self, k: bytes) -> None:
        assert self.tier.index.delete(k, key_hash(k)) == (k in self.model)
        self.model.pop(k, None)

    @rule(n=st.integers(1, 4))
    def evict(self, n: int) -> None:
        before = len(self.model)
        got = self.tier.index.evict(n)
        self._sync()
        assert got == min(n, before) and len(self.model) == before - got

    @rule()
    def clear(self) -> None:
        self.tier.index.clear()
        self.model.clear()

    @rule()
    def repair(self) -> None:
        self.tier.index.repair()
        self._sync()

    @invariant()
    def consistent(self) -> None:
        assert self.tier.check()
        assert len(self.tier.index) == len(self.model)
        s = self.tier.index.stats()
        assert s["bytes"] + s["zombie_bytes"] <= s["heap_bytes"]
        assert sum(s["by_priority"]) == s["entries"]
        for view, expected in self.views:
            assert view == expected, "a pinned view changed under the reader"


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


def test_compiled_core_is_used() -> None:
    """The tier runs on the compiled index, not a Python fallback."""
    from sutazai_hwopt._native import shmcache_index

    assert shmcache_index.__file__.endswith(".so")
