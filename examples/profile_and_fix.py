"""Find a real bottleneck and let the eliminator fix it, validated and reversible
(run: python examples/profile_and_fix.py).

Two CPU-burning "agents" compete with a high-priority one; the profiler samples /proc (PSI, schedstat), the
detector reports CPU contention, and the eliminator (recommend-only, then auto-fix in balanced mode) proposes
and applies a journaled change, measures before and after, and keeps it only if it helped.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time

from sutazai_hwopt import BottleneckEliminator, PerformanceProfiler, ResourcePoolCoordinator

BURN = "import time\nwhile True: sum(range(10000))"


def main() -> None:
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(3)]
    state = tempfile.TemporaryDirectory(prefix="hwopt-example-")   # the journal; removed at the end
    coordinator = ResourcePoolCoordinator(state_dir=state.name)
    try:
        for i, proc in enumerate(procs):
            coordinator.register_agent(f"agent_{i}", {"cpu_cores": 1, "priority": 9 if i == 0 else 2}, pid=proc.pid)
        profiler = PerformanceProfiler(coordinator=coordinator)
        for _ in range(4):
            profiler.sample()
            time.sleep(1.0)
        findings = profiler.detect_bottlenecks()
        for b in findings:
            print(f"found {b.type} ({b.severity}) agents={b.agents}: {b.message}")
        if not findings:
            print("no bottleneck detected on this host right now")
            return
        eliminator = BottleneckEliminator({"mode": "balanced", "auto_fix": True, "validation_window_s": 3.0},
                                          coordinator=coordinator, profiler=profiler)
        # the high-priority agent's finding if there is one, else any agent's, else the host's
        first = min(findings, key=lambda b: ("agent_0" not in b.agents, not b.agents))
        print(f"fixing: {first.type} of {list(first.agents) or 'the host'}")
        for action in eliminator.recommend(first.type, {"agents": list(first.agents)}):
            print(f"  candidate: {action.name} (risk {action.risk})")
        result = asyncio.run(eliminator.eliminate_bottleneck(first.type, {"agents": list(first.agents)}))
        print(f"elimination: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        for outcome in result.outcomes:
            print(f"  {outcome.action.name}: {outcome.decision} - {outcome.reason}")
    finally:
        restored = coordinator.rollback()
        print(f"rolled back {len(restored)} kernel settings; stopped the stand-in agents")
        coordinator.close()
        for proc in procs:
            proc.kill()
            proc.wait()
        state.cleanup()


if __name__ == "__main__":
    main()
