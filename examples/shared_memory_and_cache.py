"""Share model weights and cached results between agent processes (run: python examples/shared_memory_and_cache.py).

The parent stores a float32 "weights" array once in a shared pool and a result in the shared cache; a child
process attaches by namespace, reads the weights zero-copy and gets the cached value from L2.
"""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

from sutazai_hwopt import IntelligentCacheSystem, MemoryPoolManager
from sutazai_hwopt.testing import throwaway_namespace

CACHE = {"l1_size": 1 << 20, "l2_size": 16 << 20, "l3_size": 0, "enable_prefetch": False}


def agent(namespace: str, block_id: str, queue: mp.Queue) -> None:
    with MemoryPoolManager(namespace=namespace) as pools:
        weights = pools.get_array("agent_002", block_id, np.float32, (1024, 1024))
        checksum = float(weights.sum())
        writable = weights.flags.writeable
        del weights
    cache = IntelligentCacheSystem({**CACHE, "namespace": namespace})
    value, level = cache.get("embedding:hello", "agent_002")
    cache.close()
    queue.put((checksum, writable, value, level))


def main() -> None:
    with throwaway_namespace("example") as ns, MemoryPoolManager(namespace=ns) as pools:
        pools.create_pool("model_weights", size=16 * 1024**2)
        weights = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
        block_id = pools.put_array("agent_001", weights, pool_id="model_weights")
        duplicate = pools.put_array("agent_003", weights.copy(), pool_id="model_weights")
        pools.share_memory("agent_001", "agent_002", block_id)
        stats = pools.stats("model_weights")
        print(f"stored twice ({block_id} and {duplicate}), kept once: dedup ratio {stats['dedup_ratio']:.1f}, "
              f"{stats['used'] / 2**20:.1f} MiB used")

        cache = IntelligentCacheSystem({**CACHE, "namespace": ns})
        cache.put("embedding:hello", np.arange(8, dtype=np.float32), "agent_001", priority=9)

        queue: mp.Queue = mp.get_context("spawn").Queue()
        child = mp.get_context("spawn").Process(target=agent, args=(ns, block_id, queue))
        child.start()
        checksum, writable, value, level = queue.get(timeout=60)
        child.join()
        print(f"child read the weights zero-copy (read-only: {not writable}); checksum matches: "
              f"{abs(checksum - float(weights.sum())) < 1e-2}")
        print(f"child got the cached embedding from {level}: {value}")
        cache.destroy()


if __name__ == "__main__":
    main()
