"""MemoryPoolManager: pools, blocks, sealing, dedup, sharing, compression, GC, destroy, errors, stats."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import sutazai_hwopt
from sutazai_hwopt import MemoryPoolManager
from sutazai_hwopt.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    CorruptionError,
    IncompatibleLayoutError,
    InvalidArgumentError,
    NotFoundError,
    PoolExhaustedError,
    StateError,
)
from sutazai_hwopt.memory import manager as manager_mod
from sutazai_hwopt.shm import SHM_DIR, attach_segment, close_quietly, segment_name

from .conftest import FORK

MiB = 1024**2


@pytest.fixture
def pm(ns: str) -> Any:
    with MemoryPoolManager(namespace=ns) as m:
        m.create_pool("data", size=8 * MiB)
        yield m


def test_exported_from_package_root() -> None:
    """MemoryPoolManager is importable from the package root and listed in __all__."""
    assert sutazai_hwopt.MemoryPoolManager is MemoryPoolManager
    assert "MemoryPoolManager" in sutazai_hwopt.__all__


def test_pool_segment_is_private_and_unique(pm: MemoryPoolManager, ns: str) -> None:
    """A pool's segment is created mode 0600; creating it twice raises AlreadyExistsError."""
    mode = os.stat(os.path.join(SHM_DIR, segment_name(ns, "pool", "data"))).st_mode
    assert stat.S_IMODE(mode) == 0o600
    with pytest.raises(AlreadyExistsError):
        pm.create_pool("data", size=MiB)
    assert pm.pools() == ["data"]


@pytest.mark.parametrize("pool_id,size", [("bad name", MiB), ("x" * 65, MiB), ("ok", 10), ("ok", -1),
                                          ("ok", 2**60), ("ok", 1.5), (3, MiB)])
def test_create_pool_validates(ns: str, pool_id: Any, size: Any) -> None:
    """Bad pool ids and sizes raise InvalidArgumentError and create nothing."""
    with MemoryPoolManager(namespace=ns) as m:
        with pytest.raises(InvalidArgumentError):
            m.create_pool(pool_id, size=size)
        assert m.pools() == []


def test_allocate_view_seal_get_array(pm: MemoryPoolManager) -> None:
    """A block is writable through view() until sealed, then readable zero-copy and immutable."""
    bid = pm.allocate_memory("a1", 4000, pool_id="data")
    with pytest.raises(StateError, match="not sealed"):
        pm.get_array("a1", bid)
    v = pm.view("a1", bid)
    v[:] = np.arange(1000, dtype=np.float32).tobytes()
    assert pm.seal("a1", bid) == bid
    arr = pm.get_array("a1", bid, dtype=np.float32, shape=(10, 100))
    assert arr[3, 7] == 307.0 and not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0] = 1.0
    with pytest.raises(StateError, match="sealed"):
        pm.view("a1", bid)
    with pytest.raises(StateError, match="already sealed"):
        pm.seal("a1", bid)
    with pytest.raises(InvalidArgumentError, match="shape"):
        pm.get_array("a1", bid, dtype=np.float32, shape=(7, 7))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        pm.get_array("a1", bid, dtype=np.dtype("V3"))
    del arr, v
    pm.free_memory("a1", bid)
    assert pm.check("data")


def test_put_bytes_and_put_array_round_trip(pm: MemoryPoolManager) -> None:
    """put_bytes / put_array store a copy that read() and get_array() return unchanged."""
    b1 = pm.put_bytes("a1", b"hello world", pool_id="data")
    assert pm.read("a1", b1) == b"hello world"
    x = np.random.default_rng(0).standard_normal((64, 33))
    b2 = pm.put_array("a1", x, pool_id="data")
    assert np.array_equal(pm.get_array("a1", b2, x.dtype, x.shape), x)
    b3 = pm.put_array("a1", x[:, ::2], pool_id="data")     # non-contiguous input is copied in C order
    assert np.array_equal(pm.get_array("a1", b3, x.dtype, (64, 17)), x[:, ::2])
    out = bytearray(11)
    assert pm.read("a1", b1, out=out) == 11 and out == b"hello world"
    with pytest.raises(InvalidArgumentError):
        pm.read("a1", b1, out=bytearray(3))
    with pytest.raises(InvalidArgumentError):
        pm.put_bytes("a1", b"", pool_id="data")
    with pytest.raises(InvalidArgumentError):
        pm.put_array("a1", np.array([object()]), pool_id="data")
    assert pm.check("data")


