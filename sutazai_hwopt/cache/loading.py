"""The :func:`cached` decorator: a single-flight memoizing wrapper for functions, methods and coroutines.

The single-flight machinery itself (``get_or_load`` / ``aget_or_load``) is :class:`~.flights.LoadingMixin`,
which :class:`~sutazai_hwopt.cache.Cache` mixes in; this module builds on both and is imported by neither.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from ..errors import InvalidArgumentError
from .engine import Cache
from .flights import MISS as _MISS
from .flights import LoadingMixin

__all__ = ["LoadingMixin", "cached"]

F = TypeVar("F", bound=Callable[..., Any])


def _make_key(fid: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    if kwargs:
        return (fid, args, tuple(sorted(kwargs.items())))
    return (fid, args)


def cached(cache: Cache | None = None, *, key: Callable[..., Hashable] | None = None,
           maxsize: int = 1024, policy: str = "adaptive", **put_kwargs: Any) -> Callable[[F], F]:
    """Decorate a function, method or coroutine function so its results are kept in ``cache``.

    The cache key is ``key(*args, **kwargs)`` if given, else the function's identity with the arguments
    (for methods this includes ``self``). Concurrent calls with the same key run the function once; an
    exception it raises reaches every waiting caller unchanged and is not cached.

    Args:
        cache: the :class:`~sutazai_hwopt.cache.Cache` to use; ``None`` makes a private one of ``maxsize``
            entries with ``policy``.
        key: builds the cache key from the call's arguments (must return a hashable value).
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

            awrapper.cache = the_cache  # type: ignore[attr-defined]
            return cast(F, awrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = make_key(args, kwargs)
            value = the_cache.get(k, _MISS)
            if value is not _MISS:
                return value
            return the_cache._load_sync(k, lambda: fn(*args, **kwargs), False, put_kwargs)

        wrapper.cache = the_cache  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate
