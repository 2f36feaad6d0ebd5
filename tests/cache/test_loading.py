"""Loading: one loader call per key under 64 threads or many tasks; errors reach every waiter; @cached."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sutazai_hwopt.cache import Cache, cached
from sutazai_hwopt.errors import InvalidArgumentError, LoaderError

N_THREADS = 64


def _wait_for_waiters(cache: Cache, key: object, n: int) -> None:
    """Block until ``n`` callers have joined the in-flight load of ``key`` (a wait, not a timed check)."""
    while True:
        with cache._load_lock:
            f = cache._flights.get(key)
            if f is not None and f.waiters >= n:
                return
        time.sleep(0.001)


def _run_threads(fn: object, n: int) -> list[object]:
    results: list[object] = [None] * n

    def worker(i: int) -> None:
        try:
            results[i] = fn()  # type: ignore[operator]
        except BaseException as exc:   # collected and checked by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return [threads, results]  # type: ignore[list-item]


def test_one_loader_call_under_64_threads() -> None:
    """64 threads missing the same key at once cause exactly one loader call and all get its value."""
    c = Cache(100)
    calls = []
    release = threading.Event()

    def loader(key: str) -> str:
        calls.append(key)
        release.wait()
        return key.upper()

    threads, results = _run_threads(lambda: c.get_or_load("k", loader), N_THREADS)
    _wait_for_waiters(c, "k", N_THREADS - 1)
    release.set()
    for t in threads:
        t.join()
    assert calls == ["k"]
    assert results == ["K"] * N_THREADS
    s = c.stats()
    assert s.loads == 1 and s.load_failures == 0 and c["k"] == "K"


def test_loader_error_reaches_every_waiter_and_is_not_cached() -> None:
    """A loader exception is raised (as LoaderError with the cause) in every waiting thread; nothing cached."""
    c = Cache(100)
    release = threading.Event()
    calls = []

    def loader(key: str) -> str:
        calls.append(key)
        release.wait()
        raise ValueError("backend down")

    threads, results = _run_threads(lambda: c.get_or_load("k", loader), N_THREADS)
    _wait_for_waiters(c, "k", N_THREADS - 1)
    release.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(isinstance(r, LoaderError) and isinstance(r.__cause__, ValueError) for r in results)
    assert "k" not in c and c.stats().load_failures == 1
    assert c.get_or_load("k", lambda k: 5) == 5     # the failure was not cached


def test_many_keys_many_threads_each_loaded_once() -> None:
    """Under 8 threads hammering 50 keys, each key is loaded exactly once and the structure stays sound."""
    c = Cache(1000)
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def loader(key: int) -> int:
        with lock:
            counts[key] = counts.get(key, 0) + 1
        return key * 2

    def work() -> None:
        for i in range(2000):
            assert c.get_or_load(i % 50, loader) == (i % 50) * 2

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == {k: 1 for k in range(50)}
    assert c.check()


def test_threads_mixed_operations_keep_structure_coherent() -> None:
    """Concurrent get/put/del/pop from 8 threads on a small cache leave every invariant intact."""
    c = Cache(64, "adaptive", max_bytes=500, weigher=lambda k, v: v % 17)

    def work(seed: int) -> None:
        for i in range(4000):
            k = (i * 7 + seed) % 200
            op = (i + seed) % 5
            if op == 0:
                c.pop(k, None)
            elif op == 1:
                c.put(k, i, priority=k % 3)
            else:
                c.get(k)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.check() and len(c) <= 64 and c.current_weight <= 500


def test_async_one_loader_call_per_key() -> None:
    """100 tasks awaiting the same missing key run the coroutine loader once."""
    c = Cache(100)
    calls = []

    async def loader(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return key * 2

    async def main() -> list[str]:
        return await asyncio.gather(*(c.aget_or_load("ab", loader) for _ in range(100)))

    assert asyncio.run(main()) == ["abab"] * 100
    assert calls == ["ab"] and c["ab"] == "abab"


def test_async_error_reaches_all_tasks() -> None:
    """An exception in an async loader reaches every waiting task and is not cached."""
    c = Cache(100)
    calls = []

    async def loader(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0)
        raise KeyError("gone")

    async def main() -> list[object]:
        return await asyncio.gather(*(c.aget_or_load("x", loader) for _ in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    assert len(calls) == 1
    assert all(isinstance(r, LoaderError) for r in results)
    assert "x" not in c


def test_cached_function_method_and_coroutine() -> None:
    """@cached memoizes functions, methods (per instance) and coroutine functions; errors pass unchanged."""
    cache = Cache(100)
    calls: list[object] = []

    @cached(cache)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert square(3) == 9 and square(3) == 9 and square(x=3) == 9
    assert calls == [3, 3]   # positional and keyword calls are distinct keys

    class Model:
        def __init__(self, bias: int) -> None:
            self.bias = bias

        @cached(cache)
        def predict(self, x: int) -> int:
            calls.append(("p", self.bias, x))
            return x + self.bias

    a, b = Model(1), Model(2)
    assert a.predict(1) == 2 and a.predict(1) == 2 and b.predict(1) == 3
    assert calls.count(("p", 1, 1)) == 1

    @cached(key=lambda x: x)
    async def fetch(x: int) -> int:
        calls.append(("f", x))
        await asyncio.sleep(0)
        return -x

    async def main() -> list[int]:
        return await asyncio.gather(*(fetch(4) for _ in range(20)))

    assert asyncio.run(main()) == [-4] * 20
    assert calls.count(("f", 4)) == 1
    assert fetch.cache[4] == -4  # type: ignore[attr-defined]

    @cached(cache)
    def fails(x: int) -> int:
        raise ZeroDivisionError(x)

    with pytest.raises(ZeroDivisionError):
        fails(1)
    with pytest.raises(InvalidArgumentError):
        cached(cache={})  # type: ignore[arg-type]


def test_cached_under_64_threads_calls_once() -> None:
    """A @cached function called by 64 threads at once runs once."""
    release = threading.Event()
    calls = []
    cache = Cache(10)

    @cached(cache, key=lambda x: x)
    def slow(x: int) -> int:
        calls.append(x)
        release.wait()
        return x + 1

    threads, results = _run_threads(lambda: slow(7), N_THREADS)
    _wait_for_waiters(cache, 7, N_THREADS - 1)
    release.set()
    for t in threads:
        t.join()
    assert calls == [7] and results == [8] * N_THREADS
