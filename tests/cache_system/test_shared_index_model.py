"""Hypothesis state machine: the compiled shared index against a dict model, check() after every step."""

from __future__ import annotations

import gc

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sutazai_hwopt._native.shmcache_index import ST_FAILED, ST_LOADING, ST_VALID
from sutazai_hwopt.cache.codec import key_hash
from sutazai_hwopt.cache.shared_index import SharedTier
from sutazai_hwopt.shm import list_segment_names
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
        self.markers: dict[bytes, tuple[str, int]] = {}   # key -> ("loading" | "failed", generation)
        self.views: list[tuple[memoryview, bytes]] = []

    def teardown(self) -> None:
        self.views.clear()
        gc.collect()
        self.tier.destroy()
        assert list_segment_names(self.ns) == []
        self._ns_cm.__exit__(None, None, None)

    def _sync(self) -> None:
        # Entries may only disappear by eviction: the index must be a subset of the model with equal values.
        keys = set(self.tier.index.keys())
        for d in (self.model, self.markers):
            for k in list(d):
                if k not in keys:
                    del d[k]
        assert keys == set(self.model) | set(self.markers)
        assert not set(self.model) & set(self.markers)

    @rule(k=KEYS, size=st.sampled_from([0, 1, 100, 2000, 5000, 70000]), prio=st.integers(0, 9),
          fill=st.integers(0, 255))
    def put(self, k: bytes, size: int, prio: int, fill: int) -> None:
        value = bytes([fill]) * size
        self.tier.put(key=k, key_hash=key_hash(k), kind=1, priority=prio, head=b"h" + k, body=[value])
        self.markers.pop(k, None)
        self.model[k] = (value, prio)
        self._sync()
        assert k in self.model, "a value just put must be present"

    @rule(k=KEYS)
    def get(self, k: bytes) -> None:
        r = self.tier.index.get(k, key_hash(k), False)   # markers read as misses
        if k in self.model:
            assert r is not None
            kind, prio, head, body = r
            assert (kind, head, bytes(body), prio) == (1, b"h" + k, self.model[k][0], self.model[k][1])
        else:
            assert r is None

    @rule(k=KEYS)
    def pin(self, k: bytes) -> None:
        r = self.tier.get(key=k, key_hash=key_hash(k))
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
        assert self.tier.index.delete(k, key_hash(k)) == (k in self.model or k in self.markers)
        self.model.pop(k, None)
        self.markers.pop(k, None)

    @rule(k=KEYS)
    def begin_load(self, k: bytes) -> None:
        claimed, state, pid, start, gen = self.tier.index.begin_load(k, key_hash(k), 4242, 77)
        if k in self.model:
            assert not claimed and state == ST_VALID
        elif k in self.markers and self.markers[k][0] == "loading":
            assert not claimed and state == ST_LOADING and gen == self.markers[k][1]
        else:
            assert claimed and state == ST_LOADING and (pid, start) == (4242, 77)
            self.markers[k] = ("loading", gen)
            self._sync()

    @rule(k=KEYS)
    def steal(self, k: bytes) -> None:
        m = self.markers.get(k)
        if m is None or m[0] != "loading":
            return
        claimed, _, pid, _, gen = self.tier.index.begin_load(k, key_hash(k), 999, 1, m[1])
        assert claimed and pid == 999 and gen != m[1]
        self.markers[k] = ("loading", gen)
        self._sync()

    @rule(k=KEYS, fail=st.booleans(), stale=st.booleans())
    def end_load(self, k: bytes, fail: bool, stale: bool) -> None:
        m = self.markers.get(k)
        gen = (m[1] if m else 1) + (7 if stale else 0)
        ok = self.tier.index.end_load(k, key_hash(k), gen, b"boom" if fail else None)
        if m is None or m[0] != "loading" or stale:
            assert not ok
            return
        assert ok
        if fail:
            self.markers[k] = ("failed", m[1])
            st_ = self.tier.index.entry_state(k, key_hash(k))
            assert st_ is not None and st_[0] == ST_FAILED and st_[3] == m[1] and st_[4] == b"boom"
        else:
            del self.markers[k]
        self._sync()

    @rule(n=st.integers(1, 4))
    def evict(self, n: int) -> None:
        before = len(self.model) + len(self.markers)
        got = self.tier.index.evict(n)
        self._sync()
        assert got == min(n, before) and len(self.model) + len(self.markers) == before - got

    @rule()
    def clear(self) -> None:
        self.tier.index.clear()
        self.model.clear()
        self.markers.clear()

    @rule()
    def repair(self) -> None:
        self.tier.index.repair()
        self._sync()

    @invariant()
    def consistent(self) -> None:
        assert self.tier.check()
        assert len(self.tier.index) == len(self.model) + len(self.markers)
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
