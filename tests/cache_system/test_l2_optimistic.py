"""The lock-free (sequence-locked) read path of the shared L2 tier.

A hypothesis state machine runs a writer and reader threads against a dict model; real processes read while
others put, evict and are SIGKILLed at random moments. Every value carries a checksum, so a torn read (bytes of
two versions, or of a reused block) is detected wherever it happens.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing as mp
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sutazai_hwopt._native import shmcache_index
from sutazai_hwopt._native.shmcache_index import COPY_MAX
from sutazai_hwopt.cache.codec import key_hash
from sutazai_hwopt.cache.shared_index import SharedTier
from sutazai_hwopt.errors import IncompatibleLayoutError, InvalidArgumentError, PoolExhaustedError, WeightError
from sutazai_hwopt.shm import list_segment_names
from sutazai_hwopt.testing import throwaway_namespace

CTX = mp.get_context("fork")
NKEYS = 16
KEYS = [b"key-%d" % i for i in range(NKEYS)]
HASHES = [key_hash(k) for k in KEYS]


def _value(k: int, version: int, size: int) -> bytes:
    """``key index | version | filler | blake2b-16 of the rest``: any mix of two values fails the digest."""
    body = k.to_bytes(4, "little") + version.to_bytes(8, "little") + random.Random(version).randbytes(size)
    return body + hashlib.blake2b(body, digest_size=16).digest()


def _intact(k: int, body: bytes) -> bool:
    return (len(body) >= 28 and hashlib.blake2b(body[:-16], digest_size=16).digest() == body[-16:]
            and int.from_bytes(body[:4], "little") == k)


def _version(body: bytes) -> int:
    return int.from_bytes(body[4:12], "little")


# ---- threads against a dict model --------------------------------------------------------------------------------
class ReadersAndWriter(RuleBasedStateMachine):
    """The machine's rules are the writer (put / delete / evict / clear) and exact reads; two reader threads read
    the new path all the time. Large bodies make ``put`` copy without the GIL, so readers run mid-write."""

    def __init__(self) -> None:
        super().__init__()
        self._ns_cm = throwaway_namespace("l2opt")
        self.ns = self._ns_cm.__enter__()
        self.tier = SharedTier(self.ns, "l2", 8 << 20, max_entries=64)
        self.model: dict[int, bytes] = {}
        self.versions = 0
        self.written: list[set[int]] = [set() for _ in range(NKEYS)]   # every version ever put, per key
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.reads = [0, 0]
        self.threads = [threading.Thread(target=self._reader, args=(i,), daemon=True) for i in range(2)]
        for t in self.threads:
            t.start()

    def _reader(self, i: int) -> None:
        rng = random.Random(i)
        index = self.tier.index
        while not self.stop.is_set():
            k = rng.randrange(NKEYS)
            r = index.get(KEYS[k], HASHES[k], rng.random() < 0.5)
            if r is not None:
                body = bytes(r[3])
                del r
                if not _intact(k, body):
                    self.errors.append(f"torn value of key {k}")
                elif _version(body) not in self.written[k]:
                    self.errors.append(f"key {k} returned version {_version(body)}, never put for it")
            self.reads[i] += 1

    def teardown(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a reader thread is blocked"
        assert not self.errors, self.errors[:5]
        gc.collect()
        self.tier.destroy()
        assert list_segment_names(self.ns) == []
        self._ns_cm.__exit__(None, None, None)

    def _sync(self) -> None:
        # Entries only disappear by eviction: the tier holds a subset of the model.
        keys = set(self.tier.index.keys())
        for k in list(self.model):
            if KEYS[k] not in keys:
                del self.model[k]
        assert keys == {KEYS[k] for k in self.model}

    @rule(k=st.integers(0, NKEYS - 1), size=st.sampled_from([1, 100, 5000, COPY_MAX - 28, 100_000, 300_000]),
          prio=st.integers(0, 9))
    def put(self, k: int, size: int, prio: int) -> None:
        self.versions += 1
        v = _value(k, self.versions, size)
        self.written[k].add(self.versions)
        try:
            self.tier.put(key=KEYS[k], key_hash=HASHES[k], kind=1, priority=prio, head=b"h", body=[v])
        except PoolExhaustedError:   # every block pinned by the readers' live views: nothing changed
            self._sync()
            return
        self.model[k] = v
        self._sync()

    @rule(k=st.integers(0, NKEYS - 1))
    def delete(self, k: int) -> None:
        assert self.tier.delete(key=KEYS[k], key_hash=HASHES[k]) == (k in self.model)
        self.model.pop(k, None)

    @rule(n=st.integers(1, 4))
    def evict(self, n: int) -> None:
        self.tier.index.evict(n)
        self._sync()

    @rule()
    def clear(self) -> None:
        self.tier.clear()
        self.model.clear()

    @rule(k=st.integers(0, NKEYS - 1), pin=st.booleans())
    def read(self, k: int, pin: bool) -> None:
        r = self.tier.index.get(KEYS[k], HASHES[k], pin)
        if k in self.model:
            assert r is not None and r[2] == b"h" and bytes(r[3]) == self.model[k]
        else:
            assert r is None

    @invariant()
    def consistent(self) -> None:
        assert not self.errors, self.errors[:5]
        assert self.tier.check()


ReadersAndWriter.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
test_readers_and_writer_against_model = ReadersAndWriter.TestCase


def test_quiet_reads_take_no_lock(ns: str) -> None:
    """Without writers every small read is answered on the lock-free path, even while another thread holds
    the lock; a value above copy_max is pinned (zero-copy) instead."""
    tier = SharedTier(ns, "l2", 4 << 20)
    small, big = _value(0, 1, 1000), _value(1, 2, COPY_MAX + 1)
    tier.put(key=KEYS[0], key_hash=HASHES[0], kind=1, priority=5, head=b"", body=[small])
    tier.put(key=KEYS[1], key_hash=HASHES[1], kind=1, priority=5, head=b"", body=[big])
    before = tier.index.read_counters()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with tier.heap:
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(60)
        for _ in range(100):
            r = tier.get(key=KEYS[0], key_hash=HASHES[0])
            assert r is not None and isinstance(r[3], bytes) and r[3] == small
        assert tier.get(key=b"absent", key_hash=key_hash(b"absent")) is None
    finally:
        release.set()
        t.join(60)
    after = tier.index.read_counters()
    assert after["fast"] - before["fast"] == 101 and after["fallbacks"] == before["fallbacks"]
    r = tier.get(key=KEYS[1], key_hash=HASHES[1])
    assert r is not None and not isinstance(r[3], bytes) and bytes(r[3]) == big
    assert tier.index.local_pin_count() == 1
    del r
    gc.collect()
    assert tier.index.local_pin_count() == 0
    assert tier.check()
    tier.destroy()


def test_reads_of_a_stripe_left_odd_fall_back_to_the_locked_path(ns: str) -> None:
    """A writer SIGKILLed holding the lock with a stripe odd: readers fall back to the locked path, whose
    recovery resets every stripe to even; lock-free reads resume."""
    tier = SharedTier(ns, "l2", 4 << 20)
    v = _value(3, 1, 200)
    tier.put(key=KEYS[3], key_hash=HASHES[3], kind=1, priority=5, head=b"", body=[v])
    p = CTX.Process(target=_die_mid_write, args=(ns,))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert tier.index.epoch(HASHES[3]) % 2 == 1, "the dead writer left the stripe odd"
    before = tier.index.read_counters()
    r = tier.get(key=KEYS[3], key_hash=HASHES[3])
    assert r is not None and isinstance(r[3], bytes) and r[3] == v
    mid = tier.index.read_counters()
    assert mid["fallbacks"] == before["fallbacks"] + 1
    assert tier.index.epoch(HASHES[3]) % 2 == 0 and tier.heap.recoveries >= 1
    assert tier.get(key=KEYS[3], key_hash=HASHES[3]) is not None
    assert tier.index.read_counters()["fast"] == mid["fast"] + 1
    assert tier.check()
    tier.destroy()


def test_an_index_of_the_previous_layout_is_refused(ns: str) -> None:
    """Version 2 bumped stripes by one per change (no odd/even meaning): attaching to it is refused."""
    tier = SharedTier(ns, "l2", 4 << 20)
    buf = tier._att.shm.buf if tier._att is not None else None
    assert buf is not None
    pos = tier.heap.meta_offset + 8          # ihdr_t.version
    word = buf[pos:pos + 8].cast("Q")
    assert word[0] == 3
    word[0] = 2
    try:
        with pytest.raises(IncompatibleLayoutError, match="version 2 is not 3"):
            shmcache_index.ShmIndex(buf, tier.heap)
    finally:
        word[0] = 3
        word.release()
        del buf
    assert tier.check()
    tier.destroy()


def _die_mid_write(ns: str) -> None:
    tier = SharedTier(ns, "l2", 4 << 20)
    tier.heap.acquire()
    # Start a delete of key 3 by hand, as far as making its stripe odd: the index layer's writer step.
    tier.index.evict(0)      # a locked no-op, so the handle is warm
    _open_stripe(tier, HASHES[3])
    os.kill(os.getpid(), signal.SIGKILL)


def _open_stripe(tier: SharedTier, h: int) -> None:
    """Make ``h``'s stripe odd as a writer does (the offset of the stripe array is in the index header)."""
    buf = tier._att.shm.buf if tier._att is not None else None
    assert buf is not None
    meta = tier.heap.meta_offset
    words = buf[meta:meta + 48].cast("Q")
    nstripes, stripes_off = words[4], words[5]
    pos = stripes_off + 8 * (h & (nstripes - 1))
    word = buf[pos:pos + 8].cast("Q")
    word[0] += 1
    word.release()
    words.release()
    del buf


