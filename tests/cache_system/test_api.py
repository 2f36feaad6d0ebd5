"""IntelligentCacheSystem in one process: levels, promotion/demotion, bad input, budgets, stats, prefetch."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.errors import ConfigError, InvalidArgumentError, WeightError


def _cfg(ns: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"namespace": ns, "l1_size": 1 << 18, "l2_size": 2 << 20, "l3_size": 4 << 20,
                               "enable_prefetch": False}
    base.update(kw)
    return base


@pytest.fixture
def cache(ns: str):  # type: ignore[no-untyped-def]
    c = IntelligentCacheSystem(_cfg(ns))
    yield c
    c.destroy()


def test_package_root_export() -> None:
    """`from sutazai_hwopt import IntelligentCacheSystem` works."""
    from sutazai_hwopt import IntelligentCacheSystem as Cls

    assert Cls is IntelligentCacheSystem


def test_seed_api_levels(cache: IntelligentCacheSystem, ns: str) -> None:
    """put/get return the value and the level it came from; a second handle reads the first's put from L2."""
    cache.put("k", {"a": 1}, "agent_001", priority=9)
    assert cache.get("k", "agent_001") == ({"a": 1}, "L1")
    other = IntelligentCacheSystem(_cfg(ns))
    assert other.get("k", "agent_002") == ({"a": 1}, "L2")
    assert other.get("k", "agent_002") == ({"a": 1}, "L1")   # promoted
    assert other.get("missing", "agent_002", default="d") == ("d", None)
    other.close()


def test_bytes_and_arrays_are_zero_copy_read_only(cache: IntelligentCacheSystem) -> None:
    """Bytes and numpy values from L2 larger than the tier's copy_max are read-only views of shared memory."""
    cache.put("b", b"abc" * 30000, "a")
    cache.put("n", np.arange(3 * 6000, dtype=np.int32).reshape(3, 6000), "a")
    cache._l1.clear()
    v, level = cache.get("b", "a")
    assert level == "L2" and isinstance(v, memoryview) and v.readonly and v == b"abc" * 30000
    arr, level = cache.get("n", "a")
    assert level == "L2" and arr.shape == (3, 6000) and not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0] = 5
    assert cache._l2.index.local_pin_count() == 2
    del v, arr
    gc.collect()
    assert cache._l2.index.local_pin_count() == 0


def test_keys_of_different_types_are_distinct(cache: IntelligentCacheSystem) -> None:
    """1, "1" and b"1" are three keys."""
    cache.put(1, "int", "a")
    cache.put("1", "str", "a")
    cache.put(b"1", "bytes", "a")
    cache._l1.clear()
    assert [cache.get(k, "a")[0] for k in (1, "1", b"1")] == ["int", "str", "bytes"]


@pytest.mark.parametrize("key", [1.5, None, ("t",), True, ["l"]])
def test_wrong_key_type_is_a_clear_error(cache: IntelligentCacheSystem, key: object) -> None:
    """Keys other than str/bytes/int raise InvalidArgumentError naming the type."""
    cache.put("keep", "v", "a")
    with pytest.raises(InvalidArgumentError, match="key must be a str, bytes or int"):
        cache.put(key, "x", "a")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        cache.get(key, "a")  # type: ignore[arg-type]
    assert cache.get("keep", "a")[0] == "v"


def test_unpicklable_value_is_a_clear_error_and_nothing_lost(cache: IntelligentCacheSystem) -> None:
    """An unpicklable object raises InvalidArgumentError; the key keeps its previous value in every level."""
    cache.put("k", "old", "a")
    with pytest.raises(InvalidArgumentError, match="not picklable"):
        cache.put("k", lambda: 1, "a")
    assert cache.get("k", "a") == ("old", "L1")
    cache._l1.clear()
    assert cache.get("k", "a") == ("old", "L2")


def test_value_larger_than_budget_is_a_clear_error_and_nothing_lost(cache: IntelligentCacheSystem) -> None:
    """A value larger than L2's budget raises WeightError naming the budget; stored values stay."""
    cache.put("k", b"old", "a")
    with pytest.raises(WeightError, match=r"l2 budget"):
        cache.put("k", b"x" * (3 << 20), "a")
    cache._l1.clear()
    assert bytes(cache.get("k", "a")[0]) == b"old"
    assert cache.check()


