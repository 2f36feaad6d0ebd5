"""The public Cache API: mapping behaviour, bounds, TTL, priorities, callbacks, stats and bad input."""

from __future__ import annotations

import collections.abc
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sutazai_hwopt
from sutazai_hwopt.cache import POLICIES, Cache, CacheStats, describe
from sutazai_hwopt.errors import InvalidArgumentError, UnhashableKeyError, WeightError
from sutazai_hwopt.testing import FakeClock


def test_default_import_uses_compiled_core() -> None:
    """Cache is built on the compiled extension module, not a Python fallback."""
    from sutazai_hwopt._native import cache_core

    assert cache_core.__file__.endswith(".so")
    assert issubclass(Cache, cache_core.CacheCore)
    assert sutazai_hwopt.Cache is Cache
    assert sutazai_hwopt.cached is sutazai_hwopt.cache.cached


@pytest.mark.parametrize("policy", POLICIES)
def test_mapping_basics(policy: str) -> None:
    """get/put/del/pop/in/len/iter/clear behave like a dict within the bound."""
    c = Cache(10, policy)
    for i in range(5):
        c[i] = str(i)
    assert len(c) == 5 and c.currsize == 5 and c.maxsize == 10
    assert c[3] == "3" and c.get(3) == "3" and c.get(99, "d") == "d"
    assert 4 in c and 99 not in c
    del c[4]
    assert 4 not in c
    with pytest.raises(KeyError):
        del c[4]
    with pytest.raises(KeyError):
        _ = c[4]
    assert c.pop(3) == "3" and c.pop(3, None) is None
    assert sorted(c) == [0, 1, 2] and sorted(c.keys()) == [0, 1, 2]
    assert sorted(c.items()) == [(0, "0"), (1, "1"), (2, "2")]
    assert isinstance(c, collections.abc.MutableMapping)
    c.clear()
    assert len(c) == 0 and list(c) == []
    assert policy in POLICIES and describe(policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_bound_holds_and_stats_count(policy: str) -> None:
    """The entry bound is never exceeded and every miss-then-put beyond it counts one eviction."""
    c = Cache(50, policy)
    for i in range(1000):
        if c.get(i % 70) is None:
            c[i % 70] = i
        assert len(c) <= 50
    s = c.stats()
    assert isinstance(s, CacheStats)
    assert s.hits + s.misses == 1000
    assert s.evictions == s.misses - len(c)
    assert 0.0 <= s.hit_ratio <= 1.0
    assert c.check()


def test_contains_is_not_an_access() -> None:
    """`key in c` and peek do not change hit/miss counters nor LRU order."""
    c = Cache(2, "lru")
    c["a"] = 1
    c["b"] = 2
    assert "a" in c and c.peek("a") == 1
    c["c"] = 3    # evicts "a": the membership test did not refresh it
    assert "a" not in c
    assert c.stats().hits == 0 and c.stats().misses == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40)), max_size=80))
def test_weighted_bound_never_exceeded(ops: list[tuple[int, int]]) -> None:
    """With max_bytes and a weigher, the current weight never exceeds the bound after a put returns."""
    c = Cache(1000, max_bytes=100, weigher=lambda k, v: v)
    for k, w in ops:
        c.put(k, w)
        assert c.current_weight <= 100
        assert c.current_weight == sum(v for _, v in c.items())


def test_default_weigher_uses_getsizeof() -> None:
    """max_bytes without a weigher weighs values by sys.getsizeof."""
    c = Cache(10, max_bytes=10_000)
    v = "x" * 100
    c["k"] = v
    assert c.current_weight == sys.getsizeof(v)


def test_ttl_expires_with_fake_clock() -> None:
    """An entry is returned before its TTL and never after; expire() purges and counts it."""
    clock = FakeClock(0.0)
    events: list[tuple[object, object, str]] = []
    c = Cache(10, ttl=5.0, clock=clock, on_evict=lambda k, v, cause: events.append((k, v, cause)))
    c["a"] = 1
    c.put("b", 2, ttl=20.0)
    clock.advance(4.9)
    assert c["a"] == 1
    clock.advance(0.2)
    assert c.get("a") is None and "a" not in c
    assert c["b"] == 2
    clock.advance(30)
    assert c.expire() == 1
    assert len(c) == 0 and c.stats().expirations == 2
    assert ("b", 2, "expired") in events


