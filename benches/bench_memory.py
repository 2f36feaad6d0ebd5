"""Shared-memory pools next to what a user would do instead: one segment per object, a Queue, private copies.

Run:  python benches/bench_memory.py                 (all sections, a few minutes; needs ~3 GiB of /dev/shm)
      python benches/bench_memory.py --quick         (smaller arrays, fewer repetitions: ~30 s)
      python benches/bench_memory.py --only alloc,dedup   (sections: alloc, handoff, pss, dedup, compress)
      python benches/bench_memory.py --fleet 131     (pss section: also 131 reader processes on the pool)

Sections (each prints medians and ratios measured in this run):

* ``alloc``    allocate + free of 64 B .. 1 MiB from Python, median and p99 per pair: the compiled allocator
               (``SegmentHeap.alloc/free``), the full ``MemoryPoolManager.allocate_memory/free_memory`` path
               (ids, tables, refcounts, access control), and one ``multiprocessing.shared_memory`` segment per
               object (create + close + unlink).
* ``handoff``  a 256 MiB float32 array to a child process: pool (parent ``put_array``, child attaches and sums a
               zero-copy ``get_array``) next to ``multiprocessing.Queue`` (pickle through a pipe). Wall time from
               the start of the hand-off to the child's result, and the child's private-memory growth (USS).
* ``pss``      8 processes each "load" the same 256 MiB weights: through the pool with dedup (each process makes
               its copy, ``put_array`` merges it into the one stored copy, the private copy is dropped, then it
               reads through ``get_array``) next to each keeping a private copy; total PSS of the fleet.
               ``--fleet 131`` repeats the pool path with 131 processes.
* ``dedup``    storing (``put_array``) and sealing a 512 MiB block whose content is already in the pool (candidate
               by size + head key, byte-for-byte compare, merge; XXH3-128 only when the bytes differ) next to raw
               ``xxhash.xxh3_128`` over the same bytes, and a bare ``memcmp`` of the two copies (the floor of any
               byte-for-byte check; seal minus it is the page release).
* ``compress`` lz4 / zlib / shuffle+lz4 / shuffle+zlib on float32 weights and on JSON text: ratio and GB/s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sutazai_hwopt import MemoryPoolManager
from sutazai_hwopt._native.pool_alloc import SegmentHeap, bytes_equal, format_segment
from sutazai_hwopt.memory import compression as comp
from sutazai_hwopt.testing import throwaway_namespace

MiB = 1024**2
FORK = multiprocessing.get_context("fork")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def timer_overhead_ns() -> float:
    t = time.perf_counter_ns
    xs = []
    for _ in range(20000):
        a = t()
        xs.append(t() - a)
    return statistics.median(xs)


# ---- alloc ------------------------------------------------------------------------------------------------------
def bench_alloc(quick: bool) -> None:
    sizes = [64, 256, 4096, 65536, MiB]
    n = 2000 if quick else 20000
    n_seg = 300 if quick else 2000
    over = timer_overhead_ns()
    print(f"\n== alloc: allocate + free pairs, per-pair ns (timer overhead {over:.0f} ns subtracted) ==")
    print(f"{'size':>8} | {'heap med':>9} {'p99':>8} | {'manager med':>11} {'p99':>8} | {'segment med':>11} {'p99':>9}"
          f" | {'seg/heap':>8} {'seg/mgr':>8}")
    t = time.perf_counter_ns
    with throwaway_namespace("bench") as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("bench", size=64 * MiB)
        buf = bytearray(64 * MiB)
        format_segment(buf, 0)
        heap = SegmentHeap(buf)
        keep = [heap.alloc(s) for s in (100, 5000, 70000, 300)]   # a non-empty heap
        for size in sizes:
            h = []
            for _ in range(n):
                a = t()
                heap.free(heap.alloc(size))
                h.append(t() - a - over)
            m = []
            for _ in range(n // 4):
                a = t()
                pm.free_memory("bench_agent", pm.allocate_memory("bench_agent", size, pool_id="bench"))
                m.append(t() - a - over)
            s = []
            for _ in range(n_seg):
                a = t()
                seg = shared_memory.SharedMemory(create=True, size=size)
                seg.close()
                seg.unlink()
                s.append(t() - a - over)
            hm, mm, sm = statistics.median(h), statistics.median(m), statistics.median(s)
            print(f"{size:>8} | {hm:>9.0f} {pct(h, .99):>8.0f} | {mm:>11.0f} {pct(m, .99):>8.0f} | {sm:>11.0f} "
                  f"{pct(s, .99):>9.0f} | {sm / hm:>7.0f}x {sm / mm:>7.1f}x")
        for off in keep:
            heap.free(off)
        heap.close()
        pm.destroy_pool("bench")


# ---- handoff ----------------------------------------------------------------------------------------------------
def _uss() -> int:
    import psutil

    return int(psutil.Process().memory_full_info().uss)


def _child_pool(ns: str, q_in: Any, q: Any) -> None:
    base = _uss()
    bid = q_in.get()
    with MemoryPoolManager(namespace=ns) as pm:
        arr = pm.get_array("reader", bid, np.float32)
        total = float(arr.sum(dtype=np.float64))
        grown = _uss() - base
        del arr
    q.put((time.perf_counter(), total, grown))


def _child_queue(q_in: Any, q: Any) -> None:
    base = _uss()
    arr = q_in.get()
    total = float(arr.sum(dtype=np.float64))
    grown = _uss() - base
    del arr
    q.put((time.perf_counter(), total, grown))


def bench_handoff(quick: bool) -> None:
    size = (64 if quick else 256) * MiB
    reps = 2 if quick else 3
    arr = np.linspace(0, 1, size // 4, dtype=np.float32)
    print(f"\n== handoff: a {size // MiB} MiB float32 array to a child (median of {reps}) ==")
    pool_t, pool_put, pool_g, q_t, q_g = [], [], [], [], []
    with throwaway_namespace("bench") as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("handoff", size=size + 64 * MiB)
        for _ in range(reps):
            q, q_in = FORK.Queue(), FORK.Queue()
            p = FORK.Process(target=_child_pool, args=(ns, q_in, q))
            p.start()
            time.sleep(0.2)                     # same as the Queue path: the child waits for the id
            t0 = time.perf_counter()
            bid = pm.put_array("owner", arr, pool_id="handoff", enable_dedup=False)
            pm.share_memory("owner", "reader", bid)
            t1 = time.perf_counter()
            q_in.put(bid)
            done, _total, grown = q.get()
            p.join()
            pool_put.append(t1 - t0)
            pool_t.append(done - t0)
            pool_g.append(grown)
            pm.free_memory("owner", bid)
            pm.free_memory("reader", bid)
            for qq in (q, q_in):
                qq.close()
                qq.join_thread()

            q, q_in = FORK.Queue(), FORK.Queue()
            p = FORK.Process(target=_child_queue, args=(q_in, q))
            p.start()
            time.sleep(0.2)                     # let the child start and block in get() before timing
            t0 = time.perf_counter()
            q_in.put(arr)
            done, _total, grown = q.get()
            p.join()
            q_t.append(done - t0)
            q_g.append(grown)
            for qq in (q, q_in):
                qq.close()
                qq.join_thread()
        pm.destroy_pool("handoff")
    print(f"{'path':<34} {'wall ms':>9} {'child USS +MiB':>15}")
    print(f"{'pool: put_array + child get_array':<34} {statistics.median(pool_t) * 1e3:>9.1f} "
          f"{statistics.median(pool_g) / MiB:>15.1f}   (of which put_array copy: "
          f"{statistics.median(pool_put) * 1e3:.1f} ms)")
    print(f"{'multiprocessing.Queue':<34} {statistics.median(q_t) * 1e3:>9.1f} {statistics.median(q_g) / MiB:>15.1f}")
    print(f"ratio Queue / pool wall: {statistics.median(q_t) / statistics.median(pool_t):.1f}x; "
          f"if the data is produced in the pool (no put copy): "
          f"{statistics.median(q_t) / (statistics.median(pool_t) - statistics.median(pool_put)):.1f}x")


# ---- pss --------------------------------------------------------------------------------------------------------
def _weights(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.float32) * np.float32(1e-6)).astype(np.float32)


def _loader(ns: str | None, n: int, agent: str, ready: Any, go: Any) -> None:
    if ns is None:                                  # private copy
        w = _weights(n)
        float(w.sum())
        ready.set()
        go.wait()
        return
    with MemoryPoolManager(namespace=ns) as pm:
        arr = _loader_body(pm, agent, n)
        ready.set()
        go.wait()
        del arr


def _loader_body(pm: MemoryPoolManager, agent: str, n: int) -> np.ndarray:
    w = _weights(n)
    bid = pm.put_array(agent, w, pool_id="weights")
    del w                                           # refcount frees it now (no gc.collect: it would COW-copy
                                                    # the forked interpreter's heap and bias the figure)
    arr = pm.get_array(agent, bid, np.float32)
    float(arr.sum(dtype=np.float64))
    return arr


def _fleet_pss(procs: list[Any]) -> int:
    import psutil

    return sum(int(psutil.Process(p.pid).memory_full_info().pss) for p in procs)


def bench_pss(quick: bool, fleet: int) -> None:
    import psutil

    size = (64 if quick else 256) * MiB
    n = size // 4
    k = 8
    print(f"\n== pss: {k} processes each loading the same {size // MiB} MiB weights ==")
    base = int(psutil.Process().memory_full_info().pss)
    results = {}
    with throwaway_namespace("bench") as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("weights", size=2 * size + 64 * MiB, max_blocks=4096)
        for label, use_ns in (("pool + dedup", ns), ("private copies", None)):
            go = FORK.Event()
            readies = [FORK.Event() for _ in range(k)]
            procs = []
            for i in range(k):
                p = FORK.Process(target=_loader, args=(use_ns, n, f"agent_{i:03d}", readies[i], go))
                p.start()
                readies[i].wait()                    # one at a time: the private copies never coexist in pool
                procs.append(p)
            results[label] = _fleet_pss(procs)
            go.set()
            for p in procs:
                p.join()
        s = pm.stats("weights")
        print(f"pool after the run: {s['blocks']} physical block(s), {s['ids']} ids, "
              f"dedup ratio {s['dedup_ratio']:.1f}")
        idle = _idle_pss(ns, k)
        bare = _idle_pss(ns, k, load=False)
        for label, total in results.items():
            print(f"{label:<16} total PSS {total / MiB:>8.0f} MiB  = {(total - idle) / size:.3f} x weights "
                  f"+ per-process overhead ({idle / MiB:.0f} MiB for {k} agents that loaded 1 MiB the same way; "
                  f"against {k} agents that only attached ({bare / MiB:.0f} MiB): {(total - bare) / size:.3f} x)")
        print(f"ratio private / pool: {results['private copies'] / results['pool + dedup']:.1f}x "
              f"(parent PSS at start {base / MiB:.0f} MiB, not counted)")
        if fleet > k:
            _fleet(ns, fleet, n, size, _idle_pss(ns, fleet), _idle_pss(ns, fleet, load=False))
        pm.destroy_pool("weights")


def _idle(ns: str, ready: Any, go: Any, load: bool) -> None:
    # load=True: the same imports, attach and code path as a loader (private copy, put_array with dedup of a
    # >= 1 MiB block, get_array) on 1 MiB of "weights" instead of 256 (that 1 MiB block is shared by all).
    # load=False: attach and store a 4 KB block only.
    with MemoryPoolManager(namespace=ns) as pm:
        if load:
            _loader_body(pm, f"idle_{os.getpid()}", MiB // 4)
        else:
            bid = pm.put_array(f"idle_{os.getpid()}", np.arange(1000, dtype=np.float32), pool_id="weights")
            float(pm.get_array(f"idle_{os.getpid()}", bid, np.float32).sum())
        ready.set()
        go.wait()


def _idle_pss(ns: str, k: int, load: bool = True) -> int:
    go = FORK.Event()
    readies = [FORK.Event() for _ in range(k)]
    procs = [FORK.Process(target=_idle, args=(ns, readies[i], go, load)) for i in range(k)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait()
    total = _fleet_pss(procs)
    go.set()
    for p in procs:
        p.join()
    return total


def _fleet(ns: str, fleet: int, n: int, size: int, idle: int, bare: int) -> None:
    """``fleet`` processes, started one after another (so at most one private copy exists at a time), each
    loading its own copy of the weights and storing it with dedup, then reading through the pool."""
    go = FORK.Event()
    procs = []
    t0 = time.perf_counter()
    for i in range(fleet):
        ready = FORK.Event()
        p = FORK.Process(target=_loader, args=(ns, n, f"fleet_{i:03d}", ready, go))
        p.start()
        ready.wait()
        procs.append(p)
    load = time.perf_counter() - t0
    total = _fleet_pss(procs)
    go.set()
    for p in procs:
        p.join()
    print(f"{fleet} loaders (each put_array of its own copy, merged by dedup): total PSS {total / MiB:.0f} MiB = "
          f"{(total - idle) / size:.3f} x weights + per-process overhead ({idle / MiB:.0f} MiB for {fleet} "
          f"agents that loaded 1 MiB the same way; against agents that only attached ({bare / MiB:.0f} MiB): "
          f"{(total - bare) / size:.3f} x; private copies would need {fleet * size / MiB:.0f} MiB); "
          f"{load / fleet * 1e3:.0f} ms per loader")


# ---- dedup ------------------------------------------------------------------------------------------------------
def bench_dedup(quick: bool) -> None:
    import xxhash

    size = (128 if quick else 512) * MiB
    reps = 3 if quick else 5
    data = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8)
    print(f"\n== dedup: storing or sealing a {size // MiB} MiB block already in the pool (median of {reps}) ==")
    raw, seal, put, cmp = [], [], [], []
    with throwaway_namespace("bench") as ns, MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("dedup", size=2 * size + 64 * MiB)
        first = pm.put_array("a", data, pool_id="dedup")
        stored = pm.get_array("a", first)
        for _ in range(reps):
            bid = pm.allocate_memory("b", size, pool_id="dedup")
            v = pm.view("b", bid)
            np.frombuffer(v, np.uint8)[:] = data
            t0 = time.perf_counter()
            xxhash.xxh3_128_intdigest(data)
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert bytes_equal(v, stored)
            cmp.append(time.perf_counter() - t0)
            del v
            t0 = time.perf_counter()
            pm.seal("b", bid)
            seal.append(time.perf_counter() - t0)
            assert pm.block_info("b", bid)["deduplicated"]
            pm.free_memory("b", bid)
            t0 = time.perf_counter()
            bid = pm.put_array("c", data, pool_id="dedup")
            put.append(time.perf_counter() - t0)
            assert pm.block_info("c", bid)["deduplicated"]
            pm.free_memory("c", bid)
        del stored
        pm.free_memory("a", first)
        pm.destroy_pool("dedup")
    r, s, p, c = statistics.median(raw), statistics.median(seal), statistics.median(put), statistics.median(cmp)
    print(f"raw xxh3_128 over the bytes         {r * 1e3:7.1f} ms  {size / r / 1e9:5.1f} GB/s  100%")
    print(f"put_array of a duplicate            {p * 1e3:7.1f} ms  {size / p / 1e9:5.1f} GB/s  {r / p * 100:4.0f}%"
          f"   (byte compare with the head-key candidate; equal, so no hash, no copy, no allocation)")
    print(f"seal of a filled duplicate block    {s * 1e3:7.1f} ms  {size / s / 1e9:5.1f} GB/s  {r / s * 100:4.0f}%"
          f"   (same compare, then the redundant block's pages are given back)")
    print(f"  floor: memcmp of the two copies   {c * 1e3:7.1f} ms  {size / c / 1e9:5.1f} GB/s  {r / c * 100:4.0f}%"
          f"   (bytes_equal alone; seal - this = page release {max(s - c, 0) * 1e3:.1f} ms)")


# ---- compress ---------------------------------------------------------------------------------------------------
def _json_text(nbytes: int) -> bytes:
    rng = np.random.default_rng(2)
    rows = []
    total = 0
    i = 0
    while total < nbytes:
        row = json.dumps({"agent": f"agent_{int(rng.integers(131)):03d}", "step": i, "latency_ms":
                          round(float(rng.gamma(2, 10)), 3), "status": ["ok", "retry", "error"][int(rng.integers(3))],
                          "tokens": int(rng.integers(1, 4096)), "model": "llama-7b-q4"}) + "\n"
        rows.append(row)
        total += len(row)
        i += 1
    return "".join(rows).encode()[:nbytes]


def bench_compress(quick: bool) -> None:
    size = (16 if quick else 64) * MiB
    weights = np.random.default_rng(3).standard_normal(size // 4).astype(np.float32) * np.float32(0.02)
    text = _json_text(size)
    print(f"\n== compress: {size // MiB} MiB each; ratio, compress and decompress GB/s ==")
    print(f"{'data':<16} {'codec':<14} {'ratio':>6} {'comp GB/s':>10} {'decomp GB/s':>12}")
    for label, data, itemsize in (("float32 weights", weights.view(np.uint8), 4), ("JSON text", text, 1)):
        mv = memoryview(data).cast("B")
        for codec in ("lz4", "zlib"):
            for shuffle in ((False, True) if itemsize > 1 else (False,)):
                cid = comp.CODECS[codec]
                t0 = time.perf_counter()
                src = comp.shuffle(mv, itemsize) if shuffle else mv
                payload = comp.compress(cid, src)
                tc = time.perf_counter() - t0
                out = bytearray(len(mv))
                t0 = time.perf_counter()
                comp.decode_into(cid, itemsize if shuffle else 0, memoryview(payload), len(mv), memoryview(out))
                td = time.perf_counter() - t0
                assert out == mv
                name = ("shuffle+" if shuffle else "") + codec
                print(f"{label:<16} {name:<14} {len(mv) / len(payload):>6.2f} {len(mv) / tc / 1e9:>10.2f} "
                      f"{len(mv) / td / 1e9:>12.2f}")
        t0 = time.perf_counter()
        used = comp.encode(mv, "lz4", itemsize)[0]
        print(f"{label:<16} sample check: encode(..., 'lz4') chose {comp.CODEC_NAMES[used]!r} "
              f"in {(time.perf_counter() - t0) * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="alloc,handoff,pss,dedup,compress")
    ap.add_argument("--fleet", type=int, default=8, help="also run this many reader processes in the pss section")
    args = ap.parse_args()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, numpy {np.__version__}")
    if "alloc" in sections:
        bench_alloc(args.quick)
    if "handoff" in sections:
        bench_handoff(args.quick)
    if "pss" in sections:
        bench_pss(args.quick, args.fleet)
    if "dedup" in sections:
        bench_dedup(args.quick)
    if "compress" in sections:
        bench_compress(args.quick)


if __name__ == "__main__":
    main()