# ---- real processes, SIGKILLed at random moments -----------------------------------------------------------------
SIZES = [40, 3000, 60_000, 200_000, 1 << 20]
TIER = 24 << 20


def _reader(ns: str, i: int, stop: Any, progress: Any, torn_dir: str) -> None:
    tier = SharedTier(ns, "l2", TIER, max_entries=64)
    rng = random.Random(os.getpid())
    n = 0
    while not stop[0]:
        k = rng.randrange(NKEYS)
        r = tier.get(key=KEYS[k], key_hash=HASHES[k]) if rng.random() < 0.5 else \
            tier.index.get(KEYS[k], HASHES[k], False)
        if r is not None:
            body = bytes(r[3])
            del r
            if not _intact(k, body):
                Path(torn_dir, f"{os.getpid()}-{k}").write_bytes(body[:64])
                os._exit(3)
        n += 1
        progress[i] = n
    tier.close()


def _writer(ns: str, seed: int, stop: Any) -> None:
    tier = SharedTier(ns, "l2", TIER, max_entries=64)
    rng = random.Random(seed)
    # Values made up front, so a writer spends its time in put (under the lock) and is often killed there.
    keys = [rng.randrange(NKEYS) for _ in range(24)]
    values = [(k, _value(k, (seed << 32) + j, rng.choice(SIZES))) for j, k in enumerate(keys)]
    while not stop[0]:
        k, v = rng.choice(values)
        x = rng.random()
        try:
            if x < 0.85:
                tier.put(key=KEYS[k], key_hash=HASHES[k], kind=1, priority=rng.randrange(10), head=b"", body=[v])
            elif x < 0.92:
                tier.delete(key=KEYS[k], key_hash=HASHES[k])
            else:
                tier.index.evict(rng.randrange(1, 4))
        except PoolExhaustedError:
            tier.reclaim_dead()
    tier.close()