def test_ttl_wheel_many_entries() -> None:
    """Thousands of TTL entries spread over many wheel rounds all expire on time, none early."""
    clock = FakeClock(0.0)
    c = Cache(10_000, ttl=1.0, clock=clock)
    for i in range(5000):
        c.put(i, i, ttl=0.01 + (i % 500) * 0.37)
    for _ in range(200):
        clock.advance(1.0)
        c.expire()
        now = clock()
        for i in range(0, 5000, 97):
            alive = i in c
            assert alive == (0.01 + (i % 500) * 0.37 > now)
    assert len(c) == 0


def test_priority_protects_higher_levels() -> None:
    """Lower priorities are evicted first; an entry is refused rather than displacing higher ones."""
    c = Cache(3, "lru")
    c.put("hi", 1, priority=9)
    c.put("mid", 1, priority=5)
    for i in range(10):
        c[i] = i
    assert "hi" in c and "mid" in c and len(c) == 3
    assert c.put("mid2", 1, priority=5) is True   # evicts the priority-0 entry, not "mid"
    assert "hi" in c and "mid" in c
    assert c.put("x", 1) is False                  # priority 0 cannot displace 5 or 9
    assert c.stats().rejections == 1
    assert c.put("top", 1, priority=9) is True     # evicts the oldest priority-5 entry
    assert "mid" not in c and "mid2" in c and "hi" in c