def test_dedup_merges_identical_content_only(pm: MemoryPoolManager) -> None:
    """Sealing identical bytes stores them once (ids stay distinct and valid); different bytes never merge."""
    payload = os.urandom(300_000)
    b1 = pm.put_bytes("a1", payload, pool_id="data")
    b2 = pm.put_bytes("a2", payload, pool_id="data")
    b3 = pm.put_bytes("a3", payload[:-1] + bytes([payload[-1] ^ 1]), pool_id="data")   # differs in the last byte
    b4 = pm.put_bytes("a4", payload, pool_id="data", enable_dedup=False)
    assert len({b1, b2, b3, b4}) == 4
    assert pm.block_info("a2", b2)["deduplicated"] and not pm.block_info("a3", b3)["deduplicated"]
    assert not pm.block_info("a4", b4)["deduplicated"]
    s = pm.stats("data")
    assert s["blocks"] == 3 and s["ids"] == 4
    assert s["dedup_ratio"] == pytest.approx(4 / 3)
    pm.free_memory("a1", b1)                       # the canonical copy stays while the alias holds it
    assert pm.read("a2", b2) == payload
    pm.free_memory("a2", b2)
    assert pm.stats("data")["blocks"] == 2
    assert pm.check("data")


def test_no_false_merge_on_hash_collision(pm: MemoryPoolManager, monkeypatch: Any) -> None:
    """With every hash forced equal, different contents still stay separate (byte-for-byte check)."""
    import xxhash

    monkeypatch.setattr(xxhash, "xxh3_128_intdigest", lambda data: 12345)
    b1 = pm.put_bytes("a1", b"A" * 5000, pool_id="data")
    b2 = pm.put_bytes("a1", b"B" * 5000, pool_id="data")
    b3 = pm.put_bytes("a1", b"A" * 5000, pool_id="data")
    assert pm.read("a1", b2) == b"B" * 5000
    assert not pm.block_info("a1", b2)["deduplicated"] and pm.block_info("a1", b3)["deduplicated"]
    for b in (b1, b2, b3):
        pm.free_memory("a1", b)
    assert pm.check("data") and pm.stats("data")["blocks"] == 0


def test_sharing_and_reference_counts(pm: MemoryPoolManager) -> None:
    """Only granted agents read a block; it lives until every holder freed every reference."""
    bid = pm.put_bytes("owner", b"x" * 100, pool_id="data")
    with pytest.raises(AccessDeniedError):
        pm.read("stranger", bid)
    with pytest.raises(AccessDeniedError):
        pm.share_memory("stranger", "other", bid)
    pm.share_memory("owner", "reader", bid)
    pm.share_memory("owner", "reader", bid)
    assert pm.block_info("reader", bid)["held_by_agent"] == 2
    assert pm.block_info("owner", bid)["refs"] == 3
    pm.free_memory("owner", bid)
    with pytest.raises(AccessDeniedError):
        pm.read("owner", bid)
    pm.free_memory("reader", bid)
    assert pm.read("reader", bid) == b"x" * 100
    pm.free_memory("reader", bid)
    with pytest.raises(StateError, match="freed"):
        pm.read("reader", bid)
    with pytest.raises(InvalidArgumentError):
        pm.share_memory("owner", "owner", bid)
    assert pm.stats("data")["blocks"] == 0 and pm.check("data")


