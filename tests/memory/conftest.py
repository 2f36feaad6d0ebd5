"""Fixtures for the memory tests: a throwaway namespace with a leak check, raw formatted segments, children."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sutazai_hwopt._native import pool_alloc
from sutazai_hwopt.shm import SHM_DIR, create_segment, list_segment_names, segment_name, unlink_segment
from sutazai_hwopt.testing import throwaway_namespace

FORK = multiprocessing.get_context("fork")


def _ours() -> set[str]:
    prefix = f"sutazai_hwopt.u{os.geteuid()}.memtest-{os.getpid()}-"
    return {n for n in os.listdir(SHM_DIR) if n.startswith(prefix)}


@pytest.fixture
def ns() -> Iterator[str]:
    """A unique namespace; after the test no segment of it (or of any memtest namespace of ours) is left."""
    before = _ours()
    with throwaway_namespace("memtest") as name:
        yield name
    assert not list_segment_names(name)
    assert _ours() <= before, f"segments left in /dev/shm: {sorted(_ours() - before)}"


@pytest.fixture
def segment(ns: str) -> Iterator[Callable[..., Any]]:
    """Factory: a formatted raw segment ``(name, shm)``; closed and unlinked afterwards."""
    made: list[Any] = []

    def make(size: int = 1 << 20, meta: int = 4096, pool_id: str = "raw") -> Any:
        name = segment_name(ns, "pool", pool_id)
        shm = create_segment(name, size)
        pool_alloc.format_segment(shm.buf, meta)
        made.append((name, shm))
        return name, shm

    yield make
    for name, shm in made:
        try:
            shm.close()
        except BufferError:
            pass
        unlink_segment(name)


@pytest.fixture
def children() -> Iterator[Callable[..., Any]]:
    """Start forked children; every one still alive at teardown is SIGKILLed and joined."""
    procs: list[Any] = []

    def start(target: Callable[..., Any], *args: Any) -> Any:
        p = FORK.Process(target=target, args=args, daemon=True)
        p.start()
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
        p.close()
    assert not multiprocessing.active_children()
