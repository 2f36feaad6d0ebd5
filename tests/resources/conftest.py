"""Fixtures for the resources tests: real child processes (always killed) and a private journal directory."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sutazai_hwopt.config import HardwareConfig
from sutazai_hwopt.resources import ResourcePoolCoordinator


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``sleep`` children (or a given argv); every one is SIGKILLed and reaped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str] | None = None, **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv or ["sleep", "600"], **kw)  # type: ignore[call-overload]
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return str(d)


@pytest.fixture
def coord(state_dir: str) -> Iterator[ResourcePoolCoordinator]:
    """A coordinator on this host with a private journal; anything left in the journal is rolled back."""
    c = ResourcePoolCoordinator(HardwareConfig(), state_dir=state_dir)
    yield c
    c.rollback()


def _kernel_state(pid: int) -> tuple[frozenset[int], int, int]:
    return (frozenset(os.sched_getaffinity(pid)), os.getpriority(os.PRIO_PROCESS, pid),
            os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK)


@pytest.fixture
def kstate() -> Callable[[int], tuple[frozenset[int], int, int]]:
    """``kstate(pid)`` -> (affinity, nice, policy) the kernel holds now."""
    return _kernel_state


@pytest.fixture(autouse=True)
def _root_only(request: pytest.FixtureRequest) -> None:
    """Skip tests marked ``root`` when not running as root."""
    if request.node.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (CAP_SYS_NICE to lower and restore nice values)")


@pytest.fixture(autouse=True)
def _runner_untouched() -> Iterator[None]:
    """The test runner's own scheduling must be the same after every test."""
    before = _kernel_state(os.getpid())
    yield
    assert _kernel_state(os.getpid()) == before
