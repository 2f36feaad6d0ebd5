"""Fixtures of the cache-system tests: a throwaway namespace that must be left without segments, and a real
redis-server on a random loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from sutazai_hwopt.shm import list_segment_names
from sutazai_hwopt.testing import throwaway_namespace


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace; the test must destroy its tiers (no segment may remain)."""
    with throwaway_namespace("cs") as name:
        yield name
        left = list_segment_names(name)
        assert left == [], f"segments left in /dev/shm: {left}"
        import threading

        assert not [t for t in threading.enumerate() if t.name == "sutazai-cache-prefetch"], "prefetch thread left"


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A private runtime directory per test (the remote tier keeps its signing key there), removed after."""
    tmp = tempfile.mkdtemp(prefix="szcache-run-")
    monkeypatch.setenv("SUTAZAI_HWOPT_RUNTIME_DIR", os.path.join(tmp, "run"))
    try:
        yield os.path.join(tmp, "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGTERM): the server goes away even if the test process is killed.
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a redis-server started for the session on 127.0.0.1 (skips when the binary is missing)."""
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                              else None)
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="szcache-redis-")
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.01)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