@pytest.mark.parametrize("prio", [-1, 10, "9", 1.0, True])
def test_bad_priority(cache: IntelligentCacheSystem, prio: object) -> None:
    """Priority must be an int in 0..9."""
    with pytest.raises(InvalidArgumentError, match="priority"):
        cache.put("k", "v", "a", priority=prio)  # type: ignore[arg-type]
    assert not cache.contains("k")


def test_bad_config_is_a_config_error(ns: str) -> None:
    """Unknown keys and out-of-range values raise ConfigError."""
    with pytest.raises(ConfigError):
        IntelligentCacheSystem({"namespace": ns, "l2_sise": 5})
    with pytest.raises(ConfigError):
        IntelligentCacheSystem({"namespace": ns, "prefetch_depth": -1})


def test_budgets_never_exceeded_and_stats_add_up(cache: IntelligentCacheSystem) -> None:
    """After many puts of mixed sizes every level is within its byte budget; hits + misses == gets."""
    rng = np.random.default_rng(1)
    for i in range(600):
        size = int(rng.integers(1, 40000))
        cache.put(int(rng.integers(0, 300)), rng.integers(0, 255, size, dtype=np.uint8).tobytes(), f"a{i % 3}",
                  priority=int(rng.integers(0, 10)))
        cache.get(int(rng.integers(0, 300)), f"a{i % 5}")
        s = cache.stats()["levels"]
        assert s["L1"]["bytes"] <= s["L1"]["budget"]
        assert s["L2"]["bytes"] + s["L2"]["zombie_bytes"] <= s["L2"]["heap_bytes"] <= s["L2"]["budget"]
        assert s["L3"]["bytes"] + s["L3"]["zombie_bytes"] <= s["L3"]["heap_bytes"] <= s["L3"]["budget"]
    st = cache.stats()
    assert st["gets"] == sum(st["hits"].values()) + st["misses"] == 600
    for a in st["agents"].values():
        assert a["gets"] == sum(a["hits"].values()) + a["misses"]
    assert sum(a["puts"] for a in st["agents"].values()) == st["puts"] == 600
    assert st["levels"]["L2"]["evictions"] > 0 and st["levels"]["L3"]["entries"] > 0
    assert cache.check()


def test_demotion_to_l3_and_promotion_back(cache: IntelligentCacheSystem) -> None:
    """L2 victims are demoted to compressed L3; an L3 hit promotes back into L2."""
    text = ("the quick brown fox " * 300).encode()
    cache.put("first", text, "a")
    for i in range(400):
        cache.put(i, bytes([i % 251]) * 8000, "a")
    cache._l1.clear()
    v, level = cache.get("first", "a")
    assert level == "L3" and bytes(v) == text
    v, level = cache.get("first", "a")
    assert level == "L2"
    s = cache.stats()["levels"]["L3"]
    assert s["stored_bytes_in"] < s["raw_bytes_in"]   # lz4 shrank the compressible values


def test_priority_protects_from_lower_priorities(ns: str) -> None:
    """A flood of priority-0 puts never evicts priority-9 entries while priority-0 entries remain."""
    cache = IntelligentCacheSystem(_cfg(ns, l3_size=0, l1_size=0))
    for i in range(20):
        cache.put(f"vip{i}", b"v" * 5000, "a", priority=9)
    for i in range(1000):
        cache.put(i, b"x" * 5000, "a", priority=0)
    assert all(cache.get(f"vip{i}", "a")[1] == "L2" for i in range(20))
    cache.destroy()


def test_l1_is_coherent_with_other_processes_writes(ns: str) -> None:
    """An overwrite or delete through another handle is never hidden by a stale L1 entry."""
    a = IntelligentCacheSystem(_cfg(ns))
    b = IntelligentCacheSystem(_cfg(ns))
    a.put("k", {"v": 1}, "a")
    assert b.get("k", "b") == ({"v": 1}, "L2")
    assert b.get("k", "b") == ({"v": 1}, "L1")
    a.put("k", {"v": 2}, "a")
    assert b.get("k", "b") == ({"v": 2}, "L2")
    a.delete("k")
    assert not b.contains("k")
    assert b.get("k", "b") == (None, None)
    b.close()
    a.destroy()


