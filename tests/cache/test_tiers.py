"""The levels below L1 keep one contract, :class:`~sutazai_hwopt.cache.tiers.Tier`: keyword-only arguments with
the same names, and the same put/get/contains/delete/clear behaviour."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from sutazai_hwopt.cache.codec import encode, key_bytes, key_hash
from sutazai_hwopt.cache.l3 import L3Tier
from sutazai_hwopt.cache.remote import RemoteTier
from sutazai_hwopt.cache.shared_index import SharedTier
from sutazai_hwopt.cache.tiers import Tier
from sutazai_hwopt.shm import list_segment_names
from sutazai_hwopt.testing import throwaway_namespace

LEVELS = [SharedTier, L3Tier, RemoteTier]
METHODS = ["put", "get", "contains", "delete", "clear", "close"]


@pytest.mark.parametrize("level", LEVELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", METHODS)
def test_every_level_takes_the_protocols_arguments_by_keyword_only(level: type, method: str) -> None:
    want = inspect.signature(getattr(Tier, method)).parameters
    got = inspect.signature(getattr(level, method)).parameters
    for name, p in want.items():
        if name == "self":
            continue
        assert name in got and got[name].kind is p.kind is inspect.Parameter.KEYWORD_ONLY, (level, method, name)
    extra = [p for n, p in got.items() if n not in want]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty for p in extra)


@pytest.fixture
def ns() -> Iterator[str]:
    with throwaway_namespace("ct") as name:
        yield name
        assert list_segment_names(name) == []


def _levels(ns: str) -> Iterator[tuple[str, Tier, object]]:
    l2 = SharedTier(ns, "l2", 1 << 20, max_entries=64)
    yield "L2", l2, l2
    l3 = L3Tier(ns, 1 << 20, codec="zlib", max_entries=64)
    yield "L3", l3, l3.store


def test_each_shared_level_round_trips_through_the_protocol(ns: str) -> None:
    kb = key_bytes("key")
    h = key_hash(kb)
    kind, head, body = encode(b"abc" * 2000)   # raw bytes: a non-empty body (compressed in L3)
    assert body
    for name, tier, owner in _levels(ns):
        assert isinstance(tier, Tier)
        assert not tier.contains(key=kb, key_hash=h) and tier.get(key=kb, key_hash=h) is None
        assert list(tier.put(key=kb, key_hash=h, kind=kind, priority=3, head=head, body=body)) == []
        got = tier.get(key=kb, key_hash=h)
        assert got is not None, name
        gkind, gprio, ghead, gbody = got
        assert (gkind, gprio, ghead, bytes(memoryview(gbody))) == (kind, 3, head, b"".join(body)), name
        del got, gbody
        assert tier.contains(key=kb, key_hash=h)
        assert tier.delete(key=kb, key_hash=h) and not tier.delete(key=kb, key_hash=h)
        tier.put(key=kb, key_hash=h, kind=kind, priority=0, head=head, body=body)
        tier.clear()
        assert not tier.contains(key=kb, key_hash=h)
        tier.close()
        owner.destroy()  # type: ignore[attr-defined]
