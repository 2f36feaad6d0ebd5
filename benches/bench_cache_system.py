"""Cross-process get latency of the shared L2 tier next to Redis, Manager().dict() and LMDB; 8-process throughput.

Run:  python benches/bench_cache_system.py            (about a minute)
      python benches/bench_cache_system.py --quick    (fewer repetitions)

A writer *process* stores 100 B, 64 KiB and 1 MiB values; this process reads them back. Every store is measured in
the same run; each figure is the median over batches of the per-get time (time of a batch / its size), and the
table prints ratios to the L2 tier. Rows:

* ``L2 tier get (zero-copy)``: ``SharedTier.get`` — lookup under the robust lock, pin, a read-only view;
* ``IntelligentCacheSystem.get (L2)``: the public call with L1 disabled (key check, XXH3, stats, decode);
  ``same, prefetching on``: the same with the prefetch model fed (one enqueue per get; a worker thread learns);
* ``Redis GET (redis-py)``: a redis-server on 127.0.0.1 started here;
* ``Manager().dict()[k]``: the standard library's proxy (a server process, pickled over a socket);
* ``LMDB get (copy)`` / ``LMDB get (zero-copy)``: py-lmdb in a tmpfs directory, ``buffers=True`` for the second.

Throughput: 1, 2 and 8 reader processes doing random L2 gets of 100 B and 64 KiB values; aggregate gets/s.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sutazai_hwopt.cache.codec import key_bytes, key_hash
from sutazai_hwopt.cache.shared_index import SharedTier
from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.testing import throwaway_namespace

SIZES = {"100 B": 100, "64 KiB": 65536, "1 MiB": 1 << 20}
CTX = mp.get_context("fork")


def per_op(fn: Callable[[], Any], n: int, reps: int) -> float:
    """Median over ``reps`` batches of the seconds per call of ``fn`` (``n`` calls per batch)."""
    out = []
    for _ in range(reps):
        gc.disable()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        gc.enable()
        out.append(t / n)
    return statistics.median(out)


def _writer(ns: str, done: Any) -> None:
    cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 64 << 20, "l3_size": 0,
                                    "enable_prefetch": False})
    for name, size in SIZES.items():
        cache.put(name, os.urandom(size), "writer", priority=9)
    for i in range(1000):
        cache.put(f"s{i}", os.urandom(100), "writer", priority=5)
        cache.put(f"m{i}", os.urandom(65536 if i < 200 else 100), "writer", priority=5)
    cache.close()
    done.set()


def _reader(ns: str, kind: str, n: int, start: Any, out: Any) -> None:
    import random

    tier = SharedTier(ns, "l2", 64 << 20)
    rng = random.Random(os.getpid())
    keys = [key_bytes(f"{kind}{i}") for i in range(200)]
    hashes = [key_hash(k) for k in keys]
    idx = [rng.randrange(200) for _ in range(n)]
    start.wait()
    t0 = time.perf_counter()
    for i in idx:
        r = tier.get(key=keys[i], key_hash=hashes[i])
        assert r is not None
        del r
    out.put((n, time.perf_counter() - t0))
    tier.close()


def throughput(ns: str, kind: str, procs: int, n: int) -> float:
    start = CTX.Event()
    out: Any = CTX.Queue()
    ps = [CTX.Process(target=_reader, args=(ns, kind, n, start, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    start.set()
    res = [out.get(timeout=300) for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    return sum(r[0] for r in res) / wall


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    reps = 5 if args.quick else 11
    import lmdb
    import redis

    rows: dict[str, dict[str, float]] = {}
    with throwaway_namespace("bench") as ns:
        done = CTX.Event()
        w = CTX.Process(target=_writer, args=(ns, done))
        w.start()
        done.wait(120)
        w.join()
        tier = SharedTier(ns, "l2", 64 << 20)
        cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 64 << 20, "l3_size": 0,
                                        "enable_prefetch": False})
        cache_pf = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": 64 << 20, "l3_size": 0,
                                           "enable_prefetch": True}, loader=lambda k: b"")
        port = _free_port()
        tmp = tempfile.mkdtemp(prefix="bench-cs-")
        rs = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        r = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        mgr = CTX.Manager()
        md = mgr.dict()
        env = lmdb.open(tempfile.mkdtemp(prefix="bench-cs-lmdb-", dir="/dev/shm"), map_size=1 << 30)
        try:
            for name, size in SIZES.items():
                payload = os.urandom(size)
                r.set(name, payload)
                md[name] = payload
                with env.begin(write=True) as txn:
                    txn.put(name.encode(), payload)
                kb = key_bytes(name)
                h = key_hash(kb)
                assert tier.get(key=kb, key_hash=h) is not None
                n = 20000 if size <= 65536 else 5000
                nslow = 300 if size <= 65536 else 100
                row = rows.setdefault(name, {})
                row["L2 tier get (zero-copy)"] = per_op(lambda kb=kb, h=h: tier.get(key=kb, key_hash=h), n, reps)
                row["IntelligentCacheSystem.get (L2)"] = per_op(lambda name=name: cache.get(name, "a"), n, reps)
                row["  same, prefetching on"] = per_op(lambda name=name: cache_pf.get(name, "a"), n, reps)
                row["Redis GET (redis-py)"] = per_op(lambda name=name: r.get(name), nslow, reps)
                row["Manager().dict()[k]"] = per_op(lambda name=name: md[name], nslow, reps)
                with env.begin() as txn:
                    row["LMDB get (copy)"] = per_op(lambda name=name, txn=txn: txn.get(name.encode()), n, reps)
                with env.begin(buffers=True) as txn:
                    row["LMDB get (zero-copy)"] = per_op(lambda name=name, txn=txn: txn.get(name.encode()), n,
                                                         reps)
        finally:
            r.close()
            rs.terminate()
            rs.wait()
            shutil.rmtree(tmp, ignore_errors=True)
            mgr.shutdown()
            path = env.path()
            env.close()
            shutil.rmtree(path, ignore_errors=True)

        names = list(next(iter(rows.values())))
        print("\nCross-process get latency, median per get (x = time / L2 tier get; >1 means slower than L2)")
        print(f"{'store':34s}" + "".join(f"{s:>22s}" for s in SIZES))
        for nm in names:
            cells = ""
            for s in SIZES:
                t = rows[s][nm]
                base = rows[s]["L2 tier get (zero-copy)"]
                cells += f"{t * 1e6:11.2f} µs {t / base:7.1f}x"
            print(f"{nm:34s}{cells}")
        one_mib = rows["1 MiB"]
        print(f"\n1 MiB L2 hit: tier {one_mib['L2 tier get (zero-copy)'] * 1e6:.2f} µs, public get "
              f"{one_mib['IntelligentCacheSystem.get (L2)'] * 1e6:.2f} µs (target < 5 µs); Redis / public get = "
              f"{one_mib['Redis GET (redis-py)'] / one_mib['IntelligentCacheSystem.get (L2)']:.0f}x (target >= 10x)")

        print("\nAggregate L2 throughput (random gets over 200 keys), gets/s")
        n = 20000 if args.quick else 50000
        for kind, label in (("s", "100 B"), ("m", "64 KiB")):
            one = throughput(ns, kind, 1, n)
            two = throughput(ns, kind, 2, n)
            eight = throughput(ns, kind, 8, n // 2)
            print(f"  {label:7s} 1 process {one:12,.0f}   2 processes {two:12,.0f} ({two / one:4.2f}x)   "
                  f"8 processes {eight:12,.0f} ({eight / one:4.2f}x)   host has {os.cpu_count()} cores")
        cache_pf.close()
        cache.destroy()
        tier.close()


if __name__ == "__main__":
    main()
