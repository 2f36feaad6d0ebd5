"""Planning and applying a placement for 131 real agent processes, next to what a user would do instead.

Run:  python benches/bench_placement.py            (131 ``sleep`` children, 15 rounds: ~30 s)
      python benches/bench_placement.py --quick    (5 rounds, no shell anchor)
      python benches/bench_placement.py --cgroups  (also: apply + rollback with v1 cgroup groups, as root)

Starts 131 ``sleep`` children, registers them with a ``ResourcePoolCoordinator`` (journal in a temporary
directory), and each round changes every agent's priority so that the next plan really changes values. Per round:

* ``plan``          coordinator.plan("priority"): allocation + scheduling settings + change list (no kernel call)
* ``apply``         coordinator.apply(plan): validate, pin each pid by start time, probe, read previous values,
                    journal the intent (one fsync), write affinity / nice / policy / ionice on every thread, commit
* ``rollback``      coordinator.rollback() of that transaction (reads the journal, restores, journals undos)

and the same value changes done the ways a user would otherwise (same values, same processes):

* ``raw os loop``   os.sched_setaffinity + os.setpriority + os.sched_setscheduler + psutil ionice per pid, no
                    journal, no checks (the floor: anchors quote 0.17 ms CPU for re-pinning 131 processes)
* ``psutil loop``   psutil.Process(pid).cpu_affinity / nice / ionice (+ os.sched_setscheduler)
* ``taskset+renice`` one ``taskset -p`` and one ``renice`` subprocess per agent (what an admin script does;
                    skipped with --quick)

With ``--cgroups`` a second coordinator (``use_cgroups=True``, groups under ``<mount>/hwopt_bench_<pid>``) adds
``apply+cgroups`` / ``rollback+cgroups``: each agent also gets its own v1 cpu and cpuset group.

Prints medians of wall ms and CPU ms (this thread's user+system time) per operation and the ratio to the raw loop.
Also prints the planning time for a synthetic 2-socket, 64-core, SMT-2 host (no kernel calls).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import psutil

from sutazai_hwopt.config import HardwareConfig
from sutazai_hwopt.resources import AgentDemand, ResourcePoolCoordinator, Topology
from sutazai_hwopt.resources.allocation import allocate

N_AGENTS = 131
IOCLASS = {"NONE": 0, "RT": 1, "BE": 2, "IDLE": 3}
POLICY = {"SCHED_OTHER": os.SCHED_OTHER, "SCHED_BATCH": os.SCHED_BATCH, "SCHED_IDLE": os.SCHED_IDLE}


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall ms, CPU ms of this thread, result)."""
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    return (time.perf_counter() - w0) * 1e3, (time.thread_time() - c0) * 1e3, out


def values_of(plan: object) -> dict[int, dict[str, object]]:
    """pid -> {knob: value} of a plan's changes (so the anchors write the same values)."""
    out: dict[int, dict[str, object]] = {}
    for ch in plan.changes:  # type: ignore[attr-defined]
        out.setdefault(ch.pid, {})[ch.knob] = ch.new
    return out


def raw_loop(vals: dict[int, dict[str, object]]) -> None:
    for pid, v in vals.items():
        os.sched_setaffinity(pid, v["affinity"])  # type: ignore[arg-type]
        os.setpriority(os.PRIO_PROCESS, pid, v["nice"])  # type: ignore[arg-type]
        pol = v["sched_policy"]
        os.sched_setscheduler(pid, POLICY[pol["policy"]], os.sched_param(0))  # type: ignore[index]
        io = v["ionice"]
        psutil._psplatform.cext.proc_ioprio_set(pid, IOCLASS[io["class"]], io["value"])  # type: ignore[attr-defined,index]


def psutil_loop(vals: dict[int, dict[str, object]]) -> None:
    for pid, v in vals.items():
        p = psutil.Process(pid)
        p.cpu_affinity(list(v["affinity"]))  # type: ignore[call-overload]
        p.nice(v["nice"])  # type: ignore[arg-type]
        os.sched_setscheduler(pid, POLICY[v["sched_policy"]["policy"]], os.sched_param(0))  # type: ignore[index]
        io = v["ionice"]
        p.ionice(IOCLASS[io["class"]], io["value"] if io["class"] in ("BE", "RT") else None)  # type: ignore[index]


