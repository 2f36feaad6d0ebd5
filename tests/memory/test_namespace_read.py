"""The namespace-wide read grant: weights stored once, read by every agent of the namespace, never written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from sutazai_hwopt.errors import AccessDeniedError, StateError
from sutazai_hwopt.memory import MemoryPoolManager

MiB = 1024**2
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def pm(ns: str) -> Any:
    with MemoryPoolManager(namespace=ns) as m:
        m.create_pool("weights", size=8 * MiB)
        yield m
        m.destroy_pool("weights")


def test_granted_block_is_readable_by_any_agent_without_share_calls(pm: MemoryPoolManager) -> None:
    """After one grant, agents never named before read the block; each read takes one counted reference."""
    w = np.arange(10_000, dtype=np.float32)
    bid = pm.put_array("loader", w, pool_id="weights")
    private = pm.put_bytes("loader", b"private" * 100, pool_id="weights")
    with pytest.raises(AccessDeniedError):
        pm.get_array("agent_007", bid)                       # not granted yet: refused as before
    pm.grant_namespace_read("loader", bid)
    for i in range(5):
        arr = pm.get_array(f"agent_{i:03d}", bid, dtype=np.float32)
        assert np.array_equal(arr, w) and not arr.flags.writeable
    assert pm.read("agent_100", bid) == w.tobytes()
    info = pm.block_info("agent_000", bid)
    assert info["namespace_read"] and info["held_by_agent"] == 1 and info["refs"] == 1 + 6
    pm.get_array("agent_000", bid)                            # a second read takes no second reference
    assert pm.block_info("agent_000", bid)["refs"] == 7
    with pytest.raises(AccessDeniedError):
        pm.read("agent_000", private)                         # the grant is per block
    assert pm.check("weights")


def test_grant_is_read_only_and_needs_a_sealed_block(pm: MemoryPoolManager) -> None:
    """A writing block cannot be granted; a granted block cannot be written or granted by a non-holder."""
    bid = pm.allocate_memory("loader", 4096, pool_id="weights")
    with pytest.raises(StateError, match="seal"):
        pm.grant_namespace_read("loader", bid)
    with pytest.raises(AccessDeniedError):
        pm.view("agent_001", bid)                             # writing blocks stay private to their writer
    pm.view("loader", bid)[:4] = b"abcd"
    pm.seal("loader", bid)
    with pytest.raises(AccessDeniedError):
        pm.grant_namespace_read("stranger", bid)              # only a holder may grant
    pm.grant_namespace_read("loader", bid)
    with pytest.raises(AccessDeniedError):
        pm.view("agent_001", bid)                             # writing needs a reference the grant never gives
    assert pm.read("agent_001", bid)[:4] == b"abcd"
    with pytest.raises(StateError, match="immutable"):
        pm.view("agent_001", bid)                             # and sealed blocks are immutable anyway


def test_readers_keep_the_block_alive_and_revoke_stops_new_readers(pm: MemoryPoolManager) -> None:
    """The block lives while a reader holds it; revoke stops new readers, not those holding a reference."""
    bid = pm.put_bytes("loader", b"w" * 5000, pool_id="weights")
    pm.grant_namespace_read("loader", bid)
    assert pm.read("agent_001", bid) == b"w" * 5000
    pm.revoke_namespace_read("loader", bid)
    with pytest.raises(AccessDeniedError):
        pm.read("agent_002", bid)
    pm.free_memory("loader", bid)                             # the owner lets go; the reader still holds it
    assert pm.read("agent_001", bid) == b"w" * 5000
    pm.free_memory("agent_001", bid)
    with pytest.raises(StateError, match="freed"):
        pm.read("agent_001", bid)
    assert pm.stats("weights")["ids"] == 0 and pm.check("weights")


_READER = """
import json, sys
import numpy as np
from sutazai_hwopt.errors import AccessDeniedError, StateError
from sutazai_hwopt.memory import MemoryPoolManager
ns, bid, private, agent = sys.argv[1:5]
with MemoryPoolManager(namespace=ns) as m:
    arr = m.get_array(agent, bid, dtype=np.float64)
    out = {"sum": float(arr.sum()), "pid": __import__("os").getpid()}
    try:
        m.read(agent, private)
        out["private"] = "read"
    except AccessDeniedError:
        out["private"] = "denied"
    try:
        m.view(agent, bid)[:1] = b"x"
        out["write"] = "written"
    except StateError:
        out["write"] = "refused"
    print(json.dumps(out))
"""


def test_every_process_of_the_namespace_reads_the_weights(pm: MemoryPoolManager, ns: str) -> None:
    """Separate interpreters, each with its own agent id, read the granted weights zero-copy and nothing else;
    when they have exited, collect_garbage drops their references and the loader's copy is all that is left."""
    w = np.random.default_rng(7).random(50_000)
    bid = pm.put_array("loader", w, pool_id="weights")
    private = pm.put_bytes("loader", b"not shared" * 10, pool_id="weights")
    pm.grant_namespace_read("loader", bid)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", _READER, ns, bid, private, f"agent_{i:03d}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert {r["pid"] for r in results} == {p.pid for p in procs}
    for r in results:
        assert r == {**r, "sum": pytest.approx(float(w.sum())), "private": "denied", "write": "refused"}
    assert pm.block_info("loader", bid)["refs"] == 4
    assert pm.collect_garbage() == {"agents": 3, "blocks": 0}
    assert pm.block_info("loader", bid)["refs"] == 1
    pm.free_memory("loader", bid)
    pm.free_memory("loader", private)
    assert pm.stats("weights")["ids"] == 0 and pm.check("weights")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_other_users_are_refused_before_the_grant_is_seen(pm: MemoryPoolManager, ns: str) -> None:
    """A process of another user naming the same namespace (and pool) cannot open the 0600 segment: TrustError,
    a PermissionError; the namespace grant never reaches beyond the owner's processes."""
    bid = pm.put_bytes("loader", b"weights" * 100, pool_id="weights")
    pm.grant_namespace_read("loader", bid)
    owner = os.geteuid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child, as "nobody"
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.geteuid = lambda: owner           # name the segments as the owner's processes do
            from sutazai_hwopt.errors import TrustError

            try:
                MemoryPoolManager(namespace=ns).read("agent_intruder", bid)
            except TrustError as exc:
                code = 0 if isinstance(exc, PermissionError) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "another user's process read a namespace-granted block"
    assert pm.block_info("loader", bid)["refs"] == 1          # and took no reference
