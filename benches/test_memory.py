"""Shared-memory pools next to what a user would do instead: one segment per object, a Queue, raw hashing.

    python -m pytest benches/test_memory.py --benchmark-only --benchmark-group-by=group

Groups (ratios to the anchors in each are what ``docs/benchmarks.md`` quotes):

* ``memory: alloc+free <size>``  allocate + free pairs from Python: the compiled allocator (``SegmentHeap``), the
  full ``MemoryPoolManager`` path (ids, tables, refcounts, access checks) and the anchor, one
  ``multiprocessing.shared_memory`` segment per object (create + close + unlink).
* ``memory: handoff``  a 256 MiB float32 array to a running child: ``put_array`` + child ``get_array``, the block
  filled in place by the producer (``allocate_memory`` + ``view``, then ``seal``), and the anchor
  ``multiprocessing.Queue`` (pickle through a pipe). Timed from the hand-off to the child's result.
* ``memory: dedup``  storing (``put_array``) or sealing a 512 MiB block already in the pool, next to the anchor
  ``xxhash.xxh3_128`` over the same bytes and the floor ``bytes_equal`` of the two copies.
* ``memory: compress <data>``  the pool's codecs on float32 weights and on JSON lines; the anchor is plain lz4;
  ``extra_info`` holds the compression ratio.

The PSS figures (many processes loading the same weights) are not timings: ``python benches/bench_memory.py
--only pss --fleet 131`` prints them.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import pytest

from sutazai_hwopt import MemoryPoolManager
from sutazai_hwopt._native.pool_alloc import SegmentHeap, bytes_equal, format_segment
from sutazai_hwopt.memory import compression as comp

MiB = 1024**2
FORK = multiprocessing.get_context("fork")
SIZES = {"64 B": 64, "256 B": 256, "4 KiB": 4096, "64 KiB": 65536, "1 MiB": MiB}


# ---- allocate + free ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", list(SIZES))
@pytest.mark.parametrize("path", ["SegmentHeap", "MemoryPoolManager", "segment per object"])
def test_alloc_free(benchmark: Any, run_rounds: Any, namespace: str, label: str, path: str, smoke: bool) -> None:
    size = SIZES[label]
    benchmark.group = f"memory: alloc+free {label}"
    benchmark.extra_info.update(role="anchor" if path == "segment per object" else "ours",
                                unit="one allocate + free pair")
    if path == "SegmentHeap":
        buf = bytearray(64 * MiB)
        format_segment(buf, 0)
        heap = SegmentHeap(buf)
        keep = [heap.alloc(s) for s in (100, 5000, 70000, 300)]  # a non-empty heap
        alloc, free = heap.alloc, heap.free
        loops = 20 if smoke else 2000

        def body() -> None:
            for _ in range(loops):
                free(alloc(size))

        run_rounds(body, loops=loops)
        for off in keep:
            heap.free(off)
        heap.close()
    elif path == "MemoryPoolManager":
        with MemoryPoolManager(namespace=namespace) as pm:
            pm.create_pool("bench", size=64 * MiB)
            allocate, free_memory = pm.allocate_memory, pm.free_memory
            loops = 20 if smoke else 500

            def body() -> None:
                for _ in range(loops):
                    free_memory("bench_agent", allocate("bench_agent", size, pool_id="bench"))

            run_rounds(body, loops=loops)
            pm.destroy_pool("bench")
    else:
        loops = 5 if smoke else 100

        def body() -> None:
            for _ in range(loops):
                seg = shared_memory.SharedMemory(create=True, size=size)
                seg.close()
                seg.unlink()

        run_rounds(body, loops=loops)


# ---- hand-off to another process --------------------------------------------------------------------------------
def _child_pool(ns: str, q_in: Any, q_out: Any) -> None:
    bid = q_in.get()
    with MemoryPoolManager(namespace=ns) as pm:
        arr = pm.get_array("reader", bid, np.float32)
        total = float(arr.sum(dtype=np.float64))
        del arr
    q_out.put(total)


def _child_queue(q_in: Any, q_out: Any) -> None:
    arr = q_in.get()
    q_out.put(float(arr.sum(dtype=np.float64)))


class _Child:
    """A forked child already blocked on its input queue (so start-up is not timed), and its result queue."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.q_in, self.q_out = FORK.Queue(), FORK.Queue()
        self.proc = FORK.Process(target=target, args=(*args, self.q_in, self.q_out))
        self.proc.start()
        time.sleep(0.1)

    def finish(self) -> None:
        self.proc.join(timeout=30)
        if self.proc.is_alive():  # the hand-off failed before the child got its input
            self.proc.kill()
            self.proc.join()
        for q in (self.q_in, self.q_out):
            q.close()
            q.join_thread()


