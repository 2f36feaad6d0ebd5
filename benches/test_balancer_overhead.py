"""Per-call overhead of the balancer and the circuit breaker, next to pybreaker, in one run.

    python -m pytest benches/test_balancer_overhead.py --benchmark-only --benchmark-group-by=group

* ``balancer: breaker overhead``  ``CircuitBreaker.call`` and ``pybreaker.CircuitBreaker.call`` around a no-op,
  next to the bare no-op call (the anchors: bare, and pybreaker).
* ``balancer: select+record n=<backends>``  ``select_backend_sync()`` + ``record_result()`` per call for each
  algorithm, the asyncio path, and the pure-Python reference path, next to the anchor pybreaker call (the
  per-call cost a user already accepts around a remote call).
* ``balancer: latency sketch add``  the compiled sketch, its pure-Python reference and ``ddsketch`` (if installed).
* ``balancer: lock test``  8 threads x 100 calls of a 2 ms function through each breaker, next to bare calls: the
  breaker must not serialise the calls it wraps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from sutazai_hwopt.balancer import BackendService, CircuitBreaker, DynamicLoadBalancer, LatencySketch
from sutazai_hwopt.balancer.sketch import ReferenceLatencySketch


def _noop() -> None:
    return None


def _bare(f: Any) -> Any:
    return f()


def _calls(call: Any, loops: int) -> Any:
    def run() -> None:
        for _ in range(loops):
            call(_noop)

    return run


def _loops(smoke: bool) -> int:
    return 20 if smoke else 2000


def _pybreaker() -> Any:
    pybreaker = pytest.importorskip("pybreaker")
    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)


@pytest.mark.benchmark(group="balancer: breaker overhead")
@pytest.mark.parametrize("contender", ["bare call", "pybreaker.call", "CircuitBreaker.call"])
def test_breaker_overhead(benchmark: Any, run_rounds: Any, contender: str, smoke: bool) -> None:
    loops = _loops(smoke)
    if contender == "bare call":
        call: Any = _bare
    else:
        call = _pybreaker().call if contender == "pybreaker.call" else CircuitBreaker().call
    benchmark.extra_info.update(role="ours" if contender == "CircuitBreaker.call" else "anchor",
                                unit="one call around a no-op")
    run_rounds(_calls(call, loops), loops=loops, rounds=15)


def make_lb(n: int, algorithm: str = "adaptive", reference: bool = False) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(algorithm=algorithm, seed=1, reference=reference)
    for i in range(n):
        lb.register_service(BackendService(service_id=f"b{i}", port=1 + i % 65000, weight=1.0 + i % 3))
    return lb


CONTENDERS = ["adaptive sync", "p2c sync", "round_robin sync", "adaptive asyncio", "adaptive sync, pure Python",
              "pybreaker.call"]


@pytest.mark.parametrize("n", [16, 128, 1024])
@pytest.mark.parametrize("contender", CONTENDERS)
def test_select_record(benchmark: Any, run_rounds: Any, n: int, contender: str, smoke: bool) -> None:
    loops = _loops(smoke)
    benchmark.group = f"balancer: select+record n={n}"
    benchmark.extra_info.update(role="anchor" if contender == "pybreaker.call" else "ours",
                                unit="one select + record_result", backends=n)
    if contender == "pybreaker.call":
        run_rounds(_calls(_pybreaker().call, loops), loops=loops, rounds=15)
        return
    algorithm = contender.split()[0]
    lb = make_lb(n, algorithm, reference=contender.endswith("pure Python"))
    rec = lb.record_result
    if "asyncio" in contender:
        loop = asyncio.new_event_loop()

        async def body() -> None:
            sel = lb.select_backend
            for _ in range(loops):
                s = await sel()
                rec(s.service_id, 0.001, True)

        try:
            run_rounds(lambda: loop.run_until_complete(body()), loops=loops, rounds=15)
        finally:
            loop.close()
        return
    sel = lb.select_backend_sync

    def run() -> None:
        for _ in range(loops):
            s = sel()
            rec(s.service_id, 0.001, True)

    run_rounds(run, loops=loops, rounds=15)


@pytest.mark.benchmark(group="balancer: latency sketch add")
@pytest.mark.parametrize("contender", ["LatencySketch (compiled)", "ReferenceLatencySketch", "ddsketch.DDSketch"])
def test_sketch_add(benchmark: Any, run_rounds: Any, contender: str, smoke: bool) -> None:
    loops = _loops(smoke)
    if contender == "ddsketch.DDSketch":
        sk: Any = pytest.importorskip("ddsketch").DDSketch(0.02)
    else:
        sk = LatencySketch() if contender.startswith("LatencySketch") else ReferenceLatencySketch()
    add = sk.add
    values = [0.001 * (i % 97 + 1) for i in range(loops)]
    benchmark.extra_info.update(role="anchor" if contender == "ddsketch.DDSketch" else "ours", unit="one add")

    def run() -> None:
        for v in values:
            add(v)

    run_rounds(run, loops=loops, rounds=15)


@pytest.mark.benchmark(group="balancer: lock test")
@pytest.mark.parametrize("contender", ["bare calls", "CircuitBreaker.call", "pybreaker.call"])
def test_lock(benchmark: Any, run_rounds: Any, contender: str, smoke: bool) -> None:
    threads, calls = (2, 3) if smoke else (8, 100)
    call: Any = None
    if contender == "CircuitBreaker.call":
        call = CircuitBreaker().call
    elif contender == "pybreaker.call":
        call = _pybreaker().call
    benchmark.extra_info.update(role="ours" if contender == "CircuitBreaker.call" else "anchor",
                                unit=f"{threads} threads x {calls} calls of a 2 ms function")

    def work() -> None:
        time.sleep(0.002)

    def worker() -> None:
        for _ in range(calls):
            if call is None:
                work()
            else:
                call(work)

    def run() -> None:
        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    run_rounds(run, rounds=3)
