"""Detection on real faults, as a pytest-benchmark group (issue 7's targets; the script is
``benches/fault_injection.py``).

Run:  python -m pytest benches/test_detection.py --benchmark-only --benchmark-json=/tmp/det.json   (~4 min)

Real child processes make real bottlenecks (CPU burners beside a starved agent, a growing heap, writes with
fsync, a ping-pong storm), profiled at 1 Hz, 5 seeds. The group records, for ``benches/report.py``, per fault
kind the trials, detections, recall and time to detect, and the targets (precision, recall, within 3 s) with
MET / NOT MET; the wall time of the run is not a figure. Skipped in smoke mode: the test suite runs a smaller
version of it (``tests/profiler/test_fault_injection.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_injection


@pytest.mark.timeout(3600)   # 5 seeds x 4 scenarios of real processes: minutes
@pytest.mark.benchmark(group="profiler: fault injection")
def test_fault_injection(benchmark: Any, smoke: bool) -> None:
    if smoke:
        pytest.skip("smoke run: tests/profiler/test_fault_injection.py runs a smaller version")
    out: dict[str, Any] = {}
    benchmark.pedantic(lambda: out.update(fault_injection.evaluate(range(5))), rounds=1, iterations=1)
    benchmark.extra_info.update(timing=False, figures=[{
        "caption": f"5 seeds x {len(fault_injection.SCENARIOS)} scenarios at 1 Hz (host CPU PSI some avg60 at the "
                   f"end: {out['psi_cpu_avg60']:.0f} %); time to detect from the fault's onset, in seconds",
        "columns": ["fault", "trials", "detected", "recall", "median time to detect", "max", "within 3 s"],
        "rows": out["rows"]}], targets=fault_injection.targets(out))
