"""Fixtures for the host service tests: a private runtime directory, agent processes, an in-process service."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh runtime directory, used by the CLI through the environment; any daemon left is stopped."""
    path = tmp_path / "rt"
    monkeypatch.setenv("SUTAZAI_HWOPT_RUNTIME_DIR", str(path))
    yield path
    pid_file = path / "daemon.pid"
    if pid_file.exists():
        subprocess.run([sys.executable, "-m", "sutazai_hwopt", "stop", "--timeout", "10"],
                       capture_output=True, env={**os.environ, "SUTAZAI_HWOPT_RUNTIME_DIR": str(path)})


@pytest.fixture
def daemon_ns() -> Iterator[str]:
    """A throwaway namespace for a deployed daemon (``deploy --namespace``); its segments are removed afterwards."""
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace("hostd") as ns:
        yield ns


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Real agent processes (sleep), killed at teardown."""
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(3)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()
