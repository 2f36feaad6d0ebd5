"""Real processes sharing L2/L3: concurrent put/get, SIGKILL in the middle of operations, host-wide loading."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import random
import signal
import zlib
from pathlib import Path

import pytest

from sutazai_hwopt.cache.codec import key_bytes, key_hash
from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.errors import LoaderError

CTX = mp.get_context("fork")


def _cfg(ns: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"namespace": ns, "l1_size": 1 << 18, "l2_size": 2 << 20, "l3_size": 4 << 20,
                               "enable_prefetch": False, "l2_max_entries": 256}
    base.update(kw)
    return base


def _value(key: int, writer: int, seq: int) -> bytes:
    body = f"{key}:{writer}:{seq}:".encode() * (1 + (seq * 37 + writer) % 300)
    return body + zlib.crc32(body).to_bytes(4, "little")


def _valid(key: int, value: object) -> bool:
    b = bytes(value)  # type: ignore[call-overload]
    body, crc = b[:-4], b[-4:]
    return zlib.crc32(body).to_bytes(4, "little") == crc and body.startswith(f"{key}:".encode())


def _worker(ns: str, writer: int, n: int, out: mp.Queue) -> None:
    rng = random.Random(writer)
    bad = 0
    reads = 0
    with IntelligentCacheSystem(_cfg(ns)) as cache:
        for seq in range(n):
            k = rng.randrange(40)
            if rng.random() < 0.4:
                cache.put(k, _value(k, writer, seq), f"agent_{writer}", priority=rng.randrange(10))
            else:
                v, level = cache.get(k, f"agent_{writer}")
                if level is not None:
                    reads += 1
                    bad += not _valid(k, v)
        st = cache.stats()
        ok = st["gets"] == sum(st["hits"].values()) + st["misses"]
    out.put((bad, reads, ok))


def test_concurrent_put_get_reads_only_values_put_for_the_key(ns: str) -> None:
    """Four processes put and get the same keys at once; every value read is an intact value of that key."""
    cache = IntelligentCacheSystem(_cfg(ns))
    out: mp.Queue = CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(ns, w, 1500, out)) for w in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert all(bad == 0 for bad, _, _ in results)
    assert sum(r for _, r, _ in results) > 0
    assert all(ok for _, _, ok in results)
    assert cache.check()
    s = cache.stats()["levels"]
    assert s["L2"]["bytes"] + s["L2"]["zombie_bytes"] <= s["L2"]["heap_bytes"] < s["L2"]["budget"]
    assert Path("/dev/shm", cache._l2.name).stat().st_size <= 2 << 20
    cache.destroy()


def _die_holding_lock(ns: str, mode: str) -> None:
    cache = IntelligentCacheSystem(_cfg(ns))
    tier = cache._l2
    if mode == "mid-put":
        # Take the lock, allocate a block and scribble a half-written entry, then die without releasing.
        tier.heap.acquire()
        off = tier.heap.alloc(5000)
        tier._att.shm.buf[off:off + 200] = b"\xab" * 200
    elif mode == "mid-index":
        tier.heap.acquire()
        # Corrupt derived index state in the middle of an update: counters off by some.
        tier.index.put(b"szombie", key_hash(b"szombie"), 1, 0, b"", [b"z" * 100])
        tier._att.shm.buf[tier.heap.meta_offset + 72:tier.heap.meta_offset + 80] = (999).to_bytes(8, "little")
    elif mode == "pinned":
        v, level = cache.get("pinned", "a")
        assert level == "L2"
        globals()["_keep"] = v
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("mode", ["mid-put", "mid-index", "pinned"])
def test_sigkill_leaves_tier_usable_and_consistent(ns: str, mode: str) -> None:
    """A process SIGKILLed holding the lock or a pin: the next locker repairs, check() passes, data intact."""
    cache = IntelligentCacheSystem(_cfg(ns))
    for i in range(30):
        cache.put(i, _value(i, 0, i), "a")
    cache.put("pinned", b"p" * 70000, "a")   # above copy_max: read zero-copy, so pinned
    p = CTX.Process(target=_die_holding_lock, args=(ns, mode))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert cache.check()  # takes the lock: recovers a dead holder first
    if mode == "pinned":
        cache._l1.clear()
        assert cache.delete("pinned")
        assert cache.stats()["levels"]["L2"]["zombies"] == 1   # the dead reader's pin still holds it
        assert cache.reclaim() == 1
        assert cache.stats()["levels"]["L2"]["zombies"] == 0
    else:
        assert cache._l2.heap.recoveries >= 1
        assert cache.stats()["levels"]["L2"]["repairs"] >= 1
    cache._l1.clear()
    for i in range(30):
        v, level = cache.get(i, "a")
        assert level in ("L2", "L3") and _valid(i, v)
    cache.put("after", b"ok", "a")
    assert bytes(cache.get("after", "b")[0]) == b"ok"
    assert cache.check()
    cache.destroy()


def _kill_loop(ns: str, seed: int) -> None:
    rng = random.Random(seed)
    with IntelligentCacheSystem(_cfg(ns)) as cache:
        while True:
            k = rng.randrange(40)
            if rng.random() < 0.5:
                cache.put(k, _value(k, seed, rng.randrange(10**6)), "k", priority=rng.randrange(10))
            else:
                cache.get(k, "k")


def test_random_sigkills_during_put_and_get(ns: str) -> None:
    """Processes killed at random moments of a put/get loop never leave the tier inconsistent."""
    cache = IntelligentCacheSystem(_cfg(ns))
    rng = random.Random(7)
    for round_ in range(6):
        procs = [CTX.Process(target=_kill_loop, args=(ns, round_ * 10 + i)) for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            # Let it run through some operations: wait on a random number of our own operations.
            for _ in range(rng.randrange(50, 400)):
                cache.get(rng.randrange(40), "observer")
            os.kill(p.pid, signal.SIGKILL)
            p.join(30)
        assert cache.check()
        cache.reclaim()
        assert cache.check()
    cache._l1.clear()
    for k in range(40):
        v, level = cache.get(k, "observer")
        assert level is None or _valid(k, v)
    assert cache.stats()["levels"]["L2"]["zombies"] == 0
    cache.destroy()


def _load_worker(ns: str, log_path: str, barrier: mp.Barrier, out: mp.Queue) -> None:
    def loader(key: object) -> bytes:
        with open(log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        import time

        time.sleep(0.2)   # keeps the marker visible while the others arrive; the assertions hold either way
        return b"loaded:" + str(key).encode()

    with IntelligentCacheSystem(_cfg(ns)) as cache:
        barrier.wait()
        out.put(bytes(cache.get_or_load("model-output", f"agent_{os.getpid()}", loader)))


def test_get_or_load_calls_loader_once_across_processes(ns: str, tmp_path: Path) -> None:
    """Five processes miss the same key at once: the loader runs exactly once on the host."""
    cache = IntelligentCacheSystem(_cfg(ns))
    log_path = tmp_path / "calls"
    log_path.write_text("")
    barrier = CTX.Barrier(5)
    out: mp.Queue = CTX.Queue()
    procs = [CTX.Process(target=_load_worker, args=(ns, str(log_path), barrier, out)) for _ in range(5)]
    for p in procs:
        p.start()
    values = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert values == [b"loaded:model-output"] * 5
    assert len(log_path.read_text().split()) == 1
    cache.destroy()


def _crashing_loader(ns: str) -> None:
    cache = IntelligentCacheSystem(_cfg(ns))
    cache.get_or_load("k", "a", lambda k: os.kill(os.getpid(), signal.SIGKILL))


def test_crashed_loader_does_not_block_others(ns: str) -> None:
    """A loader SIGKILLed mid-load leaves a marker naming a dead process; the next caller takes over."""
    cache = IntelligentCacheSystem(_cfg(ns))
    p = CTX.Process(target=_crashing_loader, args=(ns,))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    kb = key_bytes("k")
    assert cache._l2.index.entry_state(kb, key_hash(kb))[0] == 3   # LOADING, owner dead
    calls = []
    assert cache.get_or_load("k", "b", lambda k: calls.append(k) or "fresh") == "fresh"
    assert calls == ["k"]
    assert cache.check()
    cache.destroy()


def test_loader_error_reaches_caller_and_is_not_cached(ns: str) -> None:
    """A failing loader raises LoaderError with the cause; the next get_or_load loads again."""
    cache = IntelligentCacheSystem(_cfg(ns))

    def bad(key: object) -> object:
        raise ValueError("backend down")

    with pytest.raises(LoaderError) as ei:
        cache.get_or_load("k", "a", bad)
    assert isinstance(ei.value.__cause__, ValueError)
    assert cache.get("k", "a")[1] is None
    assert cache.get_or_load("k", "a", lambda k: 42) == 42
    cache.destroy()


def test_views_survive_eviction_by_others_and_unpin_on_gc(ns: str) -> None:
    """A zero-copy view keeps its block pinned while other handles evict and overwrite the key."""
    import numpy as np

    a = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    b = IntelligentCacheSystem(_cfg(ns, l1_size=0))
    arr = np.arange(20000, dtype=np.float64)
    a.put("w", arr, "a")
    view, level = b.get("w", "b")
    assert level == "L2" and not view.flags.writeable and np.shares_memory(view, view)
    for i in range(200):
        a.put(i, np.full(4000, i, dtype=np.int64), "a")   # floods L2: "w" is evicted
    a.put("w", np.zeros(10), "a")
    assert np.array_equal(view, arr)
    assert a.stats()["levels"]["L2"]["zombies"] >= 1
    del view
    gc.collect()
    assert a.stats()["levels"]["L2"]["zombies"] == 0
    assert a.check()
    b.close()
    a.destroy()


def _wait_for_unstorable(ns: str, out: mp.Queue, ready: mp.Event, waiting: mp.Event) -> None:
    import time
    import types

    from sutazai_hwopt.cache import system

    def sleep(seconds: float) -> None:   # the first poll of the wait loop tells the parent we are waiting
        waiting.set()
        time.sleep(seconds)

    system.time = types.SimpleNamespace(sleep=sleep)  # type: ignore[attr-defined]
    with IntelligentCacheSystem(_cfg(ns)) as cache:
        ready.wait(30)
        try:
            cache.get_or_load("big", "w", lambda k: b"never called")
            out.put("loaded")
        except LoaderError as exc:
            out.put(f"error: {exc}")


def test_unstorable_loaded_value_fails_waiters_without_second_load(ns: str) -> None:
    """A loaded value too large for L2 raises for the loader and for a waiting process; nobody reloads it."""
    from sutazai_hwopt.errors import WeightError

    cache = IntelligentCacheSystem(_cfg(ns))
    ready, waiting = CTX.Event(), CTX.Event()
    out: mp.Queue = CTX.Queue()
    p = CTX.Process(target=_wait_for_unstorable, args=(ns, out, ready, waiting))
    p.start()

    def loader(key: object) -> bytes:
        ready.set()              # our LOADING marker exists: let the other process miss
        assert waiting.wait(30)  # ... and return only once it waits on the marker
        return b"x" * (3 << 20)

    with pytest.raises(WeightError):
        cache.get_or_load("big", "a", loader)
    res = out.get(timeout=30)
    p.join(30)
    assert res.startswith("error:") and "storing the loaded value failed" in res
    cache.destroy()
