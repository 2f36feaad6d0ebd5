"""Every method of collections.abc.MutableMapping, on every policy, against a dict model (hypothesis)."""

from __future__ import annotations

import collections.abc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sutazai_hwopt.cache import POLICIES, Cache

KEYS = st.integers(0, 12) | st.sampled_from(["a", "b", ("t", 1)])
VALUES = st.integers(-3, 3) | st.none()
OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), KEYS, VALUES),
    st.tuples(st.just("get"), KEYS, VALUES),
    st.tuples(st.just("getitem"), KEYS, VALUES),
    st.tuples(st.just("del"), KEYS, VALUES),
    st.tuples(st.just("pop"), KEYS, VALUES),
    st.tuples(st.just("pop_default"), KEYS, VALUES),
    st.tuples(st.just("popitem"), KEYS, VALUES),
    st.tuples(st.just("setdefault"), KEYS, VALUES),
    st.tuples(st.just("update"), st.dictionaries(KEYS, VALUES, max_size=4), VALUES),
    st.tuples(st.just("update_kw"), st.lists(st.tuples(KEYS, VALUES), max_size=4), VALUES),
    st.tuples(st.just("contains"), KEYS, VALUES),
    st.tuples(st.just("clear"), KEYS, VALUES),
), max_size=40)


def _step(c: Cache, m: dict[Any, Any], op: str, a: Any, b: Any) -> None:
    def both(fn: Any) -> None:
        """Apply ``fn`` to the cache and the model: same result or same exception type."""
        try:
            want: Any = ("ok", fn(m))
        except KeyError:
            want = ("KeyError",)
        try:
            got: Any = ("ok", fn(c))
        except KeyError:
            got = ("KeyError",)
        assert got == want, (op, a, b)

    if op == "set":
        c[a] = b
        m[a] = b
    elif op == "get":
        both(lambda d: d.get(a, b))
    elif op == "getitem":
        both(lambda d: d[a])
    elif op == "del":
        both(lambda d: d.__delitem__(a))
    elif op == "pop":
        both(lambda d: d.pop(a))
    elif op == "pop_default":
        both(lambda d: d.pop(a, b))
    elif op == "popitem":
        # the policy chooses the entry: check only that it was a model entry and is gone
        if not m:
            with pytest.raises(KeyError):
                c.popitem()
        else:
            k, v = c.popitem()
            assert m.pop(k) == v and k not in c
    elif op == "setdefault":
        both(lambda d: d.setdefault(a, b))
    elif op == "update":
        c.update(a)
        m.update(a)
    elif op == "update_kw":
        c.update(a, extra=b)         # an iterable of pairs plus keywords
        m.update(a, extra=b)
    elif op == "contains":
        assert (a in c) == (a in m)
    else:
        c.clear()
        m.clear()


def _compare(c: Cache, m: dict[Any, Any]) -> None:
    assert len(c) == len(m) == len(c.keys()) == len(c.values()) == len(c.items())
    assert sorted(map(repr, c)) == sorted(map(repr, m))
    assert c.keys() == m.keys() and set(c.items()) == set(m.items())
    assert sorted(map(repr, c.values())) == sorted(map(repr, m.values()))
    assert c == m and not (c != m) and dict(c) == m  # noqa: SIM202 (__ne__ is tested)
    for k, v in m.items():
        assert k in c.keys() and (k, v) in c.items() and v in c.values()  # noqa: SIM118 (the view is tested)
    assert ("absent", 0) not in c.items() and "absent" not in c.keys()  # noqa: SIM118
    c.check()


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_every_mutable_mapping_method_matches_a_dict(policy: str, ops: list[tuple[str, Any, Any]]) -> None:
    """With room for every key, each method gives the dict's result and leaves the dict's contents."""
    c = Cache(64, policy)
    m: dict[Any, Any] = {}
    assert isinstance(c, collections.abc.MutableMapping)
    for op, a, b in ops:
        _step(c, m, op, a, b)
        _compare(c, m)


@pytest.mark.parametrize("policy", POLICIES)
def test_popitem_takes_the_next_victim_and_is_not_an_eviction(policy: str) -> None:
    """popitem empties a bounded cache entry by entry, priorities last, without counting evictions."""
    evicted: list[Any] = []
    c = Cache(8, policy, on_evict=lambda k, v, cause: evicted.append(k))
    for i in range(20):
        c[i] = i
        _ = c.get(i % 3)
    c.put("vip", "v", priority=5)
    before = dict(c.items())
    n_evicted, n_evictions = len(evicted), c.stats().evictions
    popped = [c.popitem() for _ in range(len(before))]
    assert dict(popped) == before and popped[-1] == ("vip", "v")
    assert len(c) == 0 and c.stats().evictions == n_evictions and len(evicted) == n_evicted
    with pytest.raises(KeyError):
        c.popitem()
    c.check()


def test_lru_popitem_is_least_recently_used() -> None:
    """For LRU, popitem is exactly cachetools' LRUCache.popitem."""
    c = Cache(4, "lru")
    for k in "abcd":
        c[k] = k
    _ = c["a"]
    assert c.popitem() == ("b", "b") and c.popitem() == ("c", "c")


def test_equality_and_hash_follow_mapping() -> None:
    """Two caches with the same items are equal, to each other and to a dict; like a dict, unhashable."""
    a, b = Cache(10, "lru"), Cache(20, "s3fifo")
    a.update(x=1, y=2)
    b.update({"y": 2, "x": 1})
    assert a == b == {"x": 1, "y": 2} and a != {"x": 1}
    assert a != [("x", 1), ("y", 2)]
    with pytest.raises(TypeError):
        hash(a)


def test_repr_is_bounded() -> None:
    """repr shows a few entries and the count, not the whole content."""
    c = Cache(100_000, "lru")
    c.update((i, i) for i in range(100_000))
    r = repr(c)
    assert len(r) < 300 and "99992 more" in r and "currsize=100000" in r
    assert repr(Cache(3)) == "Cache(maxsize=3, policy='adaptive', max_bytes=None, currsize=0, {})"


def test_views_are_not_accesses_and_are_live() -> None:
    """keys/values/items read without counting hits and reflect later changes."""
    c = Cache(10, "lru")
    ks, vs, its = c.keys(), c.values(), c.items()
    c["k"] = "v"
    assert list(ks) == ["k"] and list(vs) == ["v"] and list(its) == [("k", "v")]
    assert "k" in ks and "v" in vs and ("k", "v") in its and ("k", "w") not in its
    assert c.stats().hits == 0 and c.stats().misses == 0
