"""CPU cost of the profiler's 1 Hz sampler over 131 agent processes, next to what a user would write instead.

Run:  python benches/bench_profiler.py            (30 passes of each, one per second, interleaved: ~35 s)
      python benches/bench_profiler.py --quick    (10 passes, 0.2 s apart)

Starts 131 real ``sleep`` children as the agents, then, each period, runs one pass of every contender in a
rotating order and records its CPU time (``time.thread_time``: user + kernel time of this thread):

* ``hwopt full``   PerformanceProfiler.sample(): host (/proc/stat, meminfo, PSI, loadavg, diskstats, net/dev,
  statvfs) + per agent stat, schedstat, io, status, children, plus the budgeted USS/PSS slow path
* ``hwopt fast``   the same with the slow path off (slow_budget_s=0)
* ``psutil loop``  psutil.Process cpu_times() + memory_info() + io_counters() for each agent (the anchor)
* ``raw stat``     open/read/close of /proc/<pid>/stat for each agent (the anchor "raw reads")

Prints the median CPU ms per pass, the share of one core at 1 Hz (ms per pass / 1000 ms) and the ratio to
the psutil loop. Target of issue 7: hwopt full <= 0.3% of one core.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable

import psutil

from sutazai_hwopt import PerformanceProfiler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=131)
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.passes, args.interval = 10, 0.2
    procs = [subprocess.Popen(["sleep", "100000"]) for _ in range(args.agents)]
    try:
        pids = {f"agent_{i:03d}": p.pid for i, p in enumerate(procs)}
        full = PerformanceProfiler(agents=pids)
        fast = PerformanceProfiler(agents=pids, slow_budget_s=0.0)
        ps = [psutil.Process(p) for p in pids.values()]

        def psutil_loop() -> None:
            for p in ps:
                p.cpu_times()
                p.memory_info()
                p.io_counters()

        def raw_stat() -> None:
            for pid in pids.values():
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    fh.read()

        contenders: dict[str, Callable[[], object]] = {
            "hwopt full": full.sample, "hwopt fast": fast.sample, "psutil loop": psutil_loop, "raw stat": raw_stat}
        for fn in contenders.values():  # warm-up (first pass opens descriptors)
            fn()
        cost: dict[str, list[float]] = {k: [] for k in contenders}
        names = list(contenders)
        for i in range(args.passes):
            t_next = time.monotonic() + args.interval
            for k in names[i % len(names):] + names[: i % len(names)]:
                c0 = time.thread_time()
                contenders[k]()
                cost[k].append(time.thread_time() - c0)
            time.sleep(max(0.0, t_next - time.monotonic()))
        base = statistics.median(cost["psutil loop"])
        print(f"{args.agents} agent processes, {args.passes} passes each, {args.interval:g} s apart, interleaved")
        print(f"{'sampler':<12} {'median ms/pass':>15} {'% of one core @1Hz':>19} {'x psutil':>9}")
        for k, v in cost.items():
            med = statistics.median(v)
            print(f"{k:<12} {med * 1e3:>15.3f} {med * 100:>19.3f} {med / base:>9.2f}")
        print(f"slow path (USS/PSS, fds, cgroup) CPU share of 'hwopt full': "
              f"{full.slow_path_cpu_seconds / max(full.cpu_seconds, 1e-12) * 100:.0f}%")
        full.close()
        fast.close()
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
