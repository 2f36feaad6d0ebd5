"""Reclaim without being asked: a full pool collects dead agents before it raises, and grants to an agent that
never attaches expire after the grace period (real processes; no timing assertions)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sutazai_hwopt.errors import AccessDeniedError, PoolExhaustedError
from sutazai_hwopt.memory import MemoryPoolManager

FORK = multiprocessing.get_context("fork")
MiB = 1024**2


@pytest.fixture
def pm(ns: str) -> Iterator[MemoryPoolManager]:
    with MemoryPoolManager(namespace=ns) as m:
        m.create_pool("small", size=4 * MiB)
        yield m


def _fill_and_exit(ns: str, q: Any) -> None:
    """A doomed agent: fills the pool with 1 MiB blocks until it is full, reports the count, exits holding them."""
    with MemoryPoolManager(namespace=ns) as m:
        held = []
        while True:
            try:
                held.append(m.allocate_memory("doomed", MiB, pool_id="small"))
            except PoolExhaustedError:
                break
        q.put(len(held))


def test_full_pool_reclaims_dead_agents_before_raising(pm: MemoryPoolManager, ns: str, children: Any) -> None:
    """The pool is full of a killed agent's blocks; the next allocation succeeds, with no collect call."""
    q = FORK.Queue()
    p = children(_fill_and_exit, ns, q)
    n = q.get(timeout=60)
    p.join()
    assert n >= 2
    assert pm.stats("small")["blocks"] == n          # the dead agent's blocks fill the pool
    bid = pm.allocate_memory("alive", MiB, pool_id="small")    # would raise without the reclaim
    assert pm.block_info("alive", bid)["state"] == "writing"
    st = pm.stats("small")
    assert st["blocks"] == 1 and "doomed" not in st["blocks_per_agent"]
    assert pm.check("small")
    q.close()
    q.join_thread()


def test_full_pool_of_live_agents_still_raises(pm: MemoryPoolManager) -> None:
    """Nothing to reclaim: PoolExhaustedError as before, and the pool is unchanged."""
    held = []
    with pytest.raises(PoolExhaustedError):
        while True:
            held.append(pm.allocate_memory("me", MiB, pool_id="small"))
    assert pm.stats("small")["blocks"] == len(held) and pm.check("small")


def test_put_bytes_reclaims_before_raising(pm: MemoryPoolManager, ns: str, children: Any) -> None:
    """The put path (allocate + copy + seal) reclaims too."""
    q = FORK.Queue()
    p = children(_fill_and_exit, ns, q)
    q.get(timeout=60)
    p.join()
    bid = pm.put_bytes("alive", b"x" * MiB, pool_id="small")
    assert pm.read("alive", bid) == b"x" * MiB
    q.close()
    q.join_thread()


def test_grant_to_an_agent_that_never_attaches_expires(ns: str) -> None:
    """A block shared with an agent that never uses the pool keeps its grant within the grace period, and
    loses it after; an agent that attached is not affected."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("small", size=4 * MiB)
        bid = pm.put_bytes("owner", b"w" * 4096, pool_id="small")
        pm.share_memory("owner", "never", bid)
        pm.share_memory("owner", "later", bid)
        pm.free_memory("owner", bid)                   # only the grants keep the block now
        assert pm.collect_garbage(grace_s=3600.0) == {"agents": 0, "blocks": 0}
        assert pm.read("later", bid) == b"w" * 4096    # "later" attaches (binds to this process) by using it
        pool = pm._pool("small")
        idx = pool.t.agent_index(b"never")
        pool.t.agents["start"][idx] = int(time.time()) - 100   # its grant is 100 s old
        assert pm.collect_garbage(grace_s=3600.0) == {"agents": 0, "blocks": 0}
        assert pm.collect_garbage(grace_s=50.0) == {"agents": 1, "blocks": 0}
        assert pm.read("later", bid) == b"w" * 4096    # still held by the agent that attached
        with pytest.raises(AccessDeniedError):
            pm.read("never", bid)
        pm.free_memory("later", bid)
        assert pm.stats("small")["blocks"] == 0 and pm.check("small")


def test_grace_period_comes_from_the_config(ns: str) -> None:
    """``hardware.grant_grace_s`` is the default grace: 0 reclaims an unattached grant at the next pass."""
    from sutazai_hwopt.config import load_config

    cfg = load_config(None, overrides={"hardware": {"grant_grace_s": 0.0}})
    with MemoryPoolManager(namespace=ns, config=cfg) as pm:
        pm.create_pool("small", size=4 * MiB)
        bid = pm.put_bytes("owner", b"v" * 4096, pool_id="small")
        pm.share_memory("owner", "never", bid)
        pm.free_memory("owner", bid)
        assert pm.collect_garbage() == {"agents": 1, "blocks": 1}
        assert pm.stats("small")["blocks"] == 0 and pm.check("small")
