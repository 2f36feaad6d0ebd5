"""Parity of what the compiled core and the Python shell share: backend states and algorithm codes.

They are defined once, in ``_native/balancer_codes.pxi``; the core exposes them as ``BACKEND_STATES`` and
``ALGORITHM_CODES`` and the Python enums are built from those. These tests fail when one side changes alone:
a constant added or renumbered in the .pxi without its dict entry, a Python enum member edited or missing, or
an algorithm class whose ``native_code`` no longer selects what its Python ``select`` does.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from sutazai_hwopt._native import balancer_core
from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer
from sutazai_hwopt.balancer.algorithms import ALGORITHMS, AlgorithmCode
from sutazai_hwopt.balancer.state import EJECTED, HEALTHY, PROBING, STATE_NAMES, Backend, BackendState
from sutazai_hwopt.testing import FakeClock

PXI = Path(__file__).resolve().parents[2] / "_native" / "balancer_codes.pxi"


def _pxi_enums() -> dict[str, int]:
    """Every ``NAME = value`` inside the .pxi's ``cdef enum`` blocks."""
    out: dict[str, int] = {}
    in_enum = False
    for line in PXI.read_text().splitlines():
        if line.startswith("cdef enum"):
            in_enum = True
            continue
        if in_enum:
            m = re.match(r"\s+([A-Z_][A-Z0-9_]*)\s*=\s*(\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2))
            elif line.strip() and not line.startswith((" ", "\t")):
                in_enum = False
    return out


def test_pxi_constants_are_all_exposed_with_their_values() -> None:
    enums = _pxi_enums()
    states = {k: v for k, v in enums.items() if not k.startswith("ALG_")}
    algos = {k: v for k, v in enums.items() if k.startswith("ALG_")}
    assert states and algos
    assert sorted(states.values()) == sorted(balancer_core.BACKEND_STATES.values())
    assert sorted(algos.values()) == sorted(balancer_core.ALGORITHM_CODES.values())
    # ...and each name maps to the constant of the same meaning.
    assert {n.upper(): v for n, v in balancer_core.BACKEND_STATES.items()} == states
    pxi_alg = {"python": "ALG_PY", "adaptive": "ALG_ADAPTIVE", "round_robin": "ALG_RR", "p2c": "ALG_P2C",
               "least_connections": "ALG_LC"}
    assert {n: algos[pxi_alg[n]] for n in balancer_core.ALGORITHM_CODES} == balancer_core.ALGORITHM_CODES


def test_backend_state_enum_matches_core() -> None:
    assert {s.name.lower(): s.value for s in BackendState} == balancer_core.BACKEND_STATES
    assert (HEALTHY, EJECTED, PROBING) == (BackendState.HEALTHY, BackendState.EJECTED, BackendState.PROBING)
    assert {v: k for k, v in balancer_core.BACKEND_STATES.items()} == STATE_NAMES
    # A new Backend starts in the core's HEALTHY, which the Python side calls healthy.
    assert STATE_NAMES[Backend(BackendService(service_id="x"), 0).state] == "healthy"


def test_algorithm_code_enum_matches_core() -> None:
    assert {c.name.lower(): c.value for c in AlgorithmCode} == balancer_core.ALGORITHM_CODES
    coded = {name: f for name, f in ALGORITHMS.items() if hasattr(f, "native_code")}
    assert {name: f.native_code for name, f in coded.items()} == {
        n: c for n, c in balancer_core.ALGORITHM_CODES.items() if n != "python"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [n for n in balancer_core.ALGORITHM_CODES if n != "python"])
def test_native_code_selects_like_its_python_class(name: str) -> None:
    """``native_select(code)`` and the class's Python ``select`` pick the same backends from the same state."""
    picks = []
    for compiled in (True, False):
        algo = ALGORITHMS[name](rng=random.Random(7)) if name in ("p2c", "adaptive") else ALGORITHMS[name]()
        cands = [Backend(BackendService(service_id=f"b{i}", weight=1.0 + i % 3, max_connections=3), i)
                 for i in range(5)]
        seq = []
        for _ in range(12):
            if compiled:
                b = balancer_core.native_select(algo.native_code, algo.state, cands)  # type: ignore[attr-defined]
            else:
                b = algo.select(cands, None, None)  # type: ignore[arg-type]
            seq.append(None if b is None else b.sid)
            if b is not None:
                b.in_flight += 1
                b.load += 1.0
        picks.append(seq)
    assert picks[0] == picks[1]
    assert any(s is not None for s in picks[0])


def test_core_gets_callables_not_the_balancer() -> None:
    """The written contract: the core holds the shell's callables and shared containers, never the shell."""
    clock = FakeClock()
    lb = DynamicLoadBalancer(clock=clock)
    core = lb._c
    assert not hasattr(core, "shell")
    assert core.clock is clock
    assert core.waiters is lb._waiters
    for cb in (core.select_slow, core.record_slow, core.no_backend, core.wake):
        assert callable(cb)
    with pytest.raises(AttributeError):
        core.wake = lambda: None  # type: ignore[misc]


@pytest.mark.parametrize("reference", [False, True])
def test_selection_path_is_a_strategy_chosen_at_construction(reference: bool) -> None:
    """No per-instance method swapping: both modes bind the same two names to the chosen strategy's methods."""
    assert "select_backend_sync" not in vars(DynamicLoadBalancer)
    assert "record_result" not in vars(DynamicLoadBalancer)
    lb = DynamicLoadBalancer(algorithm="round_robin", reference=reference)
    assert isinstance(lb._path, balancer_core.Core) is not reference
    assert lb.select_backend_sync == lb._path.select
    assert lb.record_result == lb._path.record
    lb.register_service(BackendService(service_id="a"))
    s = lb.select_backend_sync()
    lb.record_result(s.service_id, 0.01, True)
    assert lb.analytics()["backends"]["a"]["requests"] == 1


def test_native_keyword_is_gone() -> None:
    with pytest.raises(TypeError):
        DynamicLoadBalancer(native=False)  # type: ignore[call-arg]
