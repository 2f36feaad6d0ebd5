"""``write_behind``: a put that finds L2's lock busy returns at once and the entry is written later, in order,
never undoing a delete, and nothing owed is lost at close (also across processes).

A thread of this process holds the tier's lock to stand in for a writer the scheduler preempted: the lock is
held until the test releases it, so each assertion holds whatever the timing."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sutazai_hwopt import IntelligentCacheSystem
from sutazai_hwopt.cache import write_behind
from sutazai_hwopt.cache.codec import key_bytes
from sutazai_hwopt.errors import PoolExhaustedError, WeightError

CFG: dict[str, Any] = {"l1_size": 0, "l2_size": 8 << 20, "l3_size": 0, "enable_prefetch": False}


class HeldLock:
    """Holds the tier's lock on another thread (like a process preempted inside a put) until released."""

    def __init__(self, cache: IntelligentCacheSystem) -> None:
        assert cache._l2 is not None
        self.heap = cache._l2.heap
        self.taken = threading.Event()
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        self.heap.acquire()
        self.taken.set()
        self.go.wait(timeout=60)
        self.heap.release()

    def __enter__(self) -> HeldLock:
        self.thread.start()
        assert self.taken.wait(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        self.thread.join(timeout=30)


@pytest.fixture
def pair(ns: str) -> Iterator[tuple[IntelligentCacheSystem, IntelligentCacheSystem]]:
    """``writer`` with write_behind on and ``reader``, an ordinary handle on the same tiers."""
    writer = IntelligentCacheSystem({**CFG, "namespace": ns, "write_behind": True})
    reader = IntelligentCacheSystem({**CFG, "namespace": ns})
    try:
        yield writer, reader
    finally:
        writer.close()
        reader.destroy()


def owed(cache: IntelligentCacheSystem) -> dict[str, int]:
    assert cache._behind is not None
    return cache._behind.stats()


def test_key__cache__write_behind(pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    """On: a put while another holder has the lock returns without it; the writer reads its own value, the
    others see it once the writer's next call finds the lock free. Off (the reader): no write is ever owed."""
    writer, reader = pair
    assert reader._behind is None
    with HeldLock(writer):
        writer.put("k", b"v1", "a")                    # would sleep until release without write_behind
        assert owed(writer)["deferred"] == 1 and owed(writer)["pending"] == 1
        assert writer.get("k", "a") == (b"v1", "L1")   # its own write, from what it owes
        assert reader.get("k", "b") == (None, None)    # lock-free read: not written yet
    writer.get("something else", "a")                  # a read that misses L1 writes what is owed
    assert owed(writer)["pending"] == 0 and owed(writer)["written_later"] == 1
    value, level = reader.get("k", "b")
    assert bytes(value) == b"v1" and level == "L2"


def test_an_uncontended_put_is_written_at_once(pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    writer, reader = pair
    writer.put("k", b"v", "a")
    assert owed(writer)["direct"] == 1 and owed(writer)["pending"] == 0
    value, level = reader.get("k", "b")
    assert bytes(value) == b"v" and level == "L2"


def test_a_newer_put_of_an_owed_key_wins(pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    writer, reader = pair
    with HeldLock(writer):
        writer.put("k", b"old", "a")
        writer.put("j", b"other", "a")
        writer.put("k", b"new", "a")
        assert owed(writer)["pending"] == 2
    writer.flush()
    assert bytes(reader.get("k", "b")[0]) == b"new" and bytes(reader.get("j", "b")[0]) == b"other"


def test_a_delete_of_an_owed_key_is_not_undone(pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    writer, reader = pair
    writer.put("k", b"v0", "a")
    with HeldLock(writer):
        writer.put("k", b"v1", "a")
        writer.put("kept", b"x", "a")
    assert writer.delete("k", "a") is True
    writer.flush()
    assert reader.get("k", "b") == (None, None) and "k" not in writer
    assert bytes(reader.get("kept", "b")[0]) == b"x"


def test_clear_forgets_everything_owed(pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    writer, reader = pair
    with HeldLock(writer):
        for i in range(5):
            writer.put(f"k{i}", b"v", "a")
    writer.clear()
    writer.flush()
    assert owed(writer)["pending"] == 0
    assert all(reader.get(f"k{i}", "b") == (None, None) for i in range(5))


def test_close_writes_what_is_owed(ns: str) -> None:
    writer = IntelligentCacheSystem({**CFG, "namespace": ns, "write_behind": True})
    reader = IntelligentCacheSystem({**CFG, "namespace": ns})
    try:
        with HeldLock(writer):
            writer.put("k", b"v", "a")
        writer.close()
        assert bytes(reader.get("k", "b")[0]) == b"v"
    finally:
        reader.destroy()


def test_the_bound_makes_a_put_wait(pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PENDING owed entries a put waits for the lock like a plain put, so memory stays bounded."""
    writer, reader = pair
    monkeypatch.setattr(write_behind, "MAX_PENDING", 2)
    done = threading.Event()
    with HeldLock(writer):
        writer.put("a", b"1", "a")
        writer.put("b", b"2", "a")
        third = threading.Thread(target=lambda: (writer.put("c", b"3", "a"), done.set()), daemon=True)
        third.start()
        third.join(timeout=0.5)
        assert not done.is_set()                       # it cannot finish while the lock is held
    third.join(timeout=30)
    assert done.is_set() and owed(writer)["waited"] == 1 and owed(writer)["pending"] == 0
    assert [bytes(reader.get(k, "b")[0]) for k in "abc"] == [b"1", b"2", b"3"]


def _put_many(ns: str, who: int, n: int) -> None:
    cache = IntelligentCacheSystem({**CFG, "namespace": ns, "write_behind": True})
    for i in range(n):
        cache.put(f"{who}:{i}", b"%d" % (who * 100_000 + i), "agent")
    cache.close()


def test_processes_putting_at_once_lose_nothing(ns: str) -> None:
    """Four processes put 300 keys each into one tier at the same time; after they close, every key is there
    with its own value, whatever each put found the lock doing."""
    reader = IntelligentCacheSystem({**CFG, "namespace": ns})
    try:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_put_many, args=(ns, w, 300)) for w in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        for w in range(4):
            for i in range(300):
                value, level = reader.get(f"{w}:{i}", "check")
                assert level == "L2" and bytes(value) == b"%d" % (w * 100_000 + i)
    finally:
        reader.destroy()


def test_a_forked_child_does_not_write_its_parents_debts(
        pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    """The parent writes what it owes; a child forked meanwhile forgets it (else both would write it)."""
    writer, reader = pair
    with HeldLock(writer):
        writer.put("k", b"v", "a")
        ctx = mp.get_context("fork")
        q: Any = ctx.Queue()
        child = ctx.Process(target=_child_debts, args=(writer, q))
        child.start()
        assert q.get(timeout=60) == {"dropped": 1, "pending": 0}
        child.join(timeout=60)
        assert child.exitcode == 0
    writer.flush()
    assert bytes(reader.get("k", "b")[0]) == b"v"


def _child_debts(cache: IntelligentCacheSystem, q: Any) -> None:
    assert cache._behind is not None
    cache._behind.lookup(b"anything")                  # any call notices the fork
    s = cache._behind.stats()
    q.put({"dropped": s["dropped"], "pending": s["pending"]})


def test_a_value_too_big_for_l2_is_refused_and_owes_nothing(
        pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem]) -> None:
    """WeightError at the put, whether it would have been written at once or owed: nothing is owed, the key is
    not reported as held, and a delete of it returns (it used to wait forever for a write that never ran)."""
    writer, _reader = pair
    too_big = b"x" * (9 << 20)
    with pytest.raises(WeightError):
        writer.put("big", too_big, "a")
    with HeldLock(writer):
        writer.put("small", b"v", "a")                 # owed: the next put would be owed behind it
        with pytest.raises(WeightError):
            writer.put("big2", too_big, "a")
    assert "big" not in writer and "big2" not in writer
    assert writer.delete("big", "a") is False and writer.delete("big2", "a") is False
    writer.flush()
    assert owed(writer)["pending"] == 0 and owed(writer)["written_later"] == 1


def test_an_owed_write_the_tier_refuses_later_is_dropped_not_retried_forever(
        pair: tuple[IntelligentCacheSystem, IntelligentCacheSystem], monkeypatch: pytest.MonkeyPatch) -> None:
    writer, reader = pair
    with HeldLock(writer):
        writer.put("a", b"1", "a")
        writer.put("b", b"2", "a")
    behind = writer._behind
    assert behind is not None
    store = behind._store

    def refuse_a(kb: bytes, *args: Any, **kw: Any) -> bool:
        if kb == key_bytes("a"):
            raise PoolExhaustedError("every block pinned (simulated)")
        return store(kb, *args, **kw)

    monkeypatch.setattr(behind, "_store", refuse_a)
    writer.flush()
    assert owed(writer)["failed"] == 1 and owed(writer)["pending"] == 0
    assert reader.get("a", "b") == (None, None) and bytes(reader.get("b", "b")[0]) == b"2"
    writer.put("c", b"3", "a")                         # later puts are not held up by the dropped one
    assert bytes(reader.get("c", "b")[0]) == b"3"