def test_processes_read_while_others_write_and_die(ns: str) -> None:
    """3 readers and 2 writers; 24 times a random one of them is SIGKILLed (readers mid-read too) and replaced.
    No reader ever sees a torn value, check() passes after every kill, and every reader stops when asked."""
    rng = random.Random(14)
    # A flag in shared memory without a lock: a process SIGKILLed inside an mp.Event's lock would block the rest.
    stop = CTX.RawArray("b", 1)
    progress = CTX.RawArray("Q", 64)
    tier = SharedTier(ns, "l2", TIER, max_entries=64)
    with tempfile.TemporaryDirectory(prefix="l2opt-torn-") as torn_dir:
        procs: dict[str, mp.process.BaseProcess] = {}
        slot = 0

        def spawn(role: str, n: int) -> None:
            nonlocal slot
            if role == "r":
                p = CTX.Process(target=_reader, args=(ns, slot % 64, stop, progress, torn_dir))
            else:
                p = CTX.Process(target=_writer, args=(ns, 1000 + slot, stop))
            slot += 1
            p.start()
            procs[f"{role}{n}"] = p

        for n in range(3):
            spawn("r", n)
        for n in range(2):
            spawn("w", n)
        try:
            for _ in range(24):
                time.sleep(rng.uniform(0.02, 0.2))
                name = rng.choice(sorted(procs))
                victim = procs[name]
                os.kill(victim.pid, signal.SIGKILL)   # type: ignore[arg-type]
                victim.join(60)
                assert victim.exitcode in (-signal.SIGKILL, 3), (name, victim.exitcode)
                assert not os.listdir(torn_dir), f"torn values read: {os.listdir(torn_dir)}"
                assert tier.check()
                spawn(name[0], int(name[1:]))
        finally:
            stop[0] = 1
            blocked = []
            for name, p in procs.items():
                p.join(120)
                if p.is_alive():
                    blocked.append(name)
            for name in blocked:
                procs[name].kill()
                procs[name].join(10)
            assert not blocked, f"{blocked} did not stop: blocked"

        assert not os.listdir(torn_dir), f"torn values read: {os.listdir(torn_dir)}"
        assert all(p.exitcode == 0 for p in procs.values()), {n: p.exitcode for n, p in procs.items()}
    assert tier.check()
    tier.reclaim_dead()
    assert tier.check()
    tier.destroy()


