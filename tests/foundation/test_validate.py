"""The argument rules every part shares (sutazai_hwopt._validate), and that each is defined only there."""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path

import numpy as np
import pytest

from sutazai_hwopt._validate import AGENT_ID_MAX_BYTES, check_agent_id, finite, round_up
from sutazai_hwopt.errors import InvalidArgumentError
from sutazai_hwopt.memory.tables import AGENT_DTYPE

PACKAGE = Path(__file__).resolve().parents[2] / "sutazai_hwopt"


@pytest.mark.parametrize("ok", ["a", "agent_001", "é" * 24, "x" * AGENT_ID_MAX_BYTES])
def test_agent_ids_that_pass(ok: str) -> None:
    assert check_agent_id(ok) == ok


@pytest.mark.parametrize("bad", ["", "x" * (AGENT_ID_MAX_BYTES + 1), "é" * 25, "a\x00b", None, 7, b"agent"])
def test_agent_ids_that_fail_say_the_rule(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="at most 48 UTF-8 bytes without NUL"):
        check_agent_id(bad)


def test_the_agent_id_bound_is_the_shared_table_field() -> None:
    assert AGENT_DTYPE["name"].itemsize == AGENT_ID_MAX_BYTES


def test_every_part_applies_the_same_agent_id_rule(tmp_path: Path) -> None:
    from sutazai_hwopt import PerformanceProfiler
    from sutazai_hwopt.resources import ResourcePoolCoordinator

    long_id = "x" * (AGENT_ID_MAX_BYTES + 1)
    with pytest.raises(InvalidArgumentError, match="48 UTF-8 bytes"):
        ResourcePoolCoordinator(state_dir=str(tmp_path)).register_agent(long_id, pid=os.getpid())
    with pytest.raises(InvalidArgumentError, match="48 UTF-8 bytes"):
        PerformanceProfiler().add_agent(long_id, 1)


def test_finite_makes_values_json_safe() -> None:
    class Row:
        def to_dict(self) -> dict[str, float]:
            return {"v": math.nan}

    value = {"a": [np.float64("nan"), np.int64(3), (1.5, -math.inf)], 2: None, "row": Row(), "s": "nan", "b": True}
    assert finite(value) == {"a": [None, 3, [1.5, None]], "2": None, "row": {"v": None}, "s": "nan", "b": True}
    assert type(finite(np.int64(3))) is int
    assert finite(None) is None


def test_round_up() -> None:
    assert [round_up(n, 8) for n in (0, 1, 8, 9)] == [0, 8, 8, 16]


def test_each_shared_rule_is_defined_once() -> None:
    """No module re-defines the helpers that live in _validate (the copies this module replaced)."""
    names = {"_finite", "finite", "_round_up", "round_up", "check_agent", "_check_agent", "check_agent_id",
             "_clean", "_jsonable"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert sorted(found) == ["_validate.py:check_agent_id", "_validate.py:finite", "_validate.py:round_up"]
