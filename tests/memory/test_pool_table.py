"""The compiled table core (TableCore): holder hash table and dedup index against dict models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from sutazai_hwopt._native import pool_table
from sutazai_hwopt._native.pool_table import TableCore
from sutazai_hwopt.errors import CorruptionError, InvalidArgumentError
from sutazai_hwopt.memory.tables import Tables, meta_bytes, table_sizes

SLOTS = st.integers(0, 40)
AGENTS = st.integers(0, 5)


def make(n_blocks: int = 48, n_agents: int = 8) -> tuple[bytearray, Tables]:
    sizes = table_sizes(n_blocks, n_agents)
    buf = bytearray(meta_bytes(sizes) + 4096)
    return buf, Tables(memoryview(buf), 0, len(buf), sizes)


def test_compiled() -> None:
    """The table core is a compiled extension module."""
    assert pool_table.__file__ is not None and pool_table.__file__.endswith(".so")


class HolderModel(RuleBasedStateMachine):
    """holder_add / holder_count against a dict; every live key stays reachable by the Python prober too."""

    @initialize()
    def setup(self) -> None:
        self.buf, self.t = make()
        self.model: dict[tuple[int, int], int] = {}
        self.dedup: dict[int, int] = {}

    @rule(slot=SLOTS, agent=AGENTS, delta=st.integers(1, 3))
    def add(self, slot: int, agent: int, delta: int) -> None:
        assert self.t.holder_add(slot, agent, delta) == self.model.get((slot, agent), 0) + delta
        self.model[(slot, agent)] = self.model.get((slot, agent), 0) + delta

    @rule(slot=SLOTS, agent=AGENTS)
    def drop(self, slot: int, agent: int) -> None:
        have = self.model.get((slot, agent), 0)
        if have == 0:
            with pytest.raises(CorruptionError):
                self.t.holder_add(slot, agent, -1)
            return
        assert self.t.holder_add(slot, agent, -1) == have - 1
        if have == 1:
            del self.model[(slot, agent)]
        else:
            self.model[(slot, agent)] = have - 1

    @rule(h=st.integers(0, 2**64 - 1), slot=SLOTS)
    def index(self, h: int, slot: int) -> None:
        self.t.dedup_insert(h, slot)
        self.dedup[h or 1] = slot

    @rule(h=st.integers(0, 2**64 - 1), slot=SLOTS)
    def unindex(self, h: int, slot: int) -> None:
        self.t.dedup_remove(h, slot)
        if self.dedup.get(h or 1) == slot:
            del self.dedup[h or 1]

    @invariant()
    def agree(self) -> None:
        if not hasattr(self, "t"):
            return
        for (slot, agent), count in self.model.items():
            assert self.t.holder_count(slot, agent) == count
            assert self.t.holders.find(((slot + 1) << 16) | agent) >= 0
        assert len(self.t.holders.items()) == len(self.model)
        for key, slot in self.dedup.items():
            assert self.t.dedup_lookup(key) == slot
        assert len(self.t.dedup.items()) == len(self.dedup)


TestHolderModel = HolderModel.TestCase
TestHolderModel.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)


def test_block_lifecycle_and_resolve() -> None:
    """new_block publishes an entry with one holder; resolve checks generation and access; unref releases."""
    _buf, t = make()
    core = t.core
    slot = core.free_slot()
    gen = core.new_block(slot, 1, 4096, 100, 100, 0, 0, 0, 3, -1)
    assert core.resolve(slot, gen, 3) == 1
    assert core.resolve(slot, gen, 4) == pool_table.NO_ACCESS
    assert core.resolve(slot, gen + 1, 3) == pool_table.FREED
    assert core.resolve(10**6, 0, 3) == pool_table.BAD_SLOT
    core.seal(slot, 11, 22, True)
    assert core.dedup_lookup(11) == slot and core.block(slot)[0] == 2
    alias = core.free_slot()
    core.add_refs(slot, 1)
    core.new_block(alias, 3, 0, 100, 100, 0, 0, 1, 4, slot, 11, 22)
    assert core.physical(alias) == slot
    core.holder_add(alias, 4, -1)
    assert core.unref(alias, 1) == []                    # the target keeps its own holder
    core.holder_add(slot, 3, -1)
    assert core.unref(slot, 1) == [(4096, 100)]
    assert core.dedup_lookup(11) == -1
    assert core.resolve(slot, gen, 3) == pool_table.FREED
    t.check(np.zeros(0, dtype=np.int64))


def test_bad_geometry_is_refused() -> None:
    """Hash tables must be powers of two and the tables must fit the buffer."""
    with pytest.raises(InvalidArgumentError):
        TableCore(bytearray(1 << 16), 64, 8, 8, 24, 16)
    with pytest.raises(InvalidArgumentError):
        TableCore(bytearray(1000), 64, 8, 8, 16, 16)
