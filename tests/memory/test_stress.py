"""Multi-process stress: 8 agent processes on one pool, several SIGKILLed (two while holding the lock).

Survivors must finish (no deadlock), every sealed block must keep its content, check() must pass, GC must
free the dead agents' blocks, and destroying the pool must leave nothing in /dev/shm.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import traceback
from typing import Any

import pytest

from sutazai_hwopt import MemoryPoolManager
from sutazai_hwopt.memory import compression as comp
from sutazai_hwopt.shm import SHM_DIR, segment_name

from .conftest import FORK

N_WORKERS = 8
N_OPS = 600
SHARED_SEEDS = list(range(6))          # contents several workers store: dedup across processes


def content(seed: int, size: int) -> bytes:
    """Self-verifying bytes: seed and size in the first 16 bytes, then a pattern derived from the seed."""
    head = seed.to_bytes(8, "little") + size.to_bytes(8, "little")
    body = hashlib.blake2b(head, digest_size=64).digest()
    return (head + body * (size // 64 + 1))[:size]


def verify(data: bytes) -> bool:
    if len(data) < 16:
        return False
    seed, size = int.from_bytes(data[:8], "little"), int.from_bytes(data[8:16], "little")
    return size == len(data) and content(seed, size) == data


def _worker(ns: str, me: int, inboxes: list[tuple[int, int]], started: Any, mode: str, seed: int) -> None:
    try:
        rng = random.Random(seed * 100 + me)
        agent = f"w{me}"
        pm = MemoryPoolManager(namespace=ns)
        held: list[str] = []
        inbox_r = inboxes[me][0]
        op = 0
        while op < N_OPS or mode == "victim":      # victims run until we SIGKILL them
            op += 1
            if op == 20:
                started.set()
            if mode.startswith("die") and op == 60:
                _die_holding_lock(pm, mode, agent, held)
            r = rng.random()
            if len(held) > 40:
                r = 0.8
            if r < 0.35 or not held:
                seed = rng.choice(SHARED_SEEDS) if rng.random() < 0.4 else rng.randrange(1 << 40)
                size = rng.choice([16, 100, 2000, 5000, 40_000, 120_000])
                if rng.random() < 0.5:
                    bid = pm.put_bytes(agent, content(seed, size), pool_id="stress",
                                       compression=rng.choice([None, "lz4"]))
                else:
                    bid = pm.allocate_memory(agent, size, pool_id="stress")
                    pm.view(agent, bid)[:] = content(seed, size)
                    pm.seal(agent, bid)
                held.append(bid)
            elif r < 0.55:
                bid = rng.choice(held)
                assert verify(pm.read(agent, bid)), f"content of {bid} damaged"
            elif r < 0.7:
                bid = rng.choice(held)
                other = rng.randrange(N_WORKERS)
                if other != me:
                    pm.share_memory(agent, f"w{other}", bid)
                    try:
                        os.write(inboxes[other][1], f"{bid}\n".encode())
                    except BlockingIOError:
                        pass
            elif r < 0.9:
                pm.free_memory(agent, held.pop(rng.randrange(len(held))))
            else:
                try:
                    data = os.read(inbox_r, 4096).decode()
                except BlockingIOError:
                    data = ""
                held.extend(line for line in data.split("\n") if line)
        for bid in held:
            assert verify(pm.read(agent, bid)), f"content of {bid} damaged"
            pm.free_memory(agent, bid)
        pm.close()
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


def _die_holding_lock(pm: MemoryPoolManager, mode: str, agent: str, held: list[str]) -> None:
    """Take the pool lock, leave a half-done update behind, and die with SIGKILL."""
    pool = pm._pool("stress")
    pool.heap.acquire()
    if mode == "die_in_alloc":
        pool.alloc(33_333)                           # heap allocation no block claims
        slot = pool.t.free_slot()
        pool.t.off[slot] = pool.alloc(777)           # block entry without holder
        pool.t.state[slot] = 1
    else:                                            # die_in_free: holder dropped, refcount not
        slot = int(held[0].split(":")[1])
        pool.t.holder_add(slot, pool.t.agent_index(agent.encode()), -1)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_stress(ns: str, children: Any, seed: int) -> None:
    """8 processes with random ops; 4 SIGKILLed (2 holding the lock): survivors finish, state is intact."""
    with MemoryPoolManager(namespace=ns) as pm:
        pm.create_pool("stress", size=2 * 1024**2, max_size=48 * 1024**2, max_blocks=4096)  # grows
        inboxes = []
        for _ in range(N_WORKERS):
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            inboxes.append((r, w))
        modes = ["normal"] * N_WORKERS
        modes[1], modes[4] = "die_in_alloc", "die_in_free"
        modes[2] = modes[6] = "victim"
        events = [FORK.Event() for _ in range(N_WORKERS)]
        procs = [children(_worker, ns, i, inboxes, events[i], modes[i], seed) for i in range(N_WORKERS)]
        for e in events:
            assert e.wait(120), "a worker did not start"
        for victim in (2, 6):                      # killed by us at whatever point they have reached
            os.kill(procs[victim].pid, signal.SIGKILL)
        for p in procs:
            p.join(300)
            assert not p.is_alive(), "a worker deadlocked"
        codes = [p.exitcode for p in procs]
        assert codes == [0 if m == "normal" else -signal.SIGKILL for m in modes], codes
        for r, w in inboxes:
            os.close(r)
            os.close(w)

        assert pm.check("stress")
        s = pm.stats("stress")
        assert s["recoveries"] >= 2 and s["ids"] > 0 and s["segments"] > 1
        pool = pm._pool("stress")
        t = pool.t
        for slot in range(len(t.state)):           # every sealed block left behind is intact
            if int(t.state[slot]) == 2:
                off, size, n = int(t.off[slot]), int(t.size[slot]), int(t.nbytes[slot])
                out = bytearray(n)
                comp.decode_into(int(t.codec[slot]), int(t.shuffle[slot]), pool.view(off, size), n,
                                 memoryview(out))
                assert verify(bytes(out)), f"slot {slot} damaged"
        gc = pm.collect_garbage()
        assert gc["agents"] >= 1
        s = pm.stats("stress")
        assert s["ids"] == 0 and s["blocks"] == 0, s
        assert pm.check("stress")
        pm.destroy_pool("stress")
    assert not os.path.exists(os.path.join(SHM_DIR, segment_name(ns, "pool", "stress")))