@pytest.mark.parametrize("size", [0, -5, True, 2.0, None])
def test_bad_sizes(pm: MemoryPoolManager, size: Any) -> None:
    """Zero, negative and non-integer sizes raise InvalidArgumentError; the pool is unchanged."""
    with pytest.raises(InvalidArgumentError, match="size"):
        pm.allocate_memory("a1", size, pool_id="data")
    assert pm.stats("data")["ids"] == 0 and pm.check("data")


def test_exhaustion_and_huge_sizes(pm: MemoryPoolManager) -> None:
    """Requests beyond the free space raise PoolExhaustedError (a MemoryError) and leave the pool intact."""
    keep = pm.put_bytes("a1", b"k" * 1000, pool_id="data")
    with pytest.raises(PoolExhaustedError):
        pm.allocate_memory("a1", 2**70, pool_id="data")
    with pytest.raises(MemoryError):
        pm.allocate_memory("a1", 9 * MiB, pool_id="data")
    blocks = [pm.allocate_memory("a1", MiB, pool_id="data") for _ in range(7)]
    with pytest.raises(PoolExhaustedError):
        pm.allocate_memory("a1", MiB, pool_id="data")
    assert pm.check("data") and pm.read("a1", keep) == b"k" * 1000
    for b in blocks:
        pm.free_memory("a1", b)


def test_unknown_and_malformed_ids(pm: MemoryPoolManager) -> None:
    """Unknown pools and slots raise NotFoundError; malformed ids and agent ids InvalidArgumentError."""
    with pytest.raises(NotFoundError, match="nope"):
        pm.allocate_memory("a1", 10, pool_id="nope")
    with pytest.raises(NotFoundError):
        pm.read("a1", "data:999999:0")
    with pytest.raises(StateError):
        pm.read("a1", "data:5:0")
    for bad in ("data:1", "data:x:0", 42, None):
        with pytest.raises(InvalidArgumentError):
            pm.read("a1", bad)
    for agent in ("", "x" * 49, 7, "a\x00b"):
        with pytest.raises(InvalidArgumentError):
            pm.allocate_memory(agent, 10, pool_id="data")


def test_compression_codecs_and_shuffle(pm: MemoryPoolManager) -> None:
    """lz4 and zlib blocks read back exactly; float arrays are shuffled; random data is stored raw."""
    text = (b'{"agent": "a1", "value": 12345, "tags": ["x", "y"]}\n' * 4000)
    for codec in ("lz4", "zlib"):
        bid = pm.put_bytes("a1", text, pool_id="data", compression=codec)
        info = pm.block_info("a1", bid)
        assert info["compression"] == codec and info["stored_bytes"] < len(text) / 3
        assert pm.read("a1", bid) == text
        with pytest.raises(StateError, match="compressed"):
            pm.get_array("a1", bid)
    x = np.linspace(0, 1, 50_000, dtype=np.float32)
    bid = pm.put_array("a1", x, pool_id="data", compression="lz4")
    assert pm.block_info("a1", bid)["shuffle"] == 4
    out = np.empty_like(x)
    pm.read("a1", bid, out=out)
    assert np.array_equal(out, x)
    rnd = os.urandom(200_000)
    bid = pm.put_bytes("a1", rnd, pool_id="data", compression="lz4")
    assert pm.block_info("a1", bid)["compression"] == "none"
    assert pm.read("a1", bid) == rnd
    with pytest.raises(InvalidArgumentError, match="compression"):
        pm.put_bytes("a1", b"abc", pool_id="data", compression="zstd")
    assert pm.stats("data")["compression_ratio"] > 1.5 and pm.check("data")