def test_l3_directory_survives_restart(ns: str, tmp_path: Path) -> None:
    """With l3_directory, a value demoted to L3 is found again after every segment was destroyed."""
    cfg = _cfg(ns, l3_directory=str(tmp_path / "l3"))
    a = IntelligentCacheSystem(cfg)
    a.put("keep", {"big": "y" * 4000}, "a")
    for i in range(400):
        a.put(i, bytes([i % 251]) * 8000, "a")
    a.destroy()
    assert list((tmp_path / "l3").glob("*.l3"))
    assert (tmp_path / "l3").stat().st_mode & 0o777 == 0o700
    b = IntelligentCacheSystem(cfg)
    assert b.get("keep", "a") == ({"big": "y" * 4000}, "L3")
    b.destroy()


def test_delete_contains_clear(cache: IntelligentCacheSystem) -> None:
    """delete removes from every level; contains does not count; clear empties the shared tiers."""
    cache.put("k", "v", "a")
    assert cache.contains("k") and "k" in cache
    assert cache.stats()["gets"] == 0
    assert cache.delete("k") and not cache.contains("k") and not cache.delete("k")
    cache.put("x", "y", "a")
    cache.clear()
    assert not cache.contains("x")
    assert cache.stats()["levels"]["L2"]["entries"] == 0


def test_prefetch_learns_a_workflow(ns: str) -> None:
    """After seeing a chain of calls, the predictor loads the next steps into L2 before they are asked."""
    calls: list[object] = []

    def loader(key: object) -> str:
        calls.append(key)
        return f"value-of-{key}"

    cache = IntelligentCacheSystem(_cfg(ns, enable_prefetch=True, prefetch_inline=True, prefetch_depth=3,
                                        prefetch_mode="always"),
                                   loader=loader)
    chain = ["plan", "search", "embed", "rank", "answer"]
    for _ in range(3):
        for step in chain:
            if cache.get(step, "agent")[1] is None:
                cache.put(step, loader(step), "agent")
        cache._l1.clear()
        cache._l2.index.clear()
    cache.get("plan", "agent")
    assert cache.contains("search") and cache.contains("embed")
    before = cache.stats()["prefetch"]["used"]
    assert cache.get("search", "agent")[1] == "L2"
    pf = cache.stats()["prefetch"]
    assert pf["used"] == before + 1 and pf["prefetched"] >= 2 and 0 < pf["accuracy"] <= 1
    cache.destroy()


def test_prefetch_background_worker_is_bounded_and_stops(ns: str) -> None:
    """The threaded worker prefetches, drains, and its thread ends on close."""
    import threading

    cache = IntelligentCacheSystem(_cfg(ns, enable_prefetch=True, prefetch_depth=2, prefetch_mode="always"),
                                   loader=lambda k: str(k))
    for _ in range(4):
        for k in ("a", "b", "c"):
            cache.get(k, "ag")
        cache._l2.index.clear()
        cache._l1.clear()
    cache.get("a", "ag")
    cache.drain_prefetch()
    assert cache.stats()["prefetch"]["prefetched"] >= 1
    cache.destroy()
    assert not [t for t in threading.enumerate() if t.name == "sutazai-cache-prefetch"]


def test_remote_tier_round_trip(ns: str, redis_url: str) -> None:
    """With redis_url, values reach the Redis server and come back through the remote level into L2."""
    a = IntelligentCacheSystem(_cfg(ns, redis_url=redis_url))
    a.put("r", {"x": np.arange(5)}, "a")
    a.put("s", b"raw", "a")
    a.destroy()
    b = IntelligentCacheSystem(_cfg(ns, redis_url=redis_url))
    v, level = b.get("r", "b")
    assert level == "remote" and np.array_equal(v["x"], np.arange(5))
    assert b.get("r", "b")[1] in ("L1", "L2")
    assert bytes(b.get("s", "b")[0]) == b"raw"
    assert b.delete("s") and not b.contains("s")
    b.clear()
    b.destroy()


def test_two_handles_in_one_process_share_one_attachment(ns: str) -> None:
    """Two caches of one process pin the same block without conflict; pins go when both views die."""
    a = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    b = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    a.put("k", b"v" * 70000, "a")
    va, vb = a.get("k", "a")[0], b.get("k", "b")[0]
    assert va == vb == b"v" * 70000
    assert a._l2.index is b._l2.index and a._l2.index.local_pin_count() == 1
    b.close()
    assert bytes(va) == b"v" * 70000
    del va, vb
    gc.collect()
    assert a._l2.index.local_pin_count() == 0
    assert a.check()
    a.destroy()


