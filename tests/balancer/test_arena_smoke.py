"""The discrete-event arena (benches/lb_arena.py) runs every algorithm and is deterministic for a seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ARENA = Path(__file__).resolve().parents[2] / "benches" / "lb_arena.py"


@pytest.fixture(scope="module")
def arena():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lb_arena", ARENA)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lb_arena"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("lb_arena", None)


def test_arena_is_deterministic_and_covers_all_algorithms(arena) -> None:  # type: ignore[no-untyped-def]
    """Two runs with the same seed give identical results; every algorithm completes a short cell."""
    a = arena.run_cell("adaptive", 0.9, "mixed", 3, 4.0, 7)
    b = arena.run_cell("adaptive", 0.9, "mixed", 3, 4.0, 7)
    assert a == b and a["n"] > 100
    for algo in arena.ALGOS:
        r = arena.run_cell(algo, 0.7, "single", 2, 2.0, 3)
        assert r["n"] > 50 and r["p99"] >= r["p50"] > 0
