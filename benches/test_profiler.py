"""CPU cost of the profiler next to what a user would write instead (131 real ``sleep`` agents).

    python -m pytest benches/test_profiler.py --benchmark-only --benchmark-group-by=group

Every figure here is CPU time of the calling thread (``time.thread_time``), not wall time: the sampler runs at 1 Hz,
so CPU seconds per pass is its share of one core.

* ``profiler: sampling pass``  ``PerformanceProfiler.sample()`` with the budgeted USS/PSS slow path ("full") and
  without it ("fast"), next to the anchors: a psutil loop (``cpu_times`` + ``memory_info`` + ``io_counters`` per
  agent) and bare open/read/close of ``/proc/<pid>/stat`` per agent.
* ``profiler: profiles and detection``  ``agent_profiles()`` (per-agent figures plus the vectorised trend fits over
  300 passes in the ring) and ``detect_bottlenecks()`` on them, next to the anchor psutil loop of the first group:
  what detection costs, only when asked for, against one pass a user would write anyway.

Detection accuracy is not a timing: ``tests/profiler/test_synthetic_accuracy.py`` (synthetic, seeded) and
``python benches/fault_injection.py`` (real faulty processes) report precision and recall.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from sutazai_hwopt import PerformanceProfiler
from sutazai_hwopt.profiler import detect_bottlenecks

CPU = {"timer": time.thread_time}


@pytest.fixture(scope="module")
def profilers(sleepers: dict[str, int]) -> Iterator[dict[str, PerformanceProfiler]]:
    full = PerformanceProfiler(agents=sleepers)
    fast = PerformanceProfiler(agents=sleepers, slow_budget_s=0.0)
    for p in (full, fast):
        p.sample()  # the first pass opens the held descriptors
    try:
        yield {"full": full, "fast": fast}
    finally:
        full.close()
        fast.close()


def _psutil_loop(pids: list[int]) -> Any:
    procs = [psutil.Process(p) for p in pids]

    def run() -> None:
        for p in procs:
            p.cpu_times()
            p.memory_info()
            p.io_counters()

    return run


def _raw_stat(pids: list[int]) -> Any:
    paths = [f"/proc/{p}/stat" for p in pids]

    def run() -> None:
        for path in paths:
            with open(path, "rb") as fh:
                fh.read()

    return run


@pytest.mark.benchmark(group="profiler: sampling pass", **CPU)
@pytest.mark.parametrize("contender", ["hwopt full", "hwopt fast", "psutil loop", "raw /proc/<pid>/stat"])
def test_sampling_pass(benchmark: Any, run_rounds: Any, profilers: dict[str, PerformanceProfiler],
                       sleepers: dict[str, int], contender: str) -> None:
    pids = list(sleepers.values())
    fn = {"hwopt full": profilers["full"].sample, "hwopt fast": profilers["fast"].sample,
          "psutil loop": _psutil_loop(pids), "raw /proc/<pid>/stat": _raw_stat(pids)}[contender]
    benchmark.extra_info.update(role="ours" if contender.startswith("hwopt") else "anchor", agents=len(pids),
                                unit=f"CPU s of one pass over {len(pids)} agents (= share of one core at 1 Hz)")
    run_rounds(fn, rounds=30)


@pytest.fixture(scope="module")
def filled(sleepers: dict[str, int], smoke: bool) -> Iterator[PerformanceProfiler]:
    """A profiler with 300 passes (3 in smoke mode) in its ring, as after 5 minutes at 1 Hz."""
    prof = PerformanceProfiler(agents=sleepers, history=600)
    for _ in range(3 if smoke else 300):
        prof.sample()
    try:
        yield prof
    finally:
        prof.close()


@pytest.mark.benchmark(group="profiler: profiles and detection", **CPU)
@pytest.mark.parametrize("contender", ["agent_profiles()", "detect_bottlenecks()", "psutil loop"])
def test_profiles_and_detection(benchmark: Any, run_rounds: Any, filled: PerformanceProfiler,
                                sleepers: dict[str, int], contender: str) -> None:
    benchmark.extra_info.update(role="anchor" if contender == "psutil loop" else "ours", agents=len(sleepers),
                                unit=f"CPU s for {len(sleepers)} agents, 300 passes in the ring")
    if contender == "agent_profiles()":
        fn = filled.agent_profiles
    elif contender == "detect_bottlenecks()":
        system, profiles = filled.sample().system_metrics, filled.agent_profiles()

        def fn() -> Any:
            return detect_bottlenecks(system, profiles, filled.thresholds)
    else:
        fn = _psutil_loop(list(sleepers.values()))
    run_rounds(fn, rounds=30)