def test_stats_report_capacity_and_agents(pm: MemoryPoolManager) -> None:
    """stats() reports capacity, used + free = capacity, largest free block, ratios and blocks per agent."""
    pm.put_bytes("a1", b"1" * 10_000, pool_id="data")
    bid = pm.put_bytes("a2", b"2" * 10_000, pool_id="data")
    pm.share_memory("a2", "a3", bid)
    s = pm.stats("data")
    assert s["used"] + s["free"] == s["capacity"] >= 8 * MiB
    assert 0 < s["largest_free_block"] <= s["free"]
    assert 0.0 <= s["fragmentation"] < 1.0
    assert s["blocks_per_agent"] == {"a1": 1, "a2": 1, "a3": 1}


def _child_uses_and_exits(ns: str, bid: str, q: Any) -> None:
    with MemoryPoolManager(namespace=ns) as m:
        arr = m.get_array("reader", bid, np.int64)
        q.put(int(arr.sum()))
        del arr
        q.put(m.put_bytes("child", b"from the child", pool_id="data"))


def test_other_process_sees_pool_and_blocks(pm: MemoryPoolManager, ns: str, children: Any) -> None:
    """A forked child attaches by namespace, reads a shared block zero-copy and adds its own block."""
    x = np.arange(10_000, dtype=np.int64)
    bid = pm.put_array("owner", x, pool_id="data")
    pm.share_memory("owner", "reader", bid)
    q = FORK.Queue()
    p = children(_child_uses_and_exits, ns, bid, q)
    assert q.get(timeout=60) == int(x.sum())
    child_bid = q.get(timeout=60)
    p.join()
    assert pm.stats("data")["blocks_per_agent"]["child"] == 1
    pm.share_memory("child", "owner", child_bid)     # the child's agent stays usable from here
    assert pm.read("owner", child_bid) == b"from the child"
    q.close()
    q.join_thread()


