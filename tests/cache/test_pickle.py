"""A cache pickles with its entries, policy and bounds; an unpicklable value names its key."""

from __future__ import annotations

import pickle
import threading

import pytest

from sutazai_hwopt.cache import POLICIES, Cache
from sutazai_hwopt.cache.compat import LRUCache, TTLCache
from sutazai_hwopt.errors import SerializationError

_NOW = [0.0]


def _clock() -> float:
    """A module-level clock: pickled by reference, so the copy reads the same time."""
    return _NOW[0]


def _weigh(key: object, value: object) -> int:
    return len(str(value))


@pytest.mark.parametrize("policy", POLICIES)
def test_round_trip_keeps_entries_policy_and_bounds(policy: str) -> None:
    """Entries (with weight and priority), policy, maxsize and max_bytes survive; the copy works on."""
    c = Cache(50, policy, max_bytes=10_000, weigher=_weigh)
    for i in range(80):
        c[i] = "v" * (i % 7)
    c.put("w", "x", weight=123, priority=4)
    d = pickle.loads(pickle.dumps(c))
    assert type(d) is Cache and d == c and d is not c
    assert (d.policy, d.maxsize, d.max_bytes, d.current_weight) == (policy, 50, 10_000, c.current_weight)
    assert d._entry("w") == ("x", 123, 4, None)
    for i in range(200, 300):
        d[i] = "y"
    assert len(d) <= 50 and d.current_weight <= 10_000
    d.check()


def test_ttl_and_getsizeof_and_subclass_attributes_survive() -> None:
    """Time left is kept per entry; cachetools-style classes and user attributes come back."""
    c = Cache(10, "lru", ttl=10.0, clock=_clock)
    c["a"] = 1
    _NOW[0] += 4.0
    c.put("b", 2, ttl=100.0)
    d = pickle.loads(pickle.dumps(c))
    assert d["a"] == 1 and d.ttl == 10.0
    _NOW[0] += 6.5                      # the copy shares the clock: "a" had 6 s left
    assert "a" not in d and d["b"] == 2
    t = TTLCache(100, 5, getsizeof=len)
    t["k"] = "abc"
    t.note = "mine"
    u = pickle.loads(pickle.dumps(t))
    assert type(u) is TTLCache and u["k"] == "abc" and u.currsize == 3 and u.maxsize == 100
    assert u.note == "mine" and u.ttl == 5 and u.timer is t.timer
    lru = pickle.loads(pickle.dumps(LRUCache(4)))
    assert lru.policy == "lru" and lru.maxsize == 4


def test_unpicklable_value_names_the_key() -> None:
    """A lock as a value: SerializationError (also a TypeError) whose message names the key."""
    c = Cache(10)
    c["fine"] = 1
    c["the-lock"] = threading.Lock()
    with pytest.raises(SerializationError, match="the-lock") as info:
        pickle.dumps(c)
    assert isinstance(info.value, TypeError)
    d = Cache(10, weigher=lambda k, v: 1, max_bytes=100)
    with pytest.raises(SerializationError, match="weigher"):
        pickle.dumps(d)
