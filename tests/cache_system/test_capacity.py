"""A shared tier holds what its configuration says: the index capacity is the configured entry count."""

from __future__ import annotations

import pytest

from sutazai_hwopt.cache import IntelligentCacheSystem


@pytest.mark.parametrize("entries", [8192, 100, 48])
def test_l2_holds_the_configured_entry_count(ns: str, entries: int) -> None:
    """Asking for N L2 entries gives a tier of N entries (was 12,288 for 8,192: 3/4 of the rounded slot count);
    the (N+1)-th put evicts instead of growing past N."""
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l3_size": 0, "l2_size": 16 * 1024**2,
                                    "l2_max_entries": entries, "enable_prefetch": False})
    try:
        l2 = cache.stats()["levels"]["L2"]
        assert l2["capacity_entries"] == entries
        n = min(entries + 20, 300)
        for i in range(n):
            cache.put(f"k{i}", b"x" * 8)
        l2 = cache.stats()["levels"]["L2"]
        assert l2["entries"] == min(n, entries)
        assert l2["evictions"] == max(0, n - entries)
    finally:
        cache.destroy()


def test_default_capacity_is_one_entry_per_kib(ns: str) -> None:
    """Without l2_max_entries the capacity is l2_size / 1 KiB, exactly (no rounding up)."""
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l3_size": 0, "l2_size": 5 * 1024**2,
                                    "enable_prefetch": False})
    try:
        assert cache.stats()["levels"]["L2"]["capacity_entries"] == 5 * 1024
    finally:
        cache.destroy()
