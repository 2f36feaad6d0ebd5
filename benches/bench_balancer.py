"""Per-call overhead of the balancer and the circuit breaker, next to pybreaker, in one run.

Run:  python benches/bench_balancer.py           (about 1 minute)
      python benches/bench_balancer.py --quick   (fewer repeats)

Prints medians over repeats of (select + record_result) per call for 16 / 128 / 1024 backends on the sync
and asyncio paths, per-call overhead of CircuitBreaker and pybreaker around a no-op, the ratio to pybreaker,
the pure-Python path for reference, the sketch ``add`` against ``ddsketch`` (if installed), and the lock test:
8 threads x 100 calls of a 2 ms function through each breaker against bare calls (target: within 1.1x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable

from sutazai_hwopt.balancer import BackendService, CircuitBreaker, DynamicLoadBalancer, LatencySketch
from sutazai_hwopt.balancer.sketch import ReferenceLatencySketch

LOOPS = 2000


def per_call(fn: Callable[[int], None], loops: int, repeats: int) -> float:
    """Median seconds per call of ``fn(loops)`` (which runs ``loops`` calls) over ``repeats``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(loops)
        times.append((time.perf_counter() - t0) / loops)
    return statistics.median(times)


def make_lb(n: int, algorithm: str = "adaptive", reference: bool = False) -> DynamicLoadBalancer:
    lb = DynamicLoadBalancer(algorithm=algorithm, seed=1, reference=reference)
    for i in range(n):
        lb.register_service(BackendService(service_id=f"b{i}", port=1 + i % 65000, weight=1.0 + i % 3))
    return lb


def bench_sync(lb: DynamicLoadBalancer) -> Callable[[int], None]:
    sel = lb.select_backend_sync
    rec = lb.record_result

    def run(loops: int) -> None:
        for _ in range(loops):
            s = sel()
            rec(s.service_id, 0.001, True)
    return run


def bench_async(lb: DynamicLoadBalancer) -> Callable[[int], None]:
    rec = lb.record_result
    loop = asyncio.new_event_loop()

    async def body(loops: int) -> None:
        sel = lb.select_backend
        for _ in range(loops):
            s = await sel()
            rec(s.service_id, 0.001, True)

    def run(loops: int) -> None:
        loop.run_until_complete(body(loops))
    run.loop = loop  # type: ignore[attr-defined]
    return run


def bench_breaker_call(call: Callable[[Callable[[], None]], object]) -> Callable[[int], None]:
    def noop() -> None:
        return None

    def run(loops: int) -> None:
        for _ in range(loops):
            call(noop)
    return run


def bare(loops: int) -> None:
    def noop() -> None:
        return None
    for _ in range(loops):
        noop()


def lock_test(call: Callable[[Callable[[], None]], object] | None, threads: int = 8, calls: int = 100) -> float:
    def work() -> None:
        time.sleep(0.002)

    def worker() -> None:
        for _ in range(calls):
            if call is None:
                work()
            else:
                call(work)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    repeats = 5 if a.quick else 15
    import pybreaker

    print("# per-call overhead, median of", repeats, "repeats x", LOOPS, "calls (ns); ratios are what count")
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    cb = CircuitBreaker()
    # Interleaved: each repeat times bare, pybreaker and ours back to back, so machine noise hits all three.
    fns = {"bare": bare, "pb": bench_breaker_call(pb.call), "cb": bench_breaker_call(cb.call)}
    pb_over, cb_over = [], []
    for _ in range(repeats):
        t = {k: per_call(f, LOOPS, 1) for k, f in fns.items()}
        pb_over.append(t["pb"] - t["bare"])
        cb_over.append(t["cb"] - t["bare"])
    t_pb = statistics.median(pb_over)
    t_cb = statistics.median(cb_over)
    print(f"{'pybreaker.call (overhead)':46} {t_pb * 1e9:8.0f}  1.00x")
    print(f"{'CircuitBreaker.call (overhead)':46} {t_cb * 1e9:8.0f}  {t_cb / t_pb:.2f}x pybreaker")
    for algo in ("adaptive", "p2c", "round_robin"):
        for n in (16, 128, 1024):
            lb = make_lb(n, algo)
            ts = per_call(bench_sync(lb), LOOPS, repeats)
            ra = bench_async(lb)
            ta = per_call(ra, LOOPS, repeats)
            ra.loop.close()  # type: ignore[attr-defined]
            print(f"{'balancer ' + algo + f' n={n} sync select+record':46} {ts * 1e9:8.0f}  "
                  f"{ts / t_pb:.2f}x pybreaker   target <= 1000 ns: {'MET' if ts <= 1e-6 else 'NOT MET'}")
            print(f"{'balancer ' + algo + f' n={n} asyncio select+record':46} {ta * 1e9:8.0f}  "
                  f"{ta / t_pb:.2f}x pybreaker   target <= 3000 ns: {'MET' if ta <= 3e-6 else 'NOT MET'}")

    for n in (16, 1024):
        ts = per_call(bench_sync(make_lb(n, "adaptive", reference=True)), LOOPS, repeats)
        print(f"{f'balancer adaptive n={n} sync, pure-Python path':46} {ts * 1e9:8.0f}  {ts / t_pb:.2f}x pybreaker"
              "   (the reference the compiled path is tested against)")

    sk = LatencySketch()
    t_sk = per_call(lambda n: [sk.add(0.001 * (i % 97 + 1)) for i in range(n)] and None, LOOPS, repeats)
    line = f"{'LatencySketch.add (compiled)':46} {t_sk * 1e9:8.0f}"
    psk = ReferenceLatencySketch()
    t_psk = per_call(lambda n: [psk.add(0.001 * (i % 97 + 1)) for i in range(n)] and None, LOOPS, repeats)
    line += f"   ReferenceLatencySketch.add {t_psk * 1e9:.0f} ns"
    try:
        from ddsketch import DDSketch

        dd = DDSketch(0.02)
        t_dd = per_call(lambda n: [dd.add(0.001 * (i % 97 + 1)) for i in range(n)] and None, LOOPS, repeats)
        line += f"   ddsketch.DDSketch.add {t_dd * 1e9:.0f} ns ({t_dd / t_sk:.1f}x)"
    except ImportError:
        line += "   (ddsketch not installed: pip install ddsketch to compare)"
    print(line)

    print("\n# lock test: 8 threads x 100 calls of a 2 ms function (seconds, median of 3)")
    bare_t = statistics.median(lock_test(None) for _ in range(3))
    ours = statistics.median(lock_test(cb.call) for _ in range(3))
    theirs = statistics.median(lock_test(pb.call) for _ in range(3))
    print(f"bare            {bare_t:.3f} s  1.00x")
    print(f"CircuitBreaker  {ours:.3f} s  {ours / bare_t:.2f}x   target <= 1.1x: "
          f"{'MET' if ours <= 1.1 * bare_t else 'NOT MET'}")
    print(f"pybreaker       {theirs:.3f} s  {theirs / bare_t:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
