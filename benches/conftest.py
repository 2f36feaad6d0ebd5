"""Shared fixtures of the pytest-benchmark suites (``benches/test_*.py``).

Run every timing suite and print the side-by-side tables (one table per comparison group)::

    python -m pytest benches/ --benchmark-only --benchmark-group-by=group --benchmark-json=/tmp/bench.json
    python benches/report.py /tmp/bench.json          # writes docs/benchmarks.md

CI runs ``python -m pytest -q benches/ --benchmark-disable``: every benchmark body once, untimed, on the smaller
"smoke" sizes (the ``smoke`` fixture), so a bench that breaks fails CI while no timing is ever asserted.

Conventions of the suites: each comparison is one ``@pytest.mark.benchmark(group=...)``; the library's contender
and the anchors a user would pick instead (psutil, pybreaker, a ``multiprocessing`` Queue, ...) sit in the same
group; every test records ``extra_info["role"]`` (``"ours"`` or ``"anchor"``) and, where it is not obvious from the
name, what one timed call does (``extra_info["unit"]``). ``benches/report.py`` computes the ratios to the anchors
from the medians of one run, so no absolute time is ever quoted alone.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Agents the docs' figures are quoted for (the project's reference deployment).
N_AGENTS = 131


def is_smoke(config: pytest.Config) -> bool:
    """True when benchmarks run untimed (``--benchmark-disable``): use small sizes, run each body once."""
    return bool(config.getoption("benchmark_disable", default=False))


@pytest.fixture(scope="session")
def smoke(pytestconfig: pytest.Config) -> bool:
    return is_smoke(pytestconfig)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Facts a reader needs to judge a figure: cores, load while running, memory, kernel, library versions."""
    import numpy as np
    import psutil

    import sutazai_hwopt

    vm = psutil.virtual_memory()
    machine_info.update({
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
        "memory_total_bytes": vm.total,
        "kernel": platform.release(),
        "sutazai_hwopt": getattr(sutazai_hwopt, "__version__", "?"),
        "numpy": np.__version__,
        "smoke": is_smoke(config),
    })


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]) -> None:
    """Load at the end too: a figure taken while the load average doubled is worth less (the report shows it)."""
    output_json["machine_info"]["loadavg_at_end"] = os.getloadavg()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A throwaway shared-memory namespace: every segment created in it is unlinked afterwards."""
    from sutazai_hwopt.testing import throwaway_namespace

    with throwaway_namespace("bench") as ns:
        yield ns


@pytest.fixture(scope="module")
def sleepers(smoke: bool) -> Iterator[dict[str, int]]:
    """``agent_NNN -> pid`` of real ``sleep`` children standing in for agent processes (131; 16 in smoke mode)."""
    procs = [subprocess.Popen(["sleep", "3600"]) for _ in range(16 if smoke else N_AGENTS)]
    try:
        yield {f"agent_{i:03d}": p.pid for i, p in enumerate(procs)}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port (no persistence), stopped afterwards.

    Skips the test cleanly when ``redis-server`` or redis-py is missing (``scripts/bootstrap.sh --test`` installs
    both)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed")
    redis = pytest.importorskip("redis")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def run_rounds(benchmark: Any, smoke: bool) -> Any:
    """``run_rounds(fn, loops=N, rounds=R)``: time ``fn()`` (which makes ``loops`` calls itself) over R rounds.

    The stored statistics are per ``fn()``; ``extra_info["loops"]`` lets the report print per-call figures. In
    smoke mode (``--benchmark-disable``) ``fn`` runs once, untimed.
    """

    def run(fn: Any, *, loops: int = 1, rounds: int = 7, warmup: int = 1) -> Any:
        benchmark.extra_info["loops"] = loops
        return benchmark.pedantic(fn, rounds=1 if smoke else rounds, warmup_rounds=0 if smoke else warmup,
                                  iterations=1)

    return run
