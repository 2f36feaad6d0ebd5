"""Place agent processes on this host's CPUs and undo it (run: python examples/placement.py).

Starts four `sleep` processes as stand-in agents, gives them cores by priority through the kernel
(sched_setaffinity, nice, scheduler policy, I/O priority), shows what the kernel now holds, then rolls back.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from sutazai_hwopt import HardwareOptimizationMaster


def main() -> None:
    agents = [subprocess.Popen(["sleep", "60"]) for _ in range(4)]
    state = tempfile.TemporaryDirectory(prefix="hwopt-example-")   # the journal; removed at the end
    optimizer = HardwareOptimizationMaster(mode="balanced", state_dir=state.name)
    try:
        for i, proc in enumerate(agents):
            cpus = optimizer.assign_cores(agent_id=f"agent_{i:03d}", num_cores=1, priority=9 - 3 * i, pid=proc.pid)
            print(f"agent_{i:03d} (pid {proc.pid}, priority {9 - 3 * i}) -> cpus {cpus}")
        print(optimizer.coordinator.plan("priority").format())
        for proc in agents:
            print(f"pid {proc.pid}: affinity {sorted(os.sched_getaffinity(proc.pid))}, "
                  f"nice {os.getpriority(os.PRIO_PROCESS, proc.pid)}")
    finally:
        restored = optimizer.rollback()
        print(f"rolled back {len(restored)} kernel settings")
        optimizer.close()
        for proc in agents:
            proc.kill()
            proc.wait()
        state.cleanup()


if __name__ == "__main__":
    main()
