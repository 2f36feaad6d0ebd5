"""The load-balancing arena (``benches/lb_arena.py``) as a pytest-benchmark group: issue 16's targets, seeds 1-4.

Run:  python -m pytest benches/test_arena.py --benchmark-only --benchmark-json=/tmp/arena.json   (~10 min)

The arena runs in simulated time, so its figures do not depend on the machine; the wall time of the run is not a
figure (``timing`` is false). Recorded for ``benches/report.py``: per cell, p99 over the oracle's p99 for each seed
of the default with one client's view (``adaptive``), with host-wide shared counts (``adaptive+shared``) and with
the backends' published load (``adaptive+published``); the 15 s outage cells' client-visible errors per client
with and without an active health check; and the targets with MET / NOT MET (a cell meets a p99 target when every
seed does). Skipped in smoke mode: ``tests/balancer`` tests the policies deterministically.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lb_arena

SEEDS = (1, 2, 3, 4)
CELLS = [(w, load) for w in ("single", "mixed") for load in (0.7, 0.9)]
POLICIES = ("adaptive", "adaptive+shared", "adaptive+published")
LIMITS = {"adaptive+shared": 1.15, "adaptive+published": 1.05}
CLIENTS, DURATION = 8, 30.0


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def run_arena() -> dict[str, Any]:
    """Every cell and seed: p99 ratios to the oracle, outage errors per client, and the judged targets."""
    ratios: dict[tuple[str, float, str], list[float]] = {}
    for workload, load in CELLS:
        for seed in SEEDS:
            oracle = lb_arena.run_cell("oracle", load, workload, CLIENTS, DURATION, seed)["p99"]
            for algo in POLICIES:
                p99 = lb_arena.run_cell(algo, load, workload, CLIENTS, DURATION, seed)["p99"]
                ratios.setdefault((workload, load, algo), []).append(p99 / oracle)
    errors: dict[tuple[str, float, str, bool], list[float]] = {}
    for workload, load in CELLS:
        for seed in SEEDS:
            for algo in POLICIES[1:]:
                for hc in (False, True):
                    r = lb_arena.run_cell(algo, load, workload, CLIENTS, DURATION, seed, lb_arena.OUTAGE_WINDOW, hc)
                    errors.setdefault((workload, load, algo, hc), []).append(r["errors_per_client"])
    p99_rows = [[f"{w} {load:g}", *(" / ".join(f"{x:.2f}" for x in ratios[(w, load, a)]) for a in POLICIES)]
                for w, load in CELLS]
    err_rows = [[f"{w} {load:g}", a, "yes" if hc else "no", " / ".join(f"{x:.2f}" for x in errors[(w, load, a, hc)])]
                for w, load in CELLS for a in POLICIES[1:] for hc in (False, True)]
    targets = []
    for algo, limit in LIMITS.items():
        for w, load in CELLS:
            worst = max(ratios[(w, load, algo)])
            targets.append([f"{algo}: p99 <= {limit:.2f}x the oracle, {w} {load:g}", f"worst seed {worst:.2f}x",
                            _verdict(worst <= limit)])
    for hc, limit in ((False, 2.0), (True, 1.0)):
        worst = max(max(v) for (_, _, _, h), v in errors.items() if h == hc)
        targets.append([f"errors per client for one 15 s failure, {'with' if hc else 'no'} active check: "
                        f"<= {limit:g}", f"worst {worst:.2f}", _verdict(worst <= limit)])
    return {"p99_rows": p99_rows, "err_rows": err_rows, "targets": targets}


@pytest.mark.timeout(7200)   # 128 simulated runs: minutes, where the suite's limit of 300 s is for tests
@pytest.mark.benchmark(group="balancer: arena, published load")
def test_arena(benchmark: Any, smoke: bool) -> None:
    if smoke:
        pytest.skip("smoke run: tests/balancer tests the policies deterministically")
    out: dict[str, Any] = {}
    benchmark.pedantic(lambda: out.update(run_arena()), rounds=1, iterations=1)
    seeds = " / ".join(map(str, SEEDS))
    benchmark.extra_info.update(timing=False, figures=[
        {"caption": f"p99 over the oracle's p99 (seeds {seeds}; 16 backends, {CLIENTS} client processes, "
                    f"{DURATION:g} s simulated with slowdowns and a failing backend)",
         "columns": ["cell", *POLICIES], "rows": out["p99_rows"]},
        {"caption": f"Client-visible errors per client for one 15 s failure of one backend (seeds {seeds})",
         "columns": ["cell", "policy", "active check", "errors per client"], "rows": out["err_rows"]}],
        targets=out["targets"])
