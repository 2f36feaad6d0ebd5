"""The compiled L1-hit front of IntelligentCacheSystem.get: same answers as the Python path, exact counters
without a lock, and every case it does not serve handed to the Python path."""

from __future__ import annotations

import threading

import pytest

from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.errors import InvalidArgumentError, StateError


def _cfg(ns: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"namespace": ns, "l1_size": 1 << 18, "l2_size": 2 << 20, "l3_size": 0,
                               "enable_prefetch": False}
    base.update(kw)
    return base


def test_front_serves_l1_hits_and_matches_the_python_path(ns: str) -> None:
    c = IntelligentCacheSystem(_cfg(ns))
    try:
        assert c.get is not IntelligentCacheSystem.get.__get__(c)
        c.put("k", {"a": 1}, "ag")
        c.put(1, "one", "ag")
        c.put(b"1", "bytes-one", "ag")
        assert c.get("k", "ag") == ({"a": 1}, "L1")
        assert IntelligentCacheSystem.get(c, "k", "ag") == ({"a": 1}, "L1")
        assert c.get(1, "ag") == ("one", "L1")
        assert c.get(b"1", "ag") == ("bytes-one", "L1")
        assert c.get("1", "ag", default="d") == ("d", None)
        with pytest.raises(InvalidArgumentError):
            c.get(True, "ag")               # bool is not an int key, even though True == 1
        with pytest.raises(InvalidArgumentError):
            c.get(1.0, "ag")
        with pytest.raises(InvalidArgumentError):
            c.get("k", 5)  # type: ignore[arg-type]
        st = c.stats()
        assert st["agents"]["ag"]["hits"]["L1"] == 4 and st["agents"]["ag"]["misses"] == 1
        assert st["gets"] == 5 and st["puts"] == 3
    finally:
        c.destroy()


def test_front_sees_another_handles_overwrite(ns: str) -> None:
    """The L1 epoch check stays on the compiled path: a put by another handle is not hidden by L1."""
    a = IntelligentCacheSystem(_cfg(ns))
    b = IntelligentCacheSystem(_cfg(ns))
    try:
        a.put("k", "v1", "ag")
        assert a.get("k", "ag") == ("v1", "L1")
        b.put("k", "v2", "ag")
        assert a.get("k", "ag") == ("v2", "L2")
        assert a.get("k", "ag") == ("v2", "L1")
        b.delete("k")
        assert a.get("k", "ag") == (None, None)
    finally:
        b.close()
        a.destroy()


def test_counters_are_exact_under_threads_without_a_lock(ns: str) -> None:
    c = IntelligentCacheSystem(_cfg(ns))
    try:
        for i in range(8):
            c.put(f"k{i}", i, "ag")
        n, threads = 20000, 4

        def work() -> None:
            for j in range(n):
                c.get(f"k{j % 8}", "ag")
                c.get("absent", "other")

        ts = [threading.Thread(target=work) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        st = c.stats()
        assert st["agents"]["ag"]["gets"] == st["agents"]["ag"]["hits"]["L1"] == n * threads
        assert st["agents"]["other"]["misses"] == n * threads
        assert st["gets"] == 2 * n * threads == sum(st["hits"].values()) + st["misses"]
    finally:
        c.destroy()


def test_closed_system_refuses_through_a_kept_bound_get(ns: str) -> None:
    c = IntelligentCacheSystem(_cfg(ns))
    c.put("k", 1, "ag")
    g = c.get
    c.destroy()
    with pytest.raises(StateError):
        g("k", "ag")
    with pytest.raises(StateError):
        c.get("k", "ag")


def test_front_makes_no_reference_cycle(ns: str) -> None:
    """The system holds its front, the front holds the system weakly: a dropped system is freed at once."""
    import gc
    import weakref

    c = IntelligentCacheSystem(_cfg(ns))
    c.put("k", 1, "ag")
    assert c.get("k", "ag") == (1, "L1")
    ref = weakref.ref(c)
    c.destroy()
    gc.disable()
    try:
        del c
        assert ref() is None
    finally:
        gc.enable()
