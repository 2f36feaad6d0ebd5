"""The eviction policies the compiled core implements, with their sources and one-line character.

Policies are compiled into :mod:`sutazai_hwopt._native.cache_core` (a policy written in Python would cost
more per access than the whole compiled hit path), so a policy is chosen by name rather than plugged in as
an object. :data:`POLICIES` lists the names; :func:`describe` returns what each does and where it comes from.
"""

from __future__ import annotations

from typing import Final

from .._native import cache_core

__all__ = ["DEFAULT_POLICY", "POLICIES", "SELECTABLE", "describe"]

#: Policy names accepted by ``Cache(policy=...)``: the compiled core's list (its one definition), not a copy.
POLICIES: Final[tuple[str, ...]] = cache_core.POLICIES

#: The policies the ``"adaptive"`` policy chooses among, in the order of its shadow caches.
SELECTABLE: Final[tuple[str, ...]] = cache_core.SELECTABLE

DEFAULT_POLICY: Final[str] = "adaptive"

# One line per name of POLICIES (tests/cache/test_parity.py fails when the two disagree).
_DESCRIPTIONS: Final[dict[str, str]] = {
    "lru": "least recently used",
    "lfu": "least frequently used; O(1) frequency buckets (Shah, Mitra, Matani 2010), ties evict the oldest",
    "arc": "Adaptive Replacement Cache (Megiddo & Modha, FAST 2003): ghost lists B1/B2, adaptive target p",
    "s3fifo": "S3-FIFO (Yang et al., SOSP 2023): 10% small FIFO, main FIFO with reinsertion, ghost FIFO",
    "sieve": "SIEVE (Zhang et al., NSDI 2024): FIFO with a visited bit and a moving hand",
    "wtinylfu": "W-TinyLFU (Einziger, Friedman, Manes 2017): 1% LRU window, TinyLFU admission, SLRU main",
    "lirs": "LIRS (Jiang & Zhang, SIGMETRICS 2002): inter-reference recency, 1% resident HIR, 2x ghosts",
    "adaptive": "runs whichever of LRU, W-TinyLFU, LIRS and S3-FIFO scores best in spatially sampled "
                "shadow caches (miniature simulations, Waldspurger et al. ATC 2017; set dueling, Qureshi "
                "et al. ISCA 2007), migrating the entries when it switches",
}


def describe(policy: str) -> str:
    """Return the one-line description (algorithm and source) of ``policy``.

    Raises:
        InvalidArgumentError: ``policy`` is not one of :data:`POLICIES`.
    """
    try:
        return _DESCRIPTIONS[policy]
    except (KeyError, TypeError):
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}") from None