def shell_loop(vals: dict[int, dict[str, object]]) -> None:
    for pid, v in vals.items():
        cpus = ",".join(map(str, v["affinity"]))  # type: ignore[call-overload]
        subprocess.run(["taskset", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["renice", "-n", str(v["nice"]), "-p", str(pid)], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds, no shell anchor")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--cgroups", action="store_true", help="also time placements with per-agent cgroups")
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 15)
    state = tempfile.mkdtemp(prefix="hwopt-placement-")
    children = [subprocess.Popen(["sleep", "3600"]) for _ in range(N_AGENTS)]
    res: dict[str, list[tuple[float, float]]] = {}
    try:
        coord = ResourcePoolCoordinator(HardwareConfig(), state_dir=state)
        for i, p in enumerate(children):
            coord.register_agent(f"agent_{i:03d}", {"cpu_cores": 2, "priority": i % 11, "memory_mb": 256},
                                 pid=p.pid)
        changes_per_plan = []
        for r in range(rounds):
            for i in range(N_AGENTS):
                coord.update_requirements(f"agent_{i:03d}", {"cpu_cores": 2, "priority": (i + r + 1) % 11,
                                                             "memory_mb": 256})
            w, c, plan = timed(lambda: coord.plan("priority"))
            res.setdefault("plan", []).append((w, c))
            w, c, plan = timed(lambda plan=plan: coord.apply(plan))
            res.setdefault("apply", []).append((w, c))
            changes_per_plan.append(sum(1 for x in plan.results if x.status == "applied"))  # type: ignore[attr-defined]
            vals = values_of(plan)
            w, c, _ = timed(lambda: coord.rollback())
            res.setdefault("rollback", []).append((w, c))
            # Anchors: the same values, then back to the originals with the same method.
            originals = {pid: {"affinity": sorted(os.sched_getaffinity(pid)), "nice": 0,
                               "sched_policy": {"policy": "SCHED_OTHER"}, "ionice": {"class": "NONE", "value": 0}}
                         for pid in vals}
            contenders = [("raw os loop", raw_loop), ("psutil loop", psutil_loop)]
            if not args.quick and r < 3:
                contenders.append(("taskset+renice", shell_loop))
            for name, fn in contenders:
                w, c, _ = timed(lambda fn=fn, vals=vals: fn(vals))
                res.setdefault(name, []).append((w, c))
                raw_loop(originals)
        if args.cgroups:
            cg = ResourcePoolCoordinator(HardwareConfig(use_cgroups=True, cgroup_name=f"hwopt_bench_{os.getpid()}"),
                                         state_dir=state)
            for i, p in enumerate(children):
                cg.register_agent(f"agent_{i:03d}", {"cpu_cores": 2, "priority": i % 11}, pid=p.pid)
            for _ in range(min(rounds, 5)):
                w, c, plan = timed(lambda: cg.apply(cg.plan("priority")))
                res.setdefault("apply+cgroups", []).append((w, c))
                w, c, _ = timed(lambda: cg.rollback())
                res.setdefault("rollback+cgroups", []).append((w, c))
            print(f"with cgroups: {len(plan.changes)} changes per plan "  # type: ignore[attr-defined]
                  f"({plan.knob_status()})")  # type: ignore[attr-defined]
        # Planning alone on a big synthetic host.
        big = Topology.synthetic(nodes=2, cores_per_node=32, threads_per_core=2)
        demands = [AgentDemand(f"a{i}", i % 11, 2.0, 256, i) for i in range(N_AGENTS)]
        for _ in range(rounds):
            w, c, _ = timed(lambda: allocate(big, demands, HardwareConfig()))
            res.setdefault("allocate (2x32x2 synthetic)", []).append((w, c))
    finally:
        for p in children:
            p.kill()
        for p in children:
            p.wait()
        shutil.rmtree(state, ignore_errors=True)

    base_w = statistics.median(w for w, _ in res["raw os loop"])
    base_c = statistics.median(c for _, c in res["raw os loop"])
    print(f"{N_AGENTS} agents, {os.cpu_count()} CPUs, {rounds} rounds; applied changes per plan: median "
          f"{statistics.median(changes_per_plan):.0f} (affinity, nice, policy, ionice per agent, unchanged ones "
          "skipped)")
    print(f"{'operation':<30} {'wall ms':>9} {'CPU ms':>9} {'wall x raw':>11} {'CPU x raw':>10}")
    for name, xs in res.items():
        w = statistics.median(x for x, _ in xs)
        c = statistics.median(y for _, y in xs)
        print(f"{name:<30} {w:>9.2f} {c:>9.2f} {w / base_w:>11.2f} {c / base_c:>10.2f}")
    print("plan + apply for 131 agents (wall ms, median): "
          f"{statistics.median(a[0] + b[0] for a, b in zip(res['plan'], res['apply'])):.1f}")


if __name__ == "__main__":
    main()
