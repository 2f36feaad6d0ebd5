"""The cache engine: :class:`Cache` (a bounded, thread-safe mapping with a compiled eviction core) and
:func:`cached` (a single-flight memoizing decorator for functions, methods and coroutines).

See ``docs/cache.md`` for the policies, the semantics of weights, TTLs and priorities, and the benchmarks.
"""

from __future__ import annotations

from .engine import Cache, CacheStats
from .loading import cached
from .policies import DEFAULT_POLICY, POLICIES, describe

__all__ = ["DEFAULT_POLICY", "POLICIES", "Cache", "CacheStats", "cached", "describe"]


def __getattr__(name: str) -> object:  # the multi-level IntelligentCacheSystem, loaded on first use
    if name == "IntelligentCacheSystem":
        from .system import IntelligentCacheSystem

        return IntelligentCacheSystem
    raise AttributeError(f"module 'sutazai_hwopt.cache' has no attribute {name!r}")