def test_on_evict_receives_evicted_entries_and_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """on_evict gets (key, value, 'evicted'); an exception in it is logged, not raised."""
    seen: list[tuple[object, object, str]] = []
    c = Cache(2, "lru", on_evict=lambda k, v, cause: seen.append((k, v, cause)))
    c[1] = "a"
    c[2] = "b"
    c[3] = "c"
    assert seen == [(1, "a", "evicted")]

    def boom(k: object, v: object, cause: str) -> None:
        raise RuntimeError("boom")

    c2 = Cache(1, "lru", on_evict=boom)
    c2[1] = 1
    c2[2] = 2
    assert 2 in c2 and "on_evict callback raised" in caplog.text


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True, None, 2**40])
def test_bad_maxsize(bad: object) -> None:
    """maxsize must be an integer in range; the error names it."""
    with pytest.raises(InvalidArgumentError, match="maxsize"):
        Cache(bad)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    """Unknown policy, bad max_bytes, ttl, priority and callables raise InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match="policy"):
        Cache(10, "fifo")
    with pytest.raises(InvalidArgumentError, match="max_bytes"):
        Cache(10, max_bytes=-5)
    with pytest.raises(InvalidArgumentError, match="ttl"):
        Cache(10, ttl=-1)
    with pytest.raises(InvalidArgumentError, match="weigher"):
        Cache(10, weigher=3)  # type: ignore[arg-type]
    c = Cache(10)
    with pytest.raises(InvalidArgumentError, match="priority"):
        c.put(1, 1, priority=10)
    with pytest.raises(InvalidArgumentError, match="ttl"):
        c.put(1, 1, ttl=float("nan"))
    assert len(c) == 0


def test_bad_input_leaves_cache_unchanged() -> None:
    """Unhashable keys, bad weights and oversize entries raise and change nothing."""
    c = Cache(10, max_bytes=100, weigher=lambda k, v: v)
    c.put("a", 10)
    before = (sorted(c.items()), c.stats())
    with pytest.raises(UnhashableKeyError):
        c[[1, 2]] = 1
    with pytest.raises(TypeError):        # still a TypeError, as for dict
        _ = c.get({})
    with pytest.raises(WeightError, match="weigher result"):
        c.put("b", -3)
    with pytest.raises(WeightError, match="weigher result"):
        c.put("b", "heavy")
    with pytest.raises(WeightError, match="larger than max_bytes"):
        c.put("b", 101)
    with pytest.raises(WeightError, match="weight"):
        c.put("b", 1, weight=float("inf"))
    with pytest.raises(WeightError):
        c.put("a", 5, weight=-1)
    assert (sorted(c.items()), c.stats()) == before


def test_weigher_exception_propagates_without_change() -> None:
    """A weigher that raises leaves the cache as it was."""
    def weigher(k: object, v: object) -> int:
        raise ValueError("nope")

    c = Cache(10, max_bytes=100, weigher=weigher)
    with pytest.raises(ValueError, match="nope"):
        c["k"] = 1
    assert len(c) == 0 and c.current_weight == 0


def test_key_with_custom_eq_and_colliding_hash() -> None:
    """Keys with equal hashes but different identity are kept apart; equal keys find each other."""
    class K:
        def __init__(self, v: int) -> None:
            self.v = v

        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            return isinstance(other, K) and other.v == self.v

    c = Cache(100, "lru")
    for i in range(20):
        c[K(i)] = i
    assert all(c[K(i)] == i for i in range(20))
    del c[K(5)]
    assert K(5) not in c and c[K(6)] == 6
    assert c.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_str_keys_found_by_value_not_identity(policy: str) -> None:
    """The str fast path of the lookup: an equal but distinct str of any width finds the entry, a str subclass
    (its own __eq__ and __hash__) and a str equal to a stored subclass key still compare as Python would."""
    class Folded(str):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and self.lower() == other.lower()

        def __hash__(self) -> int:
            return hash(self.lower())

    words = ["plain", "caf\u00e9", "\u0394\u03b5\u03bb\u03c4\u03b1", "\U0001f600 face", "", "x" * 300]
    c = Cache(64, policy)
    for w in words:
        c["".join(list(w))] = w                 # stored key: a distinct object from every lookup key below
    c[Folded("MiXeD")] = "folded"
    c[str(12345)] = "digits"
    for w in words:
        probe = "".join(list(w))
        assert probe is not w or w == ""        # (the empty str is a singleton)
        assert c.get(probe) == w and c[probe] == w and probe in c
    assert c.get("mixed") == "folded" and c.get(Folded("MIXED")) == "folded"
    assert c.get("12345") == "digits" and c.get(Folded("12345")) == "digits"
    assert c.get("caf\u00e9 ") is None and c.get("plain\x00") is None
    assert c.check()


def test_sizeof_within_budget() -> None:
    """The compiled structure costs at most 64 bytes per entry at full occupancy (adaptive policy)."""
    c = Cache(10_000)
    for i in range(10_000):
        c[i] = None
    assert c.__sizeof__() / 10_000 <= 64


def test_adaptive_switches_to_the_better_policy_and_keeps_entries() -> None:
    """On a sliding working set where LRU beats W-TinyLFU by 9 points, adaptive migrates to LRU, loses nothing."""
    import numpy as np

    from sutazai_hwopt._native.cache_core import CacheCore

    rng = np.random.default_rng(0)
    n = 60_000
    trace = (np.arange(n) // 40 + rng.integers(0, 180, n)).astype(np.int64)
    c = CacheCore(200, "adaptive")
    hits = c._simulate(trace)
    assert c.switches >= 1 and c._policy_state()["kind"] == "lru"
    assert len(c) == 200 and c.check()
    lru_hits = CacheCore(200, "lru")._simulate(trace)
    wt_hits = CacheCore(200, "wtinylfu")._simulate(trace)
    assert hits > wt_hits and hits >= 0.99 * lru_hits


def test_on_evict_may_reenter_the_cache() -> None:
    """An on_evict callback that writes back into the same cache sees a consistent structure."""
    c: Cache

    def back(k: object, v: object, cause: str) -> None:
        if isinstance(k, int) and k % 3 == 0:
            c.put(("again", k), v)

    c = Cache(20, "adaptive", on_evict=back)
    for i in range(500):
        c[i] = i
        assert len(c) <= 20
    assert c.check() and any(isinstance(k, tuple) for k in c)


@pytest.mark.parametrize("attr", ["weigher", "on_evict", "clock"])
def test_callables_are_set_by_the_constructor_only(attr: str) -> None:
    """Assigning on_evict later would bypass the logging wrapper: the core's callables are read-only."""
    seen: list[object] = []

    def boom(k: object, v: object, cause: str) -> None:
        seen.append(k)
        raise RuntimeError("callback failure")

    c = Cache(1, "lru", on_evict=boom)
    with pytest.raises(AttributeError):
        setattr(c, attr, print)
    c["a"] = 1
    c["b"] = 2          # evicts "a": the wrapper logs boom's exception instead of raising it
    assert seen == ["a"] and list(c) == ["b"]


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 20)), max_size=40), st.integers(0, 60))
def test_expire_at_a_time_matches_a_model(puts: list[tuple[int, int]], at: int) -> None:
    """expire(now, collect=True) returns exactly the entries whose deadline is <= now, and only removes those."""
    clock = [0.0]
    c = Cache(100, "lru", clock=lambda: clock[0])
    model: dict[int, float] = {}
    for key, ttl in puts:
        c.put(key, key, ttl=ttl)
        model[key] = clock[0] + ttl
    removed = c.expire(float(at), collect=True)
    assert sorted(removed) == sorted((k, k) for k, d in model.items() if d <= at)
    assert sorted(c.keys()) == sorted(k for k, d in model.items() if d > at)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "5", True])
def test_expire_refuses_a_bad_time(bad: object) -> None:
    c = Cache(10, "lru", ttl=1)
    c["k"] = 1
    with pytest.raises(InvalidArgumentError, match="now must be"):
        c.expire(bad)  # type: ignore[call-overload]
    assert c["k"] == 1
