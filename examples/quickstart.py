"""Quickstart: the library at work on this host, one line per part (run: python examples/quickstart.py).

A cache with a loader, the host-wide shared cache and a shared-memory pool (in a throwaway namespace, removed at
the end), and a reversible placement of a stand-in agent process. Leaves nothing in /dev/shm or /tmp.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np

import sutazai_hwopt as hw
from sutazai_hwopt._native import buildinfo
from sutazai_hwopt.testing import throwaway_namespace


def main() -> None:
    print(f"sutazai_hwopt {hw.__version__} (compiled cores: {buildinfo.is_compiled()}) "
          f"on {len(os.sched_getaffinity(0))} CPUs")

    loads = []
    cache = hw.Cache(1_000)
    for i in range(10_000):
        cache.get_or_load(f"prompt:{i % 1_500}", lambda key: loads.append(key) or key.upper())
    print(f"cache: 10000 lookups of 1500 keys in 1000 slots, hit ratio {cache.stats().hit_ratio:.2f}, "
          f"loader ran {len(loads)} times")

    with throwaway_namespace("quickstart") as ns:
        config = {"namespace": ns, "l1_size": 1 << 20, "l2_size": 8 << 20, "l3_size": 0, "enable_prefetch": False}
        with hw.IntelligentCacheSystem(config) as writer, hw.IntelligentCacheSystem(config) as reader:
            writer.put("embedding:42", np.arange(4, dtype=np.float32), "agent_001")
            value, level = reader.get("embedding:42", "agent_002")   # another instance: as in another process
            print(f"shared cache: agent_002 reads agent_001's embedding {value.tolist()} from {level} "
                  f"(shared memory)")
        with hw.MemoryPoolManager(namespace=ns) as pools:
            pools.create_pool("model_weights", size=16 << 20)
            weights = np.ones((512, 1024), dtype=np.float32)
            first = pools.put_array("agent_001", weights, pool_id="model_weights")
            pools.put_array("agent_002", weights.copy(), pool_id="model_weights")
            view = pools.get_array("agent_001", first, weights.dtype, weights.shape)
            print(f"pool: a {weights.nbytes >> 20} MiB array stored by two agents, kept once "
                  f"(dedup ratio {pools.stats('model_weights')['dedup_ratio']:.1f}), read zero-copy "
                  f"(writable: {view.flags.writeable})")
            del view
            pools.destroy_pool("model_weights")

    agent = subprocess.Popen(["sleep", "60"])
    with tempfile.TemporaryDirectory(prefix="hwopt-quickstart-") as state:
        optimizer = hw.HardwareOptimizationMaster(mode="balanced", state_dir=state)
        try:
            cpus = optimizer.assign_cores(agent_id="agent_001", num_cores=1, priority=8, pid=agent.pid)
            print(f"placement: agent_001 (pid {agent.pid}) pinned to cpus {cpus} "
                  f"(kernel says {sorted(os.sched_getaffinity(agent.pid))})")
            restored = optimizer.rollback()
            print(f"rollback: {len(restored)} kernel settings restored "
                  f"(affinity back to {len(os.sched_getaffinity(agent.pid))} CPUs)")
        finally:
            optimizer.close()
            agent.kill()
            agent.wait()
    print("done: nothing left in /dev/shm or /tmp")


if __name__ == "__main__":
    main()