def test_foreign_segment_is_a_clear_error(ns: str) -> None:
    """A segment under the tier's name that is not a cache tier raises IncompatibleLayoutError, no crash."""
    import os

    from sutazai_hwopt.cache.shared_index import tier_segment_name
    from sutazai_hwopt.errors import IncompatibleLayoutError
    from sutazai_hwopt.shm import close_quietly, create_segment, unlink_segment

    name = tier_segment_name(ns, "l2")
    shm = create_segment(name, 2 << 20)
    shm.buf[:65536] = os.urandom(65536)
    try:
        with pytest.raises(IncompatibleLayoutError):
            IntelligentCacheSystem(_cfg(ns, l3_size=0))
    finally:
        close_quietly(shm)
        unlink_segment(name)


def test_l3_skips_incompressible_values(ns: str) -> None:
    """Random bytes are stored raw in L3 (no expansion); text is compressed."""
    import os

    cache = IntelligentCacheSystem(_cfg(ns, l2_size=0, l1_size=0))
    noise = os.urandom(50000)
    cache.put("noise", noise, "a")
    s = cache.stats()["levels"]["L3"]
    assert s["stored_bytes_in"] - s["raw_bytes_in"] < 64
    cache.put("text", b"all work and no play " * 2000, "a")
    s2 = cache.stats()["levels"]["L3"]
    assert s2["stored_bytes_in"] - s["stored_bytes_in"] < (s2["raw_bytes_in"] - s["raw_bytes_in"]) / 4
    assert cache.get("noise", "a") == (noise, "L3") and cache.get("text", "a")[1] == "L3"
    cache.destroy()


def test_view_outlives_close_and_destroy(ns: str) -> None:
    """A zero-copy view stays readable after its cache is closed and the segment unlinked."""
    cache = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    cache.put("k", np.arange(5000, dtype=np.int64), "a")
    view, level = cache.get("k", "a")
    assert level == "L2"
    cache.destroy()
    gc.collect()
    assert int(view.sum()) == sum(range(5000))
    del view
    gc.collect()


def test_forked_child_takes_its_own_process_slot(ns: str) -> None:
    """A child forked from a process with an attached tier pins under its own slot, not the parent's."""
    import multiprocessing as mp

    cache = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    cache.put("k", b"x" * 3000, "a")
    parent_slot = cache._l2.index.proc_slot

    def child(q: mp.Queue) -> None:
        v, _ = cache.get("k", "c")
        q.put((cache._l2.index.proc_slot, bytes(v)))

    q: mp.Queue = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=child, args=(q,))
    p.start()
    slot, data = q.get(timeout=30)
    p.join(30)
    assert slot != parent_slot and slot >= 0 and data == b"x" * 3000
    assert cache.reclaim() >= 0 and cache.check()
    cache.destroy()


def test_objects_with_array_buffers_are_zero_copy_and_not_pinned_by_l1(ns: str) -> None:
    """A dict holding an array comes back with the array viewing L2; it is not kept in L1 (no lasting pin)."""
    a = IntelligentCacheSystem(_cfg(ns))
    b = IntelligentCacheSystem(_cfg(ns))
    a.put("obj", {"w": np.arange(10000, dtype=np.float32), "name": "layer"}, "a")
    v, level = b.get("obj", "b")
    assert level == "L2" and v["name"] == "layer" and not v["w"].flags.writeable
    assert np.array_equal(v["w"], np.arange(10000, dtype=np.float32))
    assert b.get("obj", "b")[1] == "L2"   # not promoted
    del v
    gc.collect()
    assert b._l2.index.local_pin_count() == 0
    b.close()
    a.destroy()


