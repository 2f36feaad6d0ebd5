"""The manager's compiled allocate / free fast path: id parsing, and refusals that fall back to the checked path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sutazai_hwopt import MemoryPoolManager
from sutazai_hwopt._native.pool_table import parse_block_id
from sutazai_hwopt.errors import AccessDeniedError, InvalidArgumentError, NotFoundError, StateError

MiB = 1024**2


def _reference_parse(block_id: object) -> tuple[str, int, int] | None:
    if not isinstance(block_id, str):
        return None
    parts = block_id.split(":")
    if len(parts) != 3:
        return None
    digits = "0123456789"
    for p in parts[1:]:
        if not p or len(p) > 18 or any(c not in digits for c in p):
            return None
    return parts[0], int(parts[1]), int(parts[2])


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(alphabet="ab:0123456789²x", max_size=30),
    st.tuples(st.text(max_size=5), st.integers(0, 10**20), st.integers(0, 10**20)).map(
        lambda t: f"{t[0]}:{t[1]}:{t[2]}"),
    st.integers(), st.none(), st.binary(max_size=8),
))
def test_parse_block_id_matches_reference(block_id: Any) -> None:
    """parse_block_id accepts exactly 'pool:slot:gen' with 1-18 ASCII digits each, and returns the parts."""
    assert parse_block_id(block_id) == _reference_parse(block_id)


@pytest.fixture
def pm(ns: str) -> Any:
    with MemoryPoolManager(namespace=ns) as m:
        m.create_pool("data", size=8 * MiB)
        m.free_memory("a1", m.allocate_memory("a1", 64, pool_id="data"))    # a1 now cached: fast path
        yield m


def test_fast_path_refusals_raise_the_checked_errors(pm: MemoryPoolManager) -> None:
    """With the agent cached, bad ids, use after free and missing access still raise and change nothing."""
    bid = pm.allocate_memory("a1", 100, pool_id="data")
    other = pm.allocate_memory("a2", 100, pool_id="data")
    before = pm.stats("data")
    with pytest.raises(AccessDeniedError):
        pm.free_memory("a1", other)
    with pytest.raises(NotFoundError):
        pm.free_memory("a1", "data:999999:0")
    for bad in ("data:1", "data:x:0", 42, None, "data:1:2:3", "data:\u00b2:0", "data:" + "9" * 30 + ":0"):
        with pytest.raises(InvalidArgumentError):
            pm.free_memory("a1", bad)
    with pytest.raises(InvalidArgumentError):
        pm.free_memory(7, bid)
    for size in (0, -1, 1.5, True, "10"):
        with pytest.raises(InvalidArgumentError):
            pm.allocate_memory("a1", size, pool_id="data")
    with pytest.raises(NotFoundError):
        pm.allocate_memory("a1", 10, pool_id="nope")
    assert pm.stats("data") == before and pm.check("data")
    pm.free_memory("a1", bid)
    with pytest.raises(StateError):
        pm.free_memory("a1", bid)
    pm.free_memory("a2", other)
    assert pm.stats("data")["blocks"] == 0 and pm.check("data")


def test_stale_agent_cache_is_not_trusted(pm: MemoryPoolManager) -> None:
    """If this process's cached agent index now names another agent, the call re-registers the right one."""
    pool = pm._pool("data")
    idx = pool.agents["a1"]
    pool.t.agents["name"][idx] = b"intruder"          # as if GC freed the entry and another agent took it
    bid = pm.allocate_memory("a1", 100, pool_id="data")
    assert pool.agents["a1"] != idx
    assert pm.block_info("a1", bid)["held_by_agent"] == 1
    with pytest.raises(AccessDeniedError):
        pm.free_memory("intruder", bid)
    pm.free_memory("a1", bid)
    pool.t.agents["name"][idx] = b""
    assert pm.check("data")


def test_fast_path_sees_a_pool_destroyed_elsewhere(ns: str) -> None:
    """A pool destroyed by another manager raises NotFoundError on the cached fast path."""
    with MemoryPoolManager(namespace=ns) as a, MemoryPoolManager(namespace=ns) as b:
        a.create_pool("tmp", size=MiB)
        bid = b.allocate_memory("x", 10, pool_id="tmp")
        b.free_memory("x", b.allocate_memory("x", 10, pool_id="tmp"))
        a.destroy_pool("tmp")
        with pytest.raises(NotFoundError):
            b.allocate_memory("x", 10, pool_id="tmp")
        with pytest.raises(NotFoundError):
            b.free_memory("x", bid)


def test_fast_path_across_extension_segments_and_aliases(ns: str) -> None:
    """Fast allocate / free spill into extension segments and release aliases and big blocks correctly."""
    with MemoryPoolManager(namespace=ns) as m:
        m.create_pool("g", size=MiB, max_size=4 * MiB)
        m.free_memory("a", m.allocate_memory("a", 64, pool_id="g"))
        bids = [m.allocate_memory("a", 300 * 1024, pool_id="g") for _ in range(8)]
        assert m.stats("g")["segments"] > 1 and m.check("g")
        for bid in bids:
            m.free_memory("a", bid)
            assert m.check("g")
        first = m.put_bytes("a", b"z" * 5000, pool_id="g")
        second = m.put_bytes("a", b"z" * 5000, pool_id="g")
        assert m.block_info("a", second)["deduplicated"]
        m.free_memory("a", first)
        assert m.read("a", second) == b"z" * 5000 and m.check("g")
        m.free_memory("a", second)
        big = m.allocate_memory("a", MiB - 8192, pool_id="g")
        m.free_memory("a", big)
        assert m.stats("g")["blocks"] == 0 and m.check("g")
        m.destroy_pool("g")


def test_bind_heap_checks_its_arguments(pm: MemoryPoolManager) -> None:
    """TableCore.bind_heap accepts only a SegmentHeap and the allocator's capsule, and keeps the old binding."""
    from sutazai_hwopt._native import pool_alloc

    pool = pm._pool("data")
    with pytest.raises(InvalidArgumentError):
        pool.core.bind_heap(object(), pool_alloc.heap_api())
    with pytest.raises(InvalidArgumentError):
        pool.core.bind_heap(pool.heap, "not a capsule")
    pm.free_memory("a1", pm.allocate_memory("a1", 64, pool_id="data"))
    assert pm.check("data")
