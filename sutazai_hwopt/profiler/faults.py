"""Fault injection: real child processes that behave like agents and create one bottleneck on demand.

Used by the tests and ``benches/fault_injection.py`` to measure detection on this host, and usable by
operators to check the profiler's thresholds on theirs. Each :class:`FaultAgent` is a Python child in its own
session (so the whole group, with any children it forked, is killed by id), which starts idle, reports
"ready", and begins its fault when :meth:`FaultAgent.start` is called. Parameters come from a seeded
``random.Random`` so a suite is reproducible.

Kinds and the finding each should cause: ``cpu`` (the agent plus forked spinners, more than the cores:
``high_cpu_usage``), ``memory`` (touches a steadily growing heap: ``memory_leak``), ``io`` (writes and
fsyncs an unlinked file: ``io_thrashing``), ``ctx`` (pipe ping-pong with a forked child:
``context_switch_storm``), ``starved`` (a spinner at nice 19 meant to run beside a ``cpu`` agent:
``cpu_starvation``), and ``idle``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, StateError

__all__ = ["CONSISTENT", "EXPECTED", "FaultAgent", "TrialResult", "run_trial"]

#: fault kind -> the bottleneck type the profiler should report for that agent.
EXPECTED: dict[str, str | None] = {"cpu": "high_cpu_usage", "memory": "memory_leak", "io": "io_thrashing",
                                   "ctx": "context_switch_storm", "starved": "cpu_starvation", "idle": None}
#: fault kind -> other findings that are true of such an agent too: a ping-pong storm burns CPU (it may be named
#: a consumer while the host is saturated); a burner with more spinners than cores waits on its run queue; a
#: starved agent is itself a spinner, so whenever the scheduler does give it a CPU it is one of the consumers; an
#: I/O thrasher on a small disk stalls the host's I/O, and as its top reader/writer it is named in that finding.
CONSISTENT: dict[str, frozenset[str]] = {"ctx": frozenset({"high_cpu_usage"}), "cpu": frozenset({"cpu_starvation"}),
                                         "starved": frozenset({"high_cpu_usage"}), "io": frozenset({"io_saturation"})}

_SCRIPT = r'''
import json, os, sys, time
kind, p = sys.argv[1], json.loads(sys.argv[2])
if kind == "starved":  # low priority from the start; the fault is the contention that begins at the onset
    try:  # with sched_autogroup, nice only ranks tasks of one session: lower the whole group as well
        with open("/proc/self/autogroup", "w") as fh:
            fh.write("19")
    except OSError:
        pass
    os.nice(19)
sys.stdout.write("r"); sys.stdout.flush()
if sys.stdin.read(1) != "g":
    sys.exit(0)
def spin():
    while True:
        pass
if kind == "idle":
    sys.stdin.read()
elif kind == "cpu":
    for _ in range(p["procs"] - 1):
        if os.fork() == 0:
            spin()
    spin()
elif kind == "starved":
    spin()
elif kind == "memory":
    held, page = [], os.sysconf("SC_PAGE_SIZE")
    while len(held) * p["step_mb"] < p["max_mb"]:
        b = bytearray(p["step_mb"] << 20)
        for i in range(0, len(b), page):
            b[i] = 1
        held.append(b)
        time.sleep(p["period_s"])
    sys.stdin.read()
elif kind == "io":
    fd = os.open(p["dir"], os.O_TMPFILE | os.O_WRONLY, 0o600)
    block = os.urandom(1 << 20)
    written, t0 = 0, time.monotonic()
    while written < (p["max_mb"] << 20):
        os.write(fd, block)
        written += len(block)
        if written % (p["sync_mb"] << 20) == 0:
            os.fsync(fd)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, 0)
        ahead = written / (p["rate_mb"] << 20) - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    sys.stdin.read()
elif kind == "ctx":
    r1, w1 = os.pipe(); r2, w2 = os.pipe()
    if os.fork() == 0:
        while os.read(r1, 1):
            os.write(w2, b"x")
        os._exit(0)
    while True:
        for _ in range(p["burst"]):
            os.write(w1, b"x"); os.read(r2, 1)
        time.sleep(p["pause_s"])
'''


class FaultAgent:
    """A child process acting as one agent; idle until :meth:`start`, then it runs its fault.

    Args:
        kind: one of :data:`EXPECTED`.
        seed: seeds the fault's parameters (rates and sizes vary a little between seeds).
        params: overrides of the defaults for this kind.
        workdir: directory for the ``io`` kind's (unlinked, never visible) file; default: the temp dir.

    Example:
        >>> with FaultAgent("idle") as agent:
        ...     agent.pid > 0
        True
    """

    def __init__(self, kind: str, *, seed: int = 0, params: dict[str, Any] | None = None,
                 workdir: str | None = None) -> None:
        if kind not in EXPECTED:
            raise InvalidArgumentError(f"kind must be one of {sorted(EXPECTED)}, got {kind!r}")
        import random

        rng = random.Random(f"{kind}:{seed}")
        ncpu = os.cpu_count() or 1
        defaults: dict[str, dict[str, Any]] = {
            "idle": {}, "starved": {},
            "cpu": {"procs": ncpu + 1 + rng.randint(0, 1)},
            "memory": {"step_mb": rng.choice((4, 6, 8)), "period_s": rng.uniform(0.1, 0.2), "max_mb": 320},
            "io": {"rate_mb": rng.choice((32, 48, 64)), "sync_mb": 4, "max_mb": 2048,
                   "dir": workdir or tempfile.gettempdir()},
            "ctx": {"burst": rng.choice((50, 60, 70)), "pause_s": 0.003},
        }
        self.kind = kind
        self.expected = EXPECTED[kind]
        self.params = {**defaults[kind], **(params or {})}
        self.onset: float | None = None
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, kind, json.dumps(self.params)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, start_new_session=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 30.0)
        if not ready or self._proc.stdout.read(1) != b"r":
            self.stop()
            raise StateError(f"fault agent {kind!r} did not start")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def start(self) -> float:
        """Begin the fault now; returns the onset time (``time.monotonic``)."""
        if self.onset is not None:
            raise StateError("fault already started")
        assert self._proc.stdin is not None
        self.onset = time.monotonic()
        self._proc.stdin.write(b"g")
        self._proc.stdin.flush()
        return self.onset

    def stop(self) -> None:
        """Kill the agent and every process it forked (its session), and reap it. Idempotent."""
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout):
            if f is not None:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # forked children die with the group; wait until none is left
            try:
                os.killpg(self._proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)

    def __enter__(self) -> FaultAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class TrialResult:
    """Detections of one trial: per fault agent the time to detect (None: missed), and every finding."""

    faults: dict[str, str]  # agent id -> expected bottleneck type
    time_to_detect: dict[str, float | None]
    true_positives: int = 0
    false_positives: int = 0
    secondary: int = 0  # findings listed in CONSISTENT for the agent's fault (true, but not the injected one)
    false_findings: list[tuple[float, str, str]] = field(default_factory=list)  # (t after onset, type, agent)
    secondary_findings: list[tuple[float, str, str]] = field(default_factory=list)

    @property
    def detected(self) -> int:
        return sum(1 for v in self.time_to_detect.values() if v is not None)


def run_trial(kinds: list[str], *, seed: int = 0, idle: int = 3, interval_s: float = 1.0,
              baseline_passes: int = 2, observe_passes: int = 5, stop_when_detected: bool = False,
              thresholds: Any = None, workdir: str | None = None) -> TrialResult:
    """Start ``idle`` idle agents and one agent per kind, profile them, inject every fault at once.

    Each pass after the onset, every finding that names one of these agents counts: a true positive when it
    names a fault agent with that fault's expected type, *secondary* when the type is in :data:`CONSISTENT`
    for that fault, else a false positive (so are findings during the baseline passes). Findings naming no
    agent (host-wide saturation caused by other work) are not counted.
    Time to detect is from the onset to the pass that first reports the expected (type, agent).
    """
    from .profiler import PerformanceProfiler

    agents: dict[str, FaultAgent] = {}
    try:
        for i in range(idle):
            agents[f"idle_{i}"] = FaultAgent("idle", seed=seed)
        for j, kind in enumerate(kinds):
            agents[f"{kind}_{j}"] = FaultAgent(kind, seed=seed, workdir=workdir)
        faults = {a: f.expected for a, f in agents.items() if f.expected is not None}
        also = {a: CONSISTENT.get(f.kind, frozenset()) for a, f in agents.items()}
        res = TrialResult(faults={a: str(t) for a, t in faults.items()},
                          time_to_detect=dict.fromkeys(faults))
        with PerformanceProfiler(agents={a: f.pid for a, f in agents.items()}, thresholds=thresholds) as prof:
            prof.sample()
            onset: float | None = None
            for i in range(baseline_passes + observe_passes):
                if i == baseline_passes:
                    onset = time.monotonic()
                    for f in agents.values():
                        if f.expected is not None:
                            f.start()
                time.sleep(interval_s)
                s = prof.sample()
                now = time.monotonic()
                for b in prof.detect_bottlenecks(s.system_metrics, s.agent_profiles):
                    for a in b.agents:
                        if a not in agents:
                            continue
                        if onset is not None and faults.get(a) == b.type:
                            res.true_positives += 1
                            if res.time_to_detect[a] is None:
                                res.time_to_detect[a] = now - onset
                        elif onset is not None and b.type in also[a]:
                            res.secondary += 1
                            res.secondary_findings.append((now - onset, b.type, a))
                        else:
                            res.false_positives += 1
                            res.false_findings.append((now - onset if onset else -1.0, b.type, a))
                if stop_when_detected and onset is not None and res.detected == len(faults):
                    break
        return res
    finally:
        for f in agents.values():
            f.stop()
