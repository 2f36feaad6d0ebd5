"""Stateful model test: random allocate / write / seal / put / share / free / collect against a Python model,
with the pool's check() after every step."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from sutazai_hwopt import MemoryPoolManager
from sutazai_hwopt.errors import AccessDeniedError, StateError
from sutazai_hwopt.testing import throwaway_namespace

AGENTS = st.sampled_from(["a1", "a2", "a3"])
CONTENTS = st.sampled_from([b"a" * 100, b"b" * 100, b"a" * 5000, bytes(range(256)) * 40, b"xyz" * 3000])
CODECS = st.sampled_from([None, None, "lz4", "zlib"])


class PoolModel(RuleBasedStateMachine):
    """The model tracks each id's holders, state, content, alias target and the dedup index."""

    ids = Bundle("ids")

    @initialize()
    def setup(self) -> None:
        self._ns = throwaway_namespace("memtest")
        ns = self._ns.__enter__()
        self.pm = MemoryPoolManager(namespace=ns)
        # A small pool that must grow into extension segments during the run.
        self.pm.create_pool("data", size=1 << 17, max_size=4 << 20, max_blocks=64)
        self.L: dict[str, dict[str, Any]] = {}
        self.index: dict[tuple[bytes, str | None], str] = {}

    def teardown(self) -> None:
        if hasattr(self, "pm"):
            self.pm.destroy_pool("data")
            self.pm.close()
            self._ns.__exit__(None, None, None)

    # ---- model helpers --------------------------------------------------------------------------------------
    def _alive(self, bid: str) -> bool:
        e = self.L[bid]
        return e["state"] != "freed" and (sum(e["holders"].values()) + e["aliases"]) > 0

    def _release(self, bid: str) -> None:
        e = self.L[bid]
        if e["state"] == "alias":
            t = e["target"]
            self.L[t]["aliases"] -= 1
            e["state"] = "freed"
            if not self._alive(t):
                self._release(t)
            return
        if e["indexed"]:
            del self.index[e["key"]]
        e["state"] = "freed"

    def _seal_model(self, bid: str, content: bytes, codec: str | None) -> None:
        e = self.L[bid]
        e["content"], e["key"] = content, (content, codec)
        cand = self.index.get(e["key"]) if e["dedup"] else None
        if cand is not None:
            e["state"], e["target"] = "alias", cand
            self.L[cand]["aliases"] += 1
        else:
            e["state"] = "sealed"
            if e["dedup"]:
                self.index[e["key"]] = bid
                e["indexed"] = True

    def _new(self, agent: str, dedup: bool) -> dict[str, Any]:
        return {"holders": Counter({agent: 1}), "state": "writing", "content": None, "dedup": dedup,
                "indexed": False, "aliases": 0, "target": None, "key": None}

    def _expect_access(self, agent: str, bid: str) -> type[Exception] | None:
        e = self.L[bid]
        if e["state"] == "freed":
            return StateError
        if e["holders"][agent] == 0:
            return AccessDeniedError
        return None

    # ---- rules ----------------------------------------------------------------------------------------------
    @rule(target=ids, agent=AGENTS, size=st.sampled_from([1, 100, 3000, 5000, 12000]), dedup=st.booleans())
    def allocate(self, agent: str, size: int, dedup: bool) -> str:
        bid = self.pm.allocate_memory(agent, size, pool_id="data", enable_dedup=dedup)
        assert bid not in self.L or self.L[bid]["state"] == "freed"
        self.L[bid] = self._new(agent, dedup)
        self.L[bid]["size"] = size
        return bid

    @rule(target=ids, agent=AGENTS, content=CONTENTS, dedup=st.booleans(), codec=CODECS)
    def put(self, agent: str, content: bytes, dedup: bool, codec: str | None) -> str:
        bid = self.pm.put_bytes(agent, content, pool_id="data", enable_dedup=dedup, compression=codec)
        self.L[bid] = self._new(agent, dedup)
        self._seal_model(bid, content, codec)
        return bid

    @rule(agent=AGENTS, bid=ids, content=CONTENTS)
    def write(self, agent: str, bid: str, content: bytes) -> None:
        err = self._expect_access(agent, bid)
        e = self.L[bid]
        if err is None and e["state"] != "writing":
            err = StateError
        if err is not None:
            with pytest.raises(err):
                self.pm.view(agent, bid)
            return
        v = self.pm.view(agent, bid)
        data = (content * (e["size"] // len(content) + 1))[:e["size"]]
        v[:] = data
        e["written"] = data

    @rule(agent=AGENTS, bid=ids)
    def seal(self, agent: str, bid: str) -> None:
        err = self._expect_access(agent, bid)
        e = self.L[bid]
        if err is None and e["state"] != "writing":
            err = StateError
        if err is not None:
            with pytest.raises(err):
                self.pm.seal(agent, bid)
            return
        content = e.get("written")
        if content is None:
            content = bytes(self.pm.view(agent, bid))   # unwritten memory: whatever it holds is the content
        assert self.pm.seal(agent, bid) == bid
        self._seal_model(bid, content, None)

    @rule(owner=AGENTS, other=AGENTS, bid=ids)
    def share(self, owner: str, other: str, bid: str) -> None:
        if owner == other:
            return
        err = self._expect_access(owner, bid)
        if err is not None:
            with pytest.raises(err):
                self.pm.share_memory(owner, other, bid)
            return
        self.pm.share_memory(owner, other, bid)
        self.L[bid]["holders"][other] += 1

    @rule(agent=AGENTS, bid=ids)
    def free(self, agent: str, bid: str) -> None:
        err = self._expect_access(agent, bid)
        if err is not None:
            with pytest.raises(err):
                self.pm.free_memory(agent, bid)
            return
        self.pm.free_memory(agent, bid)
        e = self.L[bid]
        e["holders"][agent] -= 1
        if not self._alive(bid):
            self._release(bid)

    @rule(agent=AGENTS, bid=ids)
    def read(self, agent: str, bid: str) -> None:
        err = self._expect_access(agent, bid)
        e = self.L[bid]
        if err is None and e["state"] == "writing":
            err = StateError
        if err is not None:
            with pytest.raises(err):
                self.pm.read(agent, bid)
            return
        assert self.pm.read(agent, bid) == e["content"]
        assert self.pm.block_info(agent, bid)["deduplicated"] == (e["state"] == "alias")

    @rule()
    def collect(self) -> None:
        assert self.pm.collect_garbage() == {"agents": 0, "blocks": 0}

    # ---- invariants -----------------------------------------------------------------------------------------
    @invariant()
    def pool_consistent(self) -> None:
        if not hasattr(self, "pm"):
            return
        assert self.pm.check("data")
        s = self.pm.stats("data")
        live = [e for e in self.L.values() if e["state"] != "freed"]
        assert s["ids"] == len(live)
        assert s["blocks"] == sum(e["state"] in ("writing", "sealed") for e in live)


TestPoolModel = PoolModel.TestCase
TestPoolModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