@pytest.mark.benchmark(group="memory: handoff")
@pytest.mark.parametrize("path", ["put_array + get_array", "filled in place + get_array", "multiprocessing.Queue"])
def test_handoff(benchmark: Any, namespace: str, path: str, smoke: bool) -> None:
    size = (16 if smoke else 256) * MiB
    arr = np.linspace(0, 1, size // 4, dtype=np.float32)
    benchmark.extra_info.update(role="anchor" if path == "multiprocessing.Queue" else "ours",
                                unit=f"a {size // MiB} MiB float32 array to a running child, until it has summed it")
    children: list[_Child] = []
    with MemoryPoolManager(namespace=namespace) as pm:
        pm.create_pool("handoff", size=size + 64 * MiB)

        def setup() -> tuple[tuple[_Child], dict[str, Any]]:
            queue = path == "multiprocessing.Queue"
            child = _Child(_child_queue) if queue else _Child(_child_pool, namespace)
            children.append(child)
            return (child,), {}

        def handoff(child: _Child) -> None:
            if path == "multiprocessing.Queue":
                child.q_in.put(arr)
                child.q_out.get()
                return
            if path == "put_array + get_array":
                bid = pm.put_array("owner", arr, pool_id="handoff", enable_dedup=False)
            else:  # the producer writes its result straight into the block
                bid = pm.allocate_memory("owner", size, pool_id="handoff")
                view = pm.view("owner", bid)
                np.frombuffer(view, np.float32)[:] = arr
                del view
                pm.seal("owner", bid)
            pm.share_memory("owner", "reader", bid)
            child.q_in.put(bid)
            child.q_out.get()
            pm.free_memory("owner", bid)
            pm.free_memory("reader", bid)

        try:
            benchmark.pedantic(handoff, setup=setup, rounds=1 if smoke else 3)
        finally:
            for child in children:
                child.finish()
            pm.destroy_pool("handoff")


# ---- dedup ------------------------------------------------------------------------------------------------------
@pytest.mark.benchmark(group="memory: dedup")
@pytest.mark.parametrize("path", ["xxh3_128 of the bytes", "put_array of a duplicate", "seal of a duplicate",
                                  "bytes_equal of the two copies"])
def test_dedup(benchmark: Any, namespace: str, path: str, smoke: bool) -> None:
    import xxhash

    size = (8 if smoke else 512) * MiB
    rounds = 1 if smoke else 5
    data = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8)
    benchmark.extra_info.update(role="anchor" if path.startswith("xxh3") else "ours",
                                unit=f"{size // MiB} MiB whose content is already in the pool", bytes=size)
    with MemoryPoolManager(namespace=namespace) as pm:
        pm.create_pool("dedup", size=2 * size + 64 * MiB)
        first = pm.put_array("a", data, pool_id="dedup")
        if path.startswith("xxh3"):
            benchmark.pedantic(xxhash.xxh3_128_intdigest, args=(data,), rounds=rounds, warmup_rounds=0 if smoke else 1)
        elif path == "put_array of a duplicate":
            def put() -> None:
                bid = pm.put_array("c", data, pool_id="dedup")
                assert pm.block_info("c", bid)["deduplicated"]
                pm.free_memory("c", bid)

            benchmark.pedantic(put, rounds=rounds)
        else:
            stored = pm.get_array("a", first)
            held: list[str] = []

            def filled() -> tuple[tuple[Any, ...], dict[str, Any]]:
                bid = pm.allocate_memory("b", size, pool_id="dedup")
                v = pm.view("b", bid)
                np.frombuffer(v, np.uint8)[:] = data
                held.append(bid)
                return (bid, v), {}

            def seal(bid: str, v: Any) -> None:
                del v
                pm.seal("b", bid)

            def compare(bid: str, v: Any) -> None:
                assert bytes_equal(v, stored)

            def release() -> None:
                while held:
                    bid = held.pop()
                    if path.startswith("seal"):
                        assert pm.block_info("b", bid)["deduplicated"]
                    pm.free_memory("b", bid)

            target = seal if path.startswith("seal") else compare
            benchmark.pedantic(target, setup=filled, teardown=lambda *a: release(), rounds=rounds)
            release()
            del stored
        pm.free_memory("a", first)
        pm.destroy_pool("dedup")


# ---- compression ------------------------------------------------------------------------------------------------
def _json_text(nbytes: int) -> bytes:
    rng = np.random.default_rng(2)
    rows, total, i = [], 0, 0
    while total < nbytes:
        row = json.dumps({"agent": f"agent_{int(rng.integers(131)):03d}", "step": i, "latency_ms":
                          round(float(rng.gamma(2, 10)), 3), "status": ["ok", "retry", "error"][int(rng.integers(3))],
                          "tokens": int(rng.integers(1, 4096)), "model": "llama-7b-q4"}) + "\n"
        rows.append(row)
        total += len(row)
        i += 1
    return "".join(rows).encode()[:nbytes]


def _data(kind: str, size: int) -> tuple[memoryview, int]:
    if kind == "float32 weights":
        w = np.random.default_rng(3).standard_normal(size // 4).astype(np.float32) * np.float32(0.02)
        return memoryview(w.view(np.uint8)).cast("B"), 4
    return memoryview(_json_text(size)).cast("B"), 1


@pytest.mark.parametrize("kind", ["float32 weights", "JSON lines"])
@pytest.mark.parametrize("codec", ["lz4", "shuffle+lz4", "zlib", "shuffle+zlib"])
def test_compress(benchmark: Any, kind: str, codec: str, smoke: bool) -> None:
    size = (1 if smoke else 16) * MiB
    mv, itemsize = _data(kind, size)
    if itemsize == 1 and codec.startswith("shuffle"):
        pytest.skip("the byte shuffle is for multi-byte elements")
    benchmark.group = f"memory: compress {kind}"
    shuffle = codec.startswith("shuffle")
    cid = comp.CODECS[codec.rsplit("+", 1)[-1]]
    benchmark.extra_info.update(role="anchor" if codec == "lz4" else "ours", unit=f"compress {size // MiB} MiB",
                                bytes=size)

    def compress() -> bytes:
        src = comp.shuffle(mv, itemsize) if shuffle else mv
        return bytes(comp.compress(cid, src))

    payload = benchmark.pedantic(compress, rounds=1 if smoke else 3)
    out = bytearray(len(mv))
    comp.decode_into(cid, itemsize if shuffle else 0, memoryview(payload), len(mv), memoryview(out))
    assert out == mv
    benchmark.extra_info["compression_ratio"] = round(len(mv) / len(payload), 3)
