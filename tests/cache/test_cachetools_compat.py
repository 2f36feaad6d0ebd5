"""Code written for cachetools runs unchanged on sutazai_hwopt.cache.compat (each form of the migration table in
docs/cache.md), and the same code runs on cachetools itself, so the test checks the shared behaviour."""

from __future__ import annotations

import functools
import threading
import types
from typing import Any

import cachetools
import pytest
from cachetools.keys import hashkey

from sutazai_hwopt.cache import Cache, cached, compat

BACKENDS = [pytest.param(cachetools, id="cachetools"), pytest.param(compat, id="hwopt")]


def _weighted(ct: types.ModuleType, cls: str) -> None:
    c = getattr(ct, cls)(maxsize=100, getsizeof=len)
    c["a"] = "x" * 60
    c["b"] = "y" * 30
    assert c.currsize == 90 and c.maxsize == 100 and len(c) == 2 and c.getsizeof("abc") == 3
    c["c"] = "z" * 30                       # over 100: something goes, the bound holds
    assert c.currsize <= 100 and "c" in c
    with pytest.raises(ValueError):
        c["big"] = "q" * 101
    c.update(d="1")
    assert c.setdefault("d", "2") == "1" and c.pop("d") == "1" and c.pop("nope", None) is None
    k, _v = c.popitem()
    assert k not in c and c.currsize == sum(len(x) for x in c.values())
    c.clear()
    assert c.currsize == 0 and len(c) == 0


@pytest.mark.parametrize("ct", BACKENDS)
@pytest.mark.parametrize("cls", ["Cache", "LRUCache", "LFUCache"])
def test_weighted_cache_forms(ct: types.ModuleType, cls: str) -> None:
    """Cache/LRUCache/LFUCache(maxsize, getsizeof=len): maxsize bounds the sum of sizes, currsize is it."""
    _weighted(ct, cls)


@pytest.mark.parametrize("ct", BACKENDS)
def test_counted_cache_forms(ct: types.ModuleType) -> None:
    """Cache(maxsize) and LRUCache(maxsize): an entry bound; LRU evicts the least recently used."""
    c = ct.LRUCache(3)
    for k in "abc":
        c[k] = k.upper()
    _ = c["a"]
    c["d"] = "D"
    assert sorted(c) == ["a", "c", "d"] and c.currsize == 3 and c.maxsize == 3
    assert c.popitem() == ("c", "C")
    plain = ct.Cache(maxsize=10)
    plain.update({i: i for i in range(10)})
    assert len(plain) == 10 and plain.currsize == 10
    plain[10] = 10
    assert len(plain) == 10


@pytest.mark.parametrize("ct", BACKENDS)
def test_ttl_cache_form(ct: types.ModuleType) -> None:
    """TTLCache(maxsize, ttl, timer=..., getsizeof=...): entries expire after ttl by the given timer."""
    now = [0.0]
    c = ct.TTLCache(maxsize=100, ttl=5, timer=lambda: now[0], getsizeof=len)
    c["a"] = "xx"
    now[0] = 3.0
    c["b"] = "yyy"
    assert c["a"] == "xx" and c.currsize == 5 and c.ttl == 5 and c.timer() == 3.0
    now[0] = 6.0
    assert "a" not in c and c.get("a") is None and c["b"] == "yyy"
    now[0] = 9.0
    assert c.expire() == [("b", "yyy")] or list(c.expire()) == []   # cachetools may have purged on access
    assert len(c) == 0 and c.currsize == 0


@pytest.mark.parametrize("ct", BACKENDS)
def test_ttl_cache_expire_at_a_given_time(ct: types.ModuleType) -> None:
    """TTLCache.expire(time) removes what has expired by ``time`` (not by the timer) and returns the pairs."""
    now = [0.0]
    c = ct.TTLCache(maxsize=100, ttl=5, timer=lambda: now[0])
    c["a"] = 1
    now[0] = 2.0
    c["b"] = 2
    now[0] = 0.0
    assert list(c.expire(4.0)) == [] and len(c) == 2
    assert sorted(c.expire(5.5)) == [("a", 1)] and "b" in c
    assert sorted(c.expire(100.0)) == [("b", 2)] and len(c) == 0


@pytest.mark.parametrize("ct", BACKENDS)
def test_cached_decorator_form(ct: types.ModuleType) -> None:
    """@cached(cache, key=hashkey, lock=Lock(), info=True): one call per key, cache_info, cache_clear."""
    calls: list[int] = []

    @ct.cached(cache=ct.LRUCache(maxsize=32), key=hashkey, lock=threading.Lock(), info=True)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16] and calls == [3, 4]
    info = square.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (1, 2, 32, 2)
    square.cache_clear()
    assert square(3) == 9 and calls == [3, 4, 3]


def test_lru_cache_form() -> None:
    """functools.lru_cache(maxsize=128) -> cached(maxsize=128, policy="lru"): same results and cache_info."""
    def work(x: int) -> int:
        return x + 1

    calls: list[Any] = []
    for deco in (functools.lru_cache(maxsize=128), cached(maxsize=128, policy="lru")):
        f = deco(lambda x, _w=work: calls.append(x) or _w(x))
        assert [f(1), f(1), f(2)] == [2, 2, 3]
        info = f.cache_info()
        assert (info.hits, info.misses, info.maxsize, info.currsize) == (1, 2, 128, 2)
        f.cache_clear()
        assert f.cache_info().currsize == 0
    assert calls == [1, 2, 1, 2]


def test_positional_getsizeof_and_bad_combinations() -> None:
    """cachetools' positional Cache(maxsize, getsizeof) works; getsizeof with max_bytes/weigher is refused."""
    c = Cache(10, len)
    c["a"] = "abcd"
    assert c.currsize == 4 and c.maxsize == 10 and c.max_bytes == 10
    from sutazai_hwopt.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        Cache(10, getsizeof=len, max_bytes=5)
    with pytest.raises(InvalidArgumentError):
        Cache(10, getsizeof=3)  # type: ignore[arg-type]
    big = Cache(1 << 40, getsizeof=len)              # a byte bound beyond the entry limit
    big["k"] = "v" * 1000
    assert big.maxsize == 1 << 40 and big.currsize == 1000
