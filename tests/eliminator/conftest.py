"""Fixtures of the eliminator tests: a scripted metric source, a coordinator with a private journal, agents."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from sutazai_hwopt.profiler.faults import FaultAgent


class ScriptedSource:
    """A metric source that returns prepared windows in order: before, after, before, after, ...

    Each window maps key -> value; keys not given read as ``default``. Records what was asked.
    """

    def __init__(self, windows: Sequence[Mapping[str, float]], default: float = 1.0) -> None:
        self.windows = list(windows)
        self.default = default
        self.asked: list[list[str]] = []

    async def measure(self, keys: Sequence[str], window_s: float) -> dict[str, float]:
        self.asked.append(list(keys))
        w = self.windows.pop(0) if self.windows else {}
        return {k: float(w.get(k, self.default)) for k in keys}


def better(key: str, before: float = 0.8, after: float = 0.1) -> list[dict[str, float]]:
    return [{key: before}, {key: after}]


def worse(key: str, before: float = 0.8, after: float = 0.9) -> list[dict[str, float]]:
    return [{key: before}, {key: after}]


NAN = math.nan


@pytest.fixture
def scripted() -> type[ScriptedSource]:
    return ScriptedSource


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Any]:
    """A real ResourcePoolCoordinator whose journal lives in tmp_path; everything is rolled back after."""
    from sutazai_hwopt.resources import ResourcePoolCoordinator

    c = ResourcePoolCoordinator(state_dir=str(tmp_path / "state"))
    yield c
    c.rollback()
    c.close()


@pytest.fixture
def agents() -> Iterator[dict[str, FaultAgent]]:
    """Two idle agent processes (killed, with anything they forked, after the test)."""
    made = {"hog": FaultAgent("idle"), "other": FaultAgent("idle")}
    yield made
    for a in made.values():
        a.stop()


@pytest.fixture(autouse=True)
def own_priority_untouched() -> Iterator[None]:
    """The test process's own nice, affinity and policy are the same after each test."""
    before = (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0), os.sched_getscheduler(0))
    yield
    assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0), os.sched_getscheduler(0)) == before