def test_the_index_needs_a_segment_heap(ns: str) -> None:
    """The index calls the heap's C entry points under the lock, so anything but a SegmentHeap is refused."""
    tier = SharedTier(ns, "l2", 4 << 20)
    buf = tier._att.shm.buf if tier._att is not None else None
    assert buf is not None

    class LooksLikeAHeap:
        meta_offset = tier.heap.meta_offset
        meta_size = tier.heap.meta_size

    try:
        with pytest.raises(InvalidArgumentError, match="SegmentHeap"):
            shmcache_index.ShmIndex(buf, LooksLikeAHeap())
    finally:
        del buf
    tier.destroy()


def test_a_full_tier_evicts_until_a_large_value_fits(ns: str) -> None:
    """With the heap full of small entries, a value needing many victims is stored after evicting as many as
    it takes (the allocation is retried after each victim without raising); one larger than the heap is refused
    and nothing stored is lost."""
    tier = SharedTier(ns, "l2", 1 << 20, max_entries=6000)
    try:
        for i in range(6000):
            k = b"%d" % i
            tier.put(key=k, key_hash=key_hash(k), kind=0, priority=0, head=b"", body=[b"v" * 200])
        before = tier.index.stats()["entries"]
        assert 500 < before < 6000                        # the heap, not the index, is what limits it
        big = b"x" * 300_000
        tier.put(key=b"big", key_hash=key_hash(b"big"), kind=0, priority=0, head=b"", body=[big])
        got = tier.get(key=b"big", key_hash=key_hash(b"big"))
        assert got is not None and bytes(got[3]) == big
        kept = tier.index.stats()["entries"]
        assert kept < before
        with pytest.raises(WeightError):
            tier.put(key=b"huge", key_hash=key_hash(b"huge"), kind=0, priority=0, head=b"",
                     body=[b"y" * (2 << 20)])
        assert tier.index.stats()["entries"] == kept and tier.check()
    finally:
        tier.destroy()
