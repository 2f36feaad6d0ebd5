"""One agent: a small asyncio service on loopback answering prompts with numpy work on shared weights.

Started by the harness (``python -m examples.agent_fleet.agent --setup ...``); prints one line
``READY <port> <weights address> <weights bytes>`` and then serves until killed. Requests are processed one at a
time in arrival order (the agent is single-threaded, like a model worker), each answered as soon as it is done.
The three setups differ only in where the weights live, where answers are cached and (in the load generator)
how requests are routed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import signal
import sys
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from .work import (
    COMPUTED,
    FAILED,
    FLUSH,
    HEAVY,
    LEVEL_L1,
    LEVEL_L3,
    LEVEL_REMOTE,
    LEVEL_SHARED,
    LIGHT,
    OK,
    PING,
    RECONFIGURE,
    REQUEST,
    RESPONSE,
    SHAPES,
    STATS,
    cache_key,
    compute,
    make_inputs,
    process_args,
)

#: bytes a private LRU entry costs besides the value (key, bytes headers, OrderedDict node), for naive's budget
PRIVATE_ENTRY_OVERHEAD = 200


class PrivateLRU:
    """Naive: a per-process LRU of answers (an OrderedDict, what functools.lru_cache does inside)."""

    def __init__(self, entries: int) -> None:
        self.entries = max(1, entries)
        self.data: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, key: bytes) -> tuple[Any, int]:
        value = self.data.get(key)
        if value is None:
            return None, COMPUTED
        self.data.move_to_end(key)
        return value, LEVEL_L1

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value
        if len(self.data) > self.entries:
            self.data.popitem(last=False)

    def flush(self) -> None:
        self.data.clear()


class RedisCache:
    """Savvy: answers in the harness's redis-server (redis-py, one connection per agent)."""

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)

    def get(self, key: bytes) -> tuple[Any, int]:
        value = self.client.get(key)
        return (None, COMPUTED) if value is None else (value, LEVEL_SHARED)

    def put(self, key: bytes, value: bytes) -> None:
        self.client.set(key, value)

    def flush(self) -> None:
        self.client.flushall()