def test_attaching_process_exit_does_not_unlink(pm: MemoryPoolManager, ns: str) -> None:
    """A fresh interpreter that attaches and exits leaves the segment (no resource-tracker unlink)."""
    bid = pm.put_bytes("owner", b"persist", pool_id="data")
    pm.share_memory("owner", "reader", bid)
    code = ("import sys; from multiprocessing import resource_tracker as rt; "
            "from sutazai_hwopt import MemoryPoolManager as M; "
            f"m = M(namespace={ns!r}); sys.stdout.write(m.read('reader', {bid!r}).decode()); m.close(); "
            "sys.stdout.write(' tracker started' if rt._resource_tracker._pid else '')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout == "persist" and "leaked" not in out.stderr, (out.stdout, out.stderr)
    assert os.path.exists(os.path.join(SHM_DIR, segment_name(ns, "pool", "data")))
    assert pm.read("owner", bid) == b"persist"


def _alloc_and_exit(ns: str, q: Any) -> None:
    with MemoryPoolManager(namespace=ns) as m:
        q.put([m.put_bytes("doomed", bytes([i]) * 5000, pool_id="data") for i in range(5)])


def test_collect_garbage_frees_dead_agents(pm: MemoryPoolManager, ns: str, children: Any) -> None:
    """Blocks held only by an agent whose process died are freed by collect_garbage()."""
    q = FORK.Queue()
    p = children(_alloc_and_exit, ns, q)
    bids = q.get(timeout=60)
    p.join()
    assert len(bids) == 5 and pm.stats("data")["blocks"] == 5
    assert pm.collect_garbage() == {"agents": 1, "blocks": 5}
    assert pm.stats("data")["blocks"] == 0 and pm.check("data")
    q.close()
    q.join_thread()


def test_reused_pid_is_not_mistaken_for_the_agent(pm: MemoryPoolManager) -> None:
    """An agent whose pid is alive but with another start time (a reused pid) is collected."""
    bid = pm.put_bytes("ghost", b"g" * 100, pool_id="data")
    keep = pm.put_bytes("me", b"m" * 100, pool_id="data")
    pool = pm._pool("data")
    idx = pool.t.agent_index(b"ghost")
    pool.t.agents["pid"][idx] = 1                                  # init: alive, started long before
    pool.t.agents["start"][idx] = (manager_mod.process_start_time(1) or 0) + 12345
    assert pm.collect_garbage()["agents"] == 1
    with pytest.raises(StateError):
        pm.read("ghost", bid)
    assert pm.read("me", keep) == b"m" * 100


def test_destroy_pool_unlinks_and_fails_later_calls(ns: str) -> None:
    """destroy_pool removes the segment; other managers' later calls raise NotFoundError."""
    with MemoryPoolManager(namespace=ns) as a, MemoryPoolManager(namespace=ns) as b:
        a.create_pool("tmp", size=MiB)
        bid = a.put_bytes("x", b"data", pool_id="tmp")
        assert b.read("x", bid) == b"data"
        a.destroy_pool("tmp")
        assert not os.path.exists(os.path.join(SHM_DIR, segment_name(ns, "pool", "tmp")))
        with pytest.raises(NotFoundError):
            b.read("x", bid)
        with pytest.raises(NotFoundError):
            a.allocate_memory("x", 10, pool_id="tmp")


def test_corrupted_header_attach_raises(pm: MemoryPoolManager, ns: str) -> None:
    """Random bytes over a pool's header make attaching raise IncompatibleLayoutError."""
    shm = attach_segment(segment_name(ns, "pool", "data"))
    assert shm.buf is not None
    shm.buf[:512] = os.urandom(512)
    close_quietly(shm)
    with MemoryPoolManager(namespace=ns) as other, pytest.raises(IncompatibleLayoutError):
        other.read("a1", "data:0:0")


def test_check_reports_table_corruption(pm: MemoryPoolManager) -> None:
    """A wrong reference count in the shared block table makes check() raise CorruptionError."""
    bid = pm.put_bytes("a1", b"z" * 100, pool_id="data")
    pool = pm._pool("data")
    slot = int(bid.split(":")[1])
    pool.t.refs[slot] = 7
    with pytest.raises(CorruptionError, match="reference counts"):
        pm.check("data")
    pool.t.refs[slot] = 1
    assert pm.check("data")


def _die_mid_update(ns: str, ready: Any) -> None:
    m = MemoryPoolManager(namespace=ns)
    pool = m._pool("data")
    pool.heap.acquire()
    pool.heap.alloc(12345)                       # an allocation no block claims
    slot = pool.t.free_slot()                    # and a block entry without a holder
    pool.t.off[slot] = pool.heap.alloc(500)
    pool.t.state[slot] = 1
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_recovery_after_death_mid_update(pm: MemoryPoolManager, ns: str, children: Any) -> None:
    """A process killed mid-update while holding the pool lock: the next call reconciles, check() passes."""
    keep = pm.put_bytes("a1", b"keep me" * 100, pool_id="data")
    ready = FORK.Event()
    p = children(_die_mid_update, ns, ready)
    assert ready.wait(60)
    p.join()
    assert pm.read("a1", keep) == b"keep me" * 100
    s = pm.stats("data")
    assert s["recoveries"] == 1 and s["ids"] == 1
    assert pm.check("data")


def test_big_duplicates_merge_without_copy(ns: str) -> None:
    """A >= 1 MiB duplicate is merged by put (no new allocation) and by seal; a same-head variant is not."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("big", size=16 * MiB)
        data = np.random.default_rng(5).integers(0, 255, 3 * MiB, dtype=np.uint8)
        b1 = pm.put_array("a1", data, pool_id="big")
        used = pm.stats("big")["used"]
        b2 = pm.put_array("a2", data, pool_id="big")
        assert pm.block_info("a2", b2)["deduplicated"] and pm.stats("big")["used"] == used
        b3 = pm.allocate_memory("a3", data.nbytes, pool_id="big")
        np.frombuffer(pm.view("a3", b3), np.uint8)[:] = data
        pm.seal("a3", b3)
        assert pm.block_info("a3", b3)["deduplicated"] and pm.stats("big")["used"] == used
        variant = data.copy()
        variant[-1] ^= 0xFF                              # same size and first 64 KiB, different tail
        b4 = pm.put_array("a4", variant, pool_id="big")
        assert not pm.block_info("a4", b4)["deduplicated"]
        assert np.array_equal(pm.get_array("a4", b4), variant)
        assert np.array_equal(pm.get_array("a2", b2), data)
        s = pm.stats("big")
        assert s["blocks"] == 2 and s["ids"] == 4 and s["dedup_ratio"] == pytest.approx(2.0)
        assert pm.check("big")
        for agent, b in (("a1", b1), ("a2", b2), ("a3", b3), ("a4", b4)):
            pm.free_memory(agent, b)
        assert pm.stats("big")["blocks"] == 0 and pm.check("big")
        pm.destroy_pool("big")


def test_freed_big_block_returns_its_pages(ns: str) -> None:
    """Freeing a big block punches its pages out of the segment (reused memory reads back as zeros)."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("big", size=8 * MiB)
        b1 = pm.put_bytes("a", b"\xff" * (2 * MiB), pool_id="big", enable_dedup=False)
        pm.free_memory("a", b1)
        b2 = pm.allocate_memory("a", 2 * MiB, pool_id="big")
        v = np.frombuffer(pm.view("a", b2), np.uint8)
        assert v[8192:-8192].max() == 0
        del v
        pm.free_memory("a", b2)
        pm.destroy_pool("big")


def test_candidate_freed_during_compare_is_not_merged(pm: MemoryPoolManager, monkeypatch: Any) -> None:
    """If the dedup candidate is freed between the compare and the merge, the new block is kept on its own."""
    data = np.random.default_rng(6).integers(0, 255, 2 * MiB, dtype=np.uint8)
    first = pm.put_array("a1", data, pool_id="data")
    real = manager_mod.compare_or_digest

    def racing(buf: Any, cand: Any, cand_digest: int) -> Any:
        result = real(buf, cand, cand_digest)
        if cand is not None:
            del cand
            pm.free_memory("a1", first)          # another holder drops the last reference meanwhile
        return result

    monkeypatch.setattr(manager_mod, "compare_or_digest", racing)
    second = pm.put_array("a2", data, pool_id="data")
    assert not pm.block_info("a2", second)["deduplicated"]
    assert np.array_equal(pm.get_array("a2", second), data)
    assert pm.check("data")


def test_dropping_an_unclosed_manager_is_quiet(ns: str) -> None:
    """A manager dropped without close(), even with live arrays, unmaps without unraisable errors."""
    import gc

    pm = MemoryPoolManager(namespace=ns)
    pm.create_pool("tmp", size=MiB)
    bid = pm.put_bytes("a", b"still here", pool_id="tmp")
    arr = pm.get_array("a", bid)
    del pm
    gc.collect()                         # an unraisable error here fails the test (warnings are errors)
    assert bytes(arr) == b"still here"   # the mapping lives on with the array
    del arr
    gc.collect()
    with MemoryPoolManager(namespace=ns) as again:
        assert again.read("a", bid) == b"still here"
        again.destroy_pool("tmp")


def test_segment_counters_balance(ns: str) -> None:
    """Every segment a test creates is unlinked again (created == unlinked)."""
    from sutazai_hwopt.shm import COUNTERS

    before = dict(COUNTERS)
    with MemoryPoolManager(namespace=ns) as pm:
        for i in range(3):
            pm.create_pool(f"p{i}", size=MiB)
        with MemoryPoolManager(namespace=ns) as other:
            other.put_bytes("a", b"x", pool_id="p1")
        for i in range(3):
            pm.destroy_pool(f"p{i}")
    assert COUNTERS["created"] - before["created"] == 3
    assert COUNTERS["unlinked"] - before["unlinked"] == 3
    assert COUNTERS["attached"] - before["attached"] == 1


def test_debug_build_counters_balance() -> None:
    """In a debug build the allocator's alloc/free counters balance after a workload."""
    from sutazai_hwopt._native import buildinfo, pool_alloc

    if not buildinfo.DEBUG_BUILD:
        pytest.skip("counters are compiled in only with SUTAZAI_HWOPT_DEBUG=1")
    before = pool_alloc.debug_counters()
    buf = bytearray(MiB)
    pool_alloc.format_segment(buf, 0)
    heap = pool_alloc.SegmentHeap(buf)
    for off in [heap.alloc(n) for n in (10, 5000, 70_000)]:
        heap.free(off)
    after = pool_alloc.debug_counters()
    assert after["allocs"] - before["allocs"] == after["frees"] - before["frees"] == 3


def test_share_does_not_rebind_the_target(pm: MemoryPoolManager) -> None:
    """Sharing to an agent neither binds it to the sharer's process nor lets GC drop a grant not yet used."""
    bid = pm.put_bytes("owner", b"grant", pool_id="data")
    pm.share_memory("owner", "later", bid)
    t = pm._pool("data").t
    idx = t.agent_index(b"later")
    assert int(t.agents["pid"][idx]) == 0                 # not bound to us: "later" has not run yet
    assert pm.collect_garbage()["agents"] == 0
    assert pm.read("later", bid) == b"grant"              # first own use binds it to this process
    assert int(t.agents["pid"][idx]) == os.getpid()


def test_destroy_pool_with_unreadable_header(pm: MemoryPoolManager, ns: str) -> None:
    """destroy_pool also removes a segment whose header is damaged (it cannot be attached)."""
    shm = attach_segment(segment_name(ns, "pool", "data"))
    assert shm.buf is not None
    shm.buf[:64] = os.urandom(64)
    close_quietly(shm)
    with MemoryPoolManager(namespace=ns) as other:
        other.destroy_pool("data")
    assert not os.path.exists(os.path.join(SHM_DIR, segment_name(ns, "pool", "data")))


def _child_reads(ns: str, bids: list[str], q: Any) -> None:
    with MemoryPoolManager(namespace=ns) as m:
        q.put([m.read("reader", b) for b in bids])


def test_pool_grows_into_extension_segments(ns: str, children: Any) -> None:
    """A pool with max_size > size adds 0600 segments when full; other processes read blocks in them."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("g", size=256 * 1024, max_size=1024 * 1024)
        assert pm.stats("g")["segments"] == 1
        bids = [pm.put_bytes("a", bytes([i]) * 100_000, pool_id="g", enable_dedup=False) for i in range(8)]
        s = pm.stats("g")
        assert s["segments"] >= 3 and s["capacity"] > 256 * 1024
        assert pm.pools() == ["g"]                              # extensions are not pools
        for name in os.listdir(SHM_DIR):
            if name.startswith(segment_name(ns, "pool", "g")):
                assert stat.S_IMODE(os.stat(os.path.join(SHM_DIR, name)).st_mode) == 0o600
        with pytest.raises(PoolExhaustedError):
            pm.allocate_memory("a", 900_000, pool_id="g")
        for b in bids:
            pm.share_memory("a", "reader", b)
        q = FORK.Queue()
        p = children(_child_reads, ns, bids, q)
        assert q.get(timeout=60) == [bytes([i]) * 100_000 for i in range(8)]
        p.join()
        q.close()
        q.join_thread()
        assert pm.check("g")
        for b in bids:
            pm.free_memory("a", b)
            pm.free_memory("reader", b)
        assert pm.check("g") and pm.stats("g")["blocks"] == 0
        pm.destroy_pool("g")
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith(segment_name(ns, "pool", "g"))]


def test_growth_is_not_spent_on_requests_no_segment_can_hold(ns: str) -> None:
    """A request larger than an extension segment raises without adding segments."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("g", size=256 * 1024, max_size=4 * MiB)
        with pytest.raises(PoolExhaustedError, match="cannot grow"):
            pm.allocate_memory("a", 300 * 1024, pool_id="g")
        assert pm.stats("g")["segments"] == 1
        pm.destroy_pool("g")