def test_threads_share_one_cache(ns: str) -> None:
    """Eight threads putting and getting through one cache read only intact values; check() passes."""
    import threading
    import zlib

    cache = IntelligentCacheSystem(_cfg(ns))
    errors: list[str] = []

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        for _ in range(400):
            k = int(rng.integers(0, 30))
            if rng.random() < 0.4:
                body = bytes([t]) * int(rng.integers(1, 20000))
                cache.put(k, body + zlib.crc32(body).to_bytes(4, "little") + k.to_bytes(4, "little"), f"t{t}")
            else:
                v, level = cache.get(k, f"t{t}")
                if level is not None:
                    raw = bytes(v)
                    if zlib.crc32(raw[:-8]).to_bytes(4, "little") != raw[-8:-4] or raw[-4:] != k.to_bytes(4, "little"):
                        errors.append(f"bad value for {k} at {level}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    gc.collect()
    assert cache.check() and cache._l2.index.local_pin_count() == 0
    cache.destroy()


def test_l3_directory_is_trimmed_to_budget(ns: str, tmp_path: Path) -> None:
    """The L3 directory never holds more than l3_size bytes after a write."""
    import os

    d = tmp_path / "l3"
    cache = IntelligentCacheSystem(_cfg(ns, l2_size=0, l1_size=0, l3_size=1 << 20, l3_directory=str(d)))
    for i in range(200):
        cache.put(i, os.urandom(20000), "a")
        assert sum(p.stat().st_size for p in d.glob("*.l3")) <= 1 << 20
    assert cache.get(199, "a")[1] == "L3"
    cache.destroy()


def test_views_inherited_by_a_forked_child_stay_valid_after_close(ns: str) -> None:
    """A child that inherits a live view, closes its cache and reads the view still reads the value."""
    import multiprocessing as mp

    cache = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    cache.put("k", np.arange(3000, dtype=np.int64), "a")
    view, _ = cache.get("k", "a")

    def child(q: mp.Queue, inherited: np.ndarray) -> None:
        cache.close()
        gc.collect()
        q.put(int(inherited.sum()))

    q: mp.Queue = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=child, args=(q, view))
    p.start()
    assert q.get(timeout=30) == sum(range(3000))
    p.join(30)
    assert p.exitcode == 0
    del view
    gc.collect()
    cache.destroy()


def test_closed_cache_refuses_calls(ns: str) -> None:
    """After close(), operations raise StateError instead of silently skipping the shared levels."""
    from sutazai_hwopt.errors import StateError

    cache = IntelligentCacheSystem(_cfg(ns))
    cache.put("k", "v", "a")
    other = IntelligentCacheSystem(_cfg(ns))
    cache.close()
    for call in (lambda: cache.get("k", "a"), lambda: cache.put("k", "v", "a"), lambda: cache.contains("k"),
                 lambda: cache.delete("k"), cache.clear):
        with pytest.raises(StateError):
            call()
    assert other.get("k", "b") == ("v", "L2")
    other.destroy()


def test_l1_only_configuration(ns: str) -> None:
    """With only L1, values live in the process and one larger than l1_size is a WeightError."""
    cache = IntelligentCacheSystem(_cfg(ns, l2_size=0, l3_size=0))
    cache.put("k", b"v", "a")
    assert cache.get("k", "a") == (b"v", "L1")
    with pytest.raises(WeightError, match="L1 budget"):
        cache.put("big", b"x" * (1 << 19), "a")
    assert cache.get("k", "a") == (b"v", "L1") and not cache.contains("big")
    assert cache.get_or_load("n", "a", lambda k: 5) == 5 and cache.get("n", "a") == (5, "L1")
    cache.destroy()


def test_debug_build_counters_balance(ns: str) -> None:
    """In a debug build, views made/freed and pin bits set/cleared balance once every view is released."""
    from sutazai_hwopt._native import buildinfo, shmcache_index

    if not buildinfo.DEBUG_BUILD:
        pytest.skip("counters are compiled in only with SUTAZAI_HWOPT_DEBUG=1")
    cache = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    cache._l2.index.copy_max = 0     # every read zero-copy (pinned), however small
    before = shmcache_index.debug_counters()
    views = []
    for i in range(50):
        cache.put(i % 7, np.full(3000, i), "a")
        views.append(cache.get(i % 7, "a")[0])
    del views
    gc.collect()
    assert cache._l2.index.local_pin_count() == 0
    after = shmcache_index.debug_counters()
    d = {k: after[k] - before[k] for k in after}
    assert d["views_made"] == d["views_freed"] == 50 and d["pins_set"] == d["pins_cleared"] > 0
    cache.destroy()
