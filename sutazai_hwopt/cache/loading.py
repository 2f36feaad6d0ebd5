"""The :func:`cached` decorator: a single-flight memoizing wrapper for functions, methods and coroutines.

The single-flight machinery itself (``get_or_load`` / ``aget_or_load``) is :class:`~.flights.LoadingMixin`,
which :class:`~sutazai_hwopt.cache.Cache` mixes in; this module builds on both and is imported by neither.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar, cast

from ..errors import InvalidArgumentError
from .engine import Cache
from .flights import MISS as _MISS
from .flights import LoadingMixin

__all__ = ["CacheInfo", "LoadingMixin", "cached"]

F = TypeVar("F", bound=Callable[..., Any])


class CacheInfo(NamedTuple):
    """``cache_info()`` of a decorated function, shaped like :func:`functools.lru_cache`'s."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


def _make_key(fid: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    if kwargs:
        return (fid, args, tuple(sorted(kwargs.items())))
    return (fid, args)


def cached(cache: Cache | None = None, *, key: Callable[..., Hashable] | None = None, lock: Any = None,
           condition: Any = None, info: bool = False, maxsize: int = 1024, policy: str = "adaptive",
           **put_kwargs: Any) -> Callable[[F], F]:
    """Decorate a function, method or coroutine function so its results are kept in ``cache``.

    The cache key is ``key(*args, **kwargs)`` if given, else the function's identity with the arguments
    (for methods this includes ``self``). Concurrent calls with the same key run the function once; an
    exception it raises reaches every waiting caller unchanged and is not cached.

    cachetools' keywords are accepted so decorated code migrates unchanged: ``lock`` and ``condition`` are
    kept as ``wrapper.cache_lock``/``cache_condition`` but not needed (every cache operation is atomic and
    concurrent misses of a key already share one call); ``info`` is accepted for the same reason:
    ``wrapper.cache_info()`` (hits, misses, maxsize, currsize) and ``cache_clear()`` always exist.

    Args:
        cache: the :class:`~sutazai_hwopt.cache.Cache` to use; ``None`` makes a private one of ``maxsize``
            entries with ``policy``.
        key: builds the cache key from the call's arguments (must return a hashable value);
            ``cachetools.keys.hashkey`` and ``methodkey`` work.
        lock, condition, info: cachetools' keywords, accepted (see above).
        maxsize: size of the private cache when ``cache`` is None.
        policy: policy of the private cache when ``cache`` is None.
        **put_kwargs: ``ttl``/``weight``/``priority`` for the stored results.

    Example:
        >>> from sutazai_hwopt.cache import Cache, cached
        >>> @cached(Cache(100))
        ... def square(x):
        ...     return x * x
        >>> square(4), square(4), square.cache.stats().hits
        (16, 16, 1)
    """
    if cache is None:
        cache = Cache(maxsize, policy)
    elif not isinstance(cache, Cache):
        raise InvalidArgumentError(f"cache must be a sutazai_hwopt.cache.Cache or None, got {cache!r}")
    if key is not None and not callable(key):
        raise InvalidArgumentError(f"key must be callable or None, got {key!r}")
    the_cache: Cache = cache

    def cache_info() -> CacheInfo:
        st = the_cache.stats()
        return CacheInfo(st.hits, st.misses, the_cache.maxsize, the_cache.currsize)

    def annotate(wrapper: Any, make_key: Callable[..., Hashable]) -> None:
        wrapper.cache = the_cache
        wrapper.cache_key = make_key
        wrapper.cache_lock = lock
        wrapper.cache_condition = condition
        wrapper.cache_info = cache_info
        wrapper.cache_clear = the_cache.clear

    def decorate(fn: F) -> F:
        fid = id(fn)

        def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
            return key(*args, **kwargs) if key is not None else _make_key(fid, args, kwargs)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                k = make_key(args, kwargs)
                value = the_cache.get(k, _MISS)
                if value is not _MISS:
                    return value
                return await the_cache._load_async(k, lambda: fn(*args, **kwargs), False, put_kwargs)

            annotate(awrapper, lambda *a, **kw: make_key(a, kw))
            return cast(F, awrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = make_key(args, kwargs)
            value = the_cache.get(k, _MISS)
            if value is not _MISS:
                return value
            return the_cache._load_sync(k, lambda: fn(*args, **kwargs), False, put_kwargs)

        annotate(wrapper, lambda *a, **kw: make_key(a, kw))
        return cast(F, wrapper)

    return decorate