def l2_entries_for(budget: int, answer_bytes: int) -> int:
    """The L2 index capacity for a budget of answers: as many entries as the budget could hold.

    An entry takes its value plus the block header and the key's 64-byte line; the index (slots and stripe
    words, ~43 bytes per entry) comes out of the same budget, so sizing it for far more entries than fit (as
    one entry per 256 bytes did for 512-byte answers) spends a quarter of a small budget on empty slots.
    """
    from sutazai_hwopt._native.shmcache_index import BLOCK_HEADER

    return max(48, budget // (answer_bytes + BLOCK_HEADER + 64))


class LibraryCache:
    """Library: answers in IntelligentCacheSystem (L1 private, L2 shared by every agent of the namespace)."""

    LEVELS = {"L1": LEVEL_L1, "L2": LEVEL_SHARED, "L3": LEVEL_L3, "remote": LEVEL_REMOTE}

    def __init__(self, namespace: str, agent_id: str, budget: int, l1_size: int, answer_bytes: int) -> None:
        from sutazai_hwopt import IntelligentCacheSystem

        self.agent_id = agent_id
        self.cache = IntelligentCacheSystem({
            "namespace": namespace, "l1_size": l1_size, "l2_size": budget, "l3_size": 0,
            "enable_prefetch": False, "l2_max_entries": l2_entries_for(budget, answer_bytes),
            # 131 processes on 2 cores: a put must not sleep behind a writer the scheduler preempted; each
            # agent's next request writes what it owes (docs/cache_system.md, "Write-behind")
            "write_behind": True,
        })

    def get(self, key: bytes) -> tuple[Any, int]:
        value, level = self.cache.get(key, self.agent_id)
        return (None, COMPUTED) if level is None else (value, self.LEVELS[level])

    def put(self, key: bytes, value: bytes) -> None:
        self.cache.put(key, value, self.agent_id)

    def flush(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        self.cache.close()


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the harness dies, so nothing outlives a killed harness."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shape = SHAPES[args.shape]
        self.agent_id = f"agent_{args.index:03d}"
        self.pools: Any = None
        if args.setup == "naive":        # a private copy of the weights
            self.weights = np.load(args.npy)
        elif args.setup == "savvy":      # the page cache's copy, shared by every agent mapping the file
            self.weights = np.load(args.npy, mmap_mode="r")
        else:                            # the pool's copy, a zero-copy read-only view
            from sutazai_hwopt import MemoryPoolManager

            self.pools = MemoryPoolManager(namespace=args.pool_ns)
            self.weights = self.pools.get_array(self.agent_id, args.block, np.float32,
                                                (self.shape.rows, self.shape.cols))
        self.inputs = make_inputs(self.shape, args.seed)
        self.cache: Any
        if args.setup == "naive":
            share = args.budget // max(1, args.agents)
            self.cache = PrivateLRU(share // (self.shape.answer_bytes + PRIVATE_ENTRY_OVERHEAD))
        elif args.setup == "savvy":
            self.cache = RedisCache(args.redis_port)
        else:
            self.cache = LibraryCache(args.cache_ns, self.agent_id, args.budget, args.l1_size,
                                      self.shape.answer_bytes)
        self.costs = self._zero_costs()
        self._gc_started = 0
        gc.callbacks.append(self._on_gc)

    @staticmethod
    def _zero_costs() -> dict[str, int]:
        """Where an agent's time goes, per request (ns): cache get, compute on a miss, cache put, slow gets, and
        the cyclic garbage collector (collections of the oldest generation and the time spent in all)."""
        return {"requests": 0, "get_ns": 0, "get_max_ns": 0, "gets_over_1ms": 0, "misses": 0, "compute_ns": 0,
                "put_ns": 0, "put_max_ns": 0, "gc_ns": 0, "gc_full": 0}

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
        elif self._gc_started:
            self.costs["gc_ns"] += time.perf_counter_ns() - self._gc_started
            self.costs["gc_full"] += info.get("generation") == 2
            self._gc_started = 0

    def serve(self, kind: int, arg: int, prompt: int) -> bytes:
        if LIGHT <= kind <= HEAVY:
            key = cache_key(kind, prompt)
            costs = self.costs
            clock = time.perf_counter_ns
            t0 = clock()
            value, level = self.cache.get(key)
            t1 = clock()
            costs["requests"] += 1
            costs["get_ns"] += t1 - t0
            costs["get_max_ns"] = max(costs["get_max_ns"], t1 - t0)
            costs["gets_over_1ms"] += t1 - t0 > 1_000_000
            if value is None:
                value = compute(self.weights, self.inputs, kind, prompt, self.shape.answer).tobytes()
                t2 = clock()
                self.cache.put(key, value)
                t3 = clock()
                costs["misses"] += 1
                costs["compute_ns"] += t2 - t1
                costs["put_ns"] += t3 - t2
                costs["put_max_ns"] = max(costs["put_max_ns"], t3 - t2)
            return RESPONSE.pack(OK, level, len(value)) + value
        if kind == STATS:                # the cost counters (and reset them)
            payload = json.dumps(self.costs).encode()
            self.costs = self._zero_costs()
            return RESPONSE.pack(OK, 0, len(payload)) + payload
        if kind == PING:
            return RESPONSE.pack(OK, 0, 0)
        if kind == FLUSH:
            self.cache.flush()
            return RESPONSE.pack(OK, 0, 0)
        if kind == RECONFIGURE:          # the constrained-cache run: a fresh, smaller shared cache
            if isinstance(self.cache, LibraryCache):
                self.cache.close()
                self.cache = LibraryCache(self.args.cache_ns2, self.agent_id, arg * 1024, 0,
                                          self.shape.answer_bytes)
            return RESPONSE.pack(OK, 0, 0)
        return RESPONSE.pack(FAILED, 0, 0)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        size = REQUEST.size
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                buf += data
                n = len(buf) // size
                for j in range(n):
                    kind, arg, prompt = REQUEST.unpack_from(buf, j * size)
                    try:
                        out = self.serve(kind, arg, prompt)
                    except Exception as exc:  # answer the failure, keep serving
                        print(f"{self.agent_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        out = RESPONSE.pack(FAILED, 0, 0)
                    writer.write(out)
                buf = buf[n * size:]
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def run(self) -> None:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port} {self.weights.ctypes.data} {self.weights.nbytes}", flush=True)
        async with server:
            await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    die_with_parent()
    p = process_args(__doc__)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--agents", type=int, required=True)
    p.add_argument("--budget", type=int, required=True, help="shared-cache bytes (naive: split over agents)")
    p.add_argument("--redis-port", type=int, default=0)
    p.add_argument("--pool-ns", default="")
    p.add_argument("--block", default="")
    p.add_argument("--cache-ns", default="")
    p.add_argument("--cache-ns2", default="")
    p.add_argument("--l1-size", type=int, default=1 << 20)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(Agent(args).run())


if __name__ == "__main__":
    main()
