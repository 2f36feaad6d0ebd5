"""The reference workload: N agents on one host, three setups, two workload shapes, one report.

    python -m examples.agent_fleet --out fleet-report            # 131 agents, all setups, both shapes
    python -m examples.agent_fleet --quick --out /tmp/fleet       # 16 agents, short phases (about a minute on 2 cores)

The harness starts each setup's agents (in batches), a load generator process, runs the phases, reads PSS and CPU
time from /proc, stops everything and writes ``report.json`` and ``report.html`` to ``--out``. See
docs/results.md for what each setup and figure is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import measure
from .agent import die_with_parent
from .work import (
    FLUSH,
    PING,
    RECONFIGURE,
    REQUEST,
    RESPONSE,
    SETUPS,
    SHAPES,
    STATS,
    Shape,
    distinct_keys,
    make_stream,
    make_weights,
    salt_of,
)

ROOT = Path(__file__).resolve().parents[2]
#: the tag every process of the harness carries in its command line (the tests look for it in /proc)
TAG = "examples.agent_fleet"
#: environment of agents and load generator: one BLAS thread each (131 processes on 2 cores), same for all setups
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1"}
#: share of the distinct prompts the constrained cache is sized to hold
CONSTRAINED_SHARE = 0.05
#: bytes an entry is assumed to take besides its value, to turn "5% of the distinct prompts" into a byte budget
ENTRY_OVERHEAD = 256


@dataclass(frozen=True)
class Plan:
    """Durations of the phases (seconds)."""

    warmup: float
    fixed: float
    ramp_step: float
    ramp_max_steps: int
    #: geometric bisection steps after the doubling: the rate's resolution is 2**(1 / 2**n) - 1 (3: ~9%)
    bisect_steps: int
    constrained: float
    prewarm: float
    batch: int
    drain: float
    verify: int

    @staticmethod
    def of(quick: bool) -> Plan:
        if quick:
            return Plan(warmup=0.5, fixed=1.0, ramp_step=0.5, ramp_max_steps=5, bisect_steps=2, constrained=1.0,
                        prewarm=0.5, batch=16, drain=10.0, verify=40)
        return Plan(warmup=10.0, fixed=20.0, ramp_step=4.0, ramp_max_steps=7, bisect_steps=3, constrained=15.0,
                    prewarm=6.0, batch=16, drain=45.0, verify=200)


#: shared-cache budget of the normal runs, per shape: L2 size, redis maxmemory, naive's total (split per agent)
BUDGET = {"heavy": 128 << 20, "light": 32 << 20}


class Interrupted(Exception):
    """The load generator died during a phase (on purpose or not)."""


@dataclass
class Events:
    """Deliberate kills (``--kill-agent-at`` / ``--kill-loadgen-at``), timestamped on the harness clock."""

    items: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **event: Any) -> None:
        with self.lock:
            self.items.append({**event, "t": time.monotonic()})

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        with self.lock:
            return [{k: v for k, v in e.items() if k != "t"} for e in self.items if t0 <= e["t"] <= t1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 10.0) -> bool:
    """One PING over a fresh connection: the agent answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(REQUEST.pack(PING, 0, 0))
            data = b""
            while len(data) < RESPONSE.size:
                chunk = s.recv(RESPONSE.size - len(data))
                if not chunk:
                    return False
                data += chunk
            return RESPONSE.unpack(data)[0] == 0
    except OSError:
        return False


class Fleet:
    """One setup's processes for one shape: agents, redis-server (savvy), the pool (library), the load generator."""

    def __init__(self, h: Harness, setup: str, shape: Shape, npy: Path) -> None:
        self.h, self.setup, self.shape, self.npy = h, setup, shape, npy
        self.agents: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []
        self.weights_at: list[tuple[int, int]] = []
        self.redis: subprocess.Popen[str] | None = None
        self.redis_port = 0
        self.redis_client: Any = None
        self.loadgen: subprocess.Popen[str] | None = None
        self.pool_ns = self.cache_ns = self.cache_ns2 = ""
        self.block = ""
        self.budget = BUDGET[shape.name]
        self.killed: set[int] = set()

    # ---- start -------------------------------------------------------------------------------------------------
    def start(self) -> float:
        """Start everything; return the seconds until every agent answered a ping."""
        t0 = time.monotonic()
        if self.setup == "savvy":
            self._start_redis()
        if self.setup == "library":
            self._put_weights()
        n = self.h.args.agents
        for first in range(0, n, self.h.plan.batch):
            batch = [self._spawn(i) for i in range(first, min(n, first + self.h.plan.batch))]
            self._wait_ready(batch)
        if not all(ping(p) for p in self.ports):
            raise RuntimeError(f"{self.setup}: an agent did not answer")
        return time.monotonic() - t0

    def _start_redis(self) -> None:
        import redis

        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory", str(self.budget), "--maxmemory-policy", "allkeys-lru",
             "--dir", str(self.h.tmp), "--maxclients", "10000", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=self.h.log("redis"), preexec_fn=die_with_parent)
        self.h.procs.append(self.redis)
        self.redis_client = redis.Redis(host="127.0.0.1", port=self.redis_port)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.redis_client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.redis.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        self._redis_budget(self.budget)

    def _redis_budget(self, budget: int) -> None:
        """maxmemory = the budget plus the server's own footprint when empty (clients connected), so the data
        gets the same bytes as the library's L2."""
        self.redis_client.flushall()
        self.redis_client.config_set("maxmemory", str(1 << 40))
        base = int(self.redis_client.info("memory")["used_memory"])
        self.redis_client.config_set("maxmemory", str(budget + base))

    def _put_weights(self) -> None:
        from sutazai_hwopt import MemoryPoolManager

        self.pool_ns = self.h.namespace("fleet")
        self.cache_ns = self.h.namespace("fleetc")
        self.cache_ns2 = self.h.namespace("fleetk")
        weights = np.load(self.npy, mmap_mode="r")
        with MemoryPoolManager(namespace=self.pool_ns) as pools:     # closed: the harness keeps no mapping
            pools.create_pool("weights", size=weights.nbytes + (4 << 20))
            self.block = pools.put_array("loader", np.ascontiguousarray(weights), pool_id="weights")
            for i in range(self.h.args.agents):
                pools.share_memory("loader", f"agent_{i:03d}", self.block)
        del weights

    def _spawn(self, i: int) -> subprocess.Popen[str]:
        a = self.h.args
        cmd = [sys.executable, "-m", f"{TAG}.agent", "--setup", self.setup, "--shape", self.shape.name,
               "--index", str(i), "--agents", str(a.agents), "--seed", str(a.seed), "--npy", str(self.npy),
               "--budget", str(self.budget), "--redis-port", str(self.redis_port), "--pool-ns", self.pool_ns,
               "--block", self.block, "--cache-ns", self.cache_ns, "--cache-ns2", self.cache_ns2]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.h.log("agents"), text=True,
                                env=self.h.env, cwd=ROOT)
        self.h.procs.append(proc)
        self.agents.append(proc)
        return proc

    def _wait_ready(self, batch: list[subprocess.Popen[str]]) -> None:
        deadline = time.monotonic() + 180
        for proc in batch:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"{self.setup}: agent pid {proc.pid} not ready in time")
            line = proc.stdout.readline().split()
            if not line or line[0] != "READY":
                raise RuntimeError(f"{self.setup}: agent pid {proc.pid} failed to start (see its log)")
            self.ports.append(int(line[1]))
            self.weights_at.append((int(line[2]), int(line[3])))

    # ---- load generator ----------------------------------------------------------------------------------------
    def start_loadgen(self) -> None:
        alive = [p for i, p in enumerate(self.ports) if i not in self.killed]
        cmd = [sys.executable, "-m", f"{TAG}.loadgen", "--setup", self.setup, "--shape", self.shape.name,
               "--seed", str(self.h.args.seed), "--npy", str(self.npy), "--ports", ",".join(map(str, alive))]
        self.loadgen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.h.log("loadgen"), text=True, env=self.h.env, cwd=ROOT)
        self.h.procs.append(self.loadgen)
        self._read(60.0)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.loadgen is not None and self.loadgen.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.loadgen.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self.loadgen.stdout.readline() if ready else ""
        if not line:
            self.loadgen.kill()
            self.loadgen.wait()
            raise Interrupted("load generator killed" if ready else "load generator timed out")
        return dict(json.loads(line))

    def command(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one command to the load generator; restart it if it died (the caller marks the interruption)."""
        if self.loadgen is None or self.loadgen.poll() is not None:
            self.start_loadgen()
        assert self.loadgen is not None and self.loadgen.stdin is not None
        try:
            self.loadgen.stdin.write(json.dumps(cmd) + "\n")
            self.loadgen.stdin.flush()
        except (BrokenPipeError, OSError):
            self.loadgen.wait()
            raise Interrupted("load generator killed") from None
        return self._read(timeout)

    # ---- measurements ------------------------------------------------------------------------------------------
    def live_agents(self) -> list[tuple[int, subprocess.Popen[str]]]:
        return [(i, p) for i, p in enumerate(self.agents) if p.poll() is None]

    def pss(self) -> dict[str, int]:
        live = self.live_agents()
        weights = sum(measure.range_pss_bytes(p.pid, *self.weights_at[i]) for i, p in live)
        redis_pss = measure.pss_bytes(self.redis.pid) if self.redis else 0
        parts = {"total": 0, "anon": 0, "file": 0, "shmem": 0}
        for _, p in live:                       # one smaps_rollup read per agent
            for name, value in measure.pss_parts(p.pid).items():
                parts[name] += value
        return {"total": parts["total"] + redis_pss, "agents": parts["total"], "redis": redis_pss,
                "weights": weights, "agents_anon": parts["anon"], "agents_file": parts["file"],
                "agents_shmem": parts["shmem"], "agents_alive": len(live)}

    def cpu(self) -> dict[str, float]:
        agents = sum(measure.cpu_seconds(p.pid) for _, p in self.live_agents())
        redis_cpu = measure.cpu_seconds(self.redis.pid) if self.redis else 0.0
        return {"agents": agents, "redis": redis_cpu}

    def kill_one_agent(self) -> dict[str, Any] | None:
        live = self.live_agents()
        if len(live) < 2:
            return None
        i, proc = live[len(live) // 2]
        proc.kill()
        self.killed.add(i)
        return {"what": "agent", "index": i, "pid": proc.pid}

    # ---- stop --------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.loadgen is not None and self.loadgen.poll() is None:
            with contextlib.suppress(Exception):
                assert self.loadgen.stdin is not None
                self.loadgen.stdin.write('{"cmd": "quit"}\n')
                self.loadgen.stdin.flush()
        if self.redis_client is not None:
            with contextlib.suppress(Exception):
                self.redis_client.close()
        procs = [p for p in [self.loadgen, *self.agents, self.redis] if p is not None]
        _terminate(procs)
        for p in procs:
            for stream in (p.stdin, p.stdout):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
            with contextlib.suppress(ValueError):
                self.h.procs.remove(p)


def agent_costs(c: dict[str, int] | None) -> dict[str, float | None] | None:
    """Mean per-request costs inside the agents during the fixed-rate phase (µs), and the slow-get tail."""
    if not c or not c.get("requests"):
        return None
    misses = c["misses"] or 1
    return {"requests": c["requests"], "get_us": c["get_ns"] / c["requests"] / 1e3,
            "get_max_ms": c["get_max_ns"] / 1e6, "gets_over_1ms_share": c["gets_over_1ms"] / c["requests"],
            "compute_us_per_miss": c["compute_ns"] / misses / 1e3, "put_us": c["put_ns"] / misses / 1e3,
            "put_max_ms": c["put_max_ns"] / 1e6, "gc_us": c.get("gc_ns", 0) / c["requests"] / 1e3,
            "gc_full_per_1000": 1000.0 * c.get("gc_full", 0) / c["requests"]}


def _terminate(procs: list[subprocess.Popen[str]], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is still running after ``grace`` seconds; reap all."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(OSError):
                p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def byte_compile_sources() -> dict[str, bool]:
    """Byte-compile the library and this harness next to their sources, once, before any agent starts.

    Every setup's agents import numpy (and savvy's redis-py) from installed packages, whose bytecode pip wrote at
    install time; the library (an editable install or a source checkout) and the harness have none, and with
    ``PYTHONDONTWRITEBYTECODE`` set (as on the CI machines) every agent would compile them from source again:
    start-up CPU and a few MiB of private heap per agent that an installed wheel never costs. ``compileall``
    writes the ``__pycache__`` an install would (ignored by git); a directory that cannot be written is skipped.
    """
    import compileall

    import sutazai_hwopt

    done: dict[str, bool] = {}
    for path in (Path(sutazai_hwopt.__file__).parent, Path(__file__).parent):
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            done[str(path)] = bool(compileall.compile_dir(str(path), quiet=2))
    return done


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan.of(args.quick)
        self.procs: list[subprocess.Popen[str]] = []
        self.stack = contextlib.ExitStack()
        self.tmp = Path(tempfile.mkdtemp(prefix="agent_fleet-"))
        self.events = Events()
        self.logs: dict[str, Any] = {}
        self.env = {**os.environ, **ONE_THREAD,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.bytecode = byte_compile_sources()
        self.timers: list[threading.Timer] = []
        self.current: Fleet | None = None
        self.progress: Any = None
        self.task: Any = None
        #: rate of the constrained-cache phase: max(fixed rate, half the saturation of the first of savvy/library
        #: to run), the same for both, so the phase sees enough distinct prompts to fill a 1 MiB budget
        self.constrained_rate: float | None = None

    def log(self, name: str) -> Any:
        if name not in self.logs:
            self.logs[name] = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 (closed in close())
        return self.logs[name]

    def namespace(self, prefix: str) -> str:
        from sutazai_hwopt.testing import throwaway_namespace

        return self.stack.enter_context(throwaway_namespace(prefix))

    def close(self) -> None:
        """Every exit path: stop the timers and every process, unlink the segments, remove the temp dir."""
        for t in self.timers:
            t.cancel()
        _terminate([p for p in self.procs], grace=3.0)
        self.procs.clear()
        with contextlib.suppress(Exception):
            self.stack.close()
        for f in self.logs.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> list[str]:
        out: list[str] = []
        for name, f in self.logs.items():
            f.flush()
            with contextlib.suppress(OSError):
                out += [f"{name}: {x}" for x in (self.tmp / f"{name}.log").read_text().splitlines()[-lines:]]
        return out

    # ---- phases ------------------------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=text)

    def phase(self, fleet: Fleet, name: str, rate: float, duration: float, verify: int | None = None,
              salt: str | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        cmd = {"cmd": "phase", "name": name, "salt": salt_of(salt or name), "rate": rate, "duration": duration,
               "verify": self.plan.verify if verify is None else verify, "drain_s": self.plan.drain}
        try:
            out = fleet.command(cmd, timeout=duration + self.plan.drain + 120)
        except Interrupted as exc:
            out = {"name": name, "offered_rate": rate, "duration_s": duration, "interrupted": str(exc)}
        events = self.events.between(t0, time.monotonic())
        if events:
            out["interruptions"] = events
        return out

    def control(self, fleet: Fleet, kind: int, arg: int = 0) -> dict[str, Any]:
        try:
            return fleet.command({"cmd": "control", "kind": kind, "arg": arg}, timeout=180)
        except Interrupted as exc:
            return {"interrupted": str(exc)}

    def ramp(self, fleet: Fleet, start: float) -> dict[str, Any]:
        """Saturation: double the rate while p99 stays under the bound, then geometric bisection steps."""
        bound = fleet.shape.p99_bound_s
        steps: list[dict[str, Any]] = []

        def passes(rate: float) -> bool:
            out = self.phase(fleet, f"ramp {rate:.0f}/s", rate, self.plan.ramp_step, verify=10,
                             salt=f"ramp-{len(steps)}")
            ok = (out.get("p99_s") is not None and out["p99_s"] <= bound
                  and out["answered"] >= 0.97 * (out["scheduled"] - out["errors"]))
            out["passed"] = bool(ok)
            steps.append(out)
            self.step(f"{fleet.shape.name} / {fleet.setup}: ramp {rate:.0f}/s {'ok' if ok else 'over'}")
            return bool(ok)

        good, bad = 0.0, 0.0
        rate = start
        for _ in range(self.plan.ramp_max_steps):
            if passes(rate):
                good = rate
                if bad:
                    break
                rate *= 2
            else:
                bad = rate
                if good:
                    break
                rate /= 2
        for _ in range(self.plan.bisect_steps):
            if good and bad:
                mid = math.sqrt(good * bad)
                if passes(mid):
                    good = mid
                else:
                    bad = mid
        return {"saturation_rate": good or None, "p99_bound_s": bound, "steps": steps,
                "upper_failed_rate": bad or None}

    def arm_kills(self) -> None:
        """Arm the deliberate kills of this setup (seconds after its load generator started)."""
        fleet = self.current
        assert fleet is not None
        if self.args.kill_agent_at is not None:
            def kill_agent() -> None:
                event = fleet.kill_one_agent()
                if event:
                    self.events.add(**event, setup=fleet.setup, shape=fleet.shape.name)
            self.timers.append(threading.Timer(self.args.kill_agent_at, kill_agent))
            self.timers[-1].start()
        if self.args.kill_loadgen_at is not None:
            def kill_loadgen() -> None:
                if fleet.loadgen is not None and fleet.loadgen.poll() is None:
                    pid = fleet.loadgen.pid
                    fleet.loadgen.kill()
                    self.events.add(what="load generator", pid=pid, setup=fleet.setup, shape=fleet.shape.name)
            self.timers.append(threading.Timer(self.args.kill_loadgen_at, kill_loadgen))
            self.timers[-1].start()

    def run_setup(self, setup: str, shape: Shape, npy: Path, fixed_rate: float | None) -> dict[str, Any]:
        fleet = Fleet(self, setup, shape, npy)
        self.current = fleet
        result: dict[str, Any] = {"setup": setup}
        try:
            self.step(f"{shape.name} / {setup}: starting {self.args.agents} agents")
            result["startup_s"] = fleet.start()
            fleet.start_loadgen()
            self.arm_kills()
            plan = self.plan
            if setup == "naive":       # naive sets the fixed rate: ramp first, then flush and measure cold + warm
                self.step(f"{shape.name} / naive: prewarm")
                result["prewarm"] = self.phase(fleet, "prewarm", shape.first_rate, plan.prewarm)
                result["ramp"] = self.ramp(fleet, shape.first_rate)
                sat = result["ramp"]["saturation_rate"]
                fixed_rate = 0.7 * sat if sat else shape.default_fixed_rate
                self.control(fleet, FLUSH)
                result["warmup_note"] = "after the ramp, private caches flushed (weights already touched)"
            assert fixed_rate is not None
            result["fixed_rate"] = fixed_rate
            self.step(f"{shape.name} / {setup}: warm-up at {fixed_rate:.0f}/s")
            result["warmup"] = self.phase(fleet, "warmup", fixed_rate, plan.warmup)
            self.step(f"{shape.name} / {setup}: fixed rate {fixed_rate:.0f}/s")
            self.control(fleet, STATS)                      # resets the agents' cost counters
            cpu0 = fleet.cpu()
            result["fixed"] = self.phase(fleet, "fixed", fixed_rate, plan.fixed)
            cpu1 = fleet.cpu()
            result["agent_costs"] = agent_costs(self.control(fleet, STATS).get("costs"))
            cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
            answered = result["fixed"].get("answered", 0)
            result["cpu_fixed_s"] = cpu
            result["requests_per_cpu_s"] = (answered / max(1e-9, cpu["agents"] + cpu["redis"])
                                            if answered and not result["fixed"].get("interrupted") else None)
            result["pss"] = fleet.pss()
            if setup != "naive":
                result["ramp"] = self.ramp(fleet, fixed_rate)
                if self.constrained_rate is None:      # the first shared-cache setup fixes it for the shape
                    sat = result["ramp"]["saturation_rate"] or fixed_rate
                    self.constrained_rate = max(fixed_rate, 0.5 * sat)
                result["constrained"] = self.constrained(fleet, self.constrained_rate)
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["log_tail"] = self.log_tail()
        finally:
            for t in self.timers:
                t.cancel()
            self.timers.clear()
            self.step(f"{shape.name} / {setup}: stopping")
            fleet.stop()
            self.current = None
        result["killed_agents"] = sorted(fleet.killed)
        return result

    def constrained(self, fleet: Fleet, rate: float) -> dict[str, Any]:
        """Both shared caches get a budget holding ~5% of the distinct prompts of the phase's stream."""
        _, kinds, prompts = make_stream(self.args.seed, salt_of("constrained"), rate, self.plan.constrained)
        distinct = distinct_keys(kinds, prompts)
        entries = max(1, math.ceil(CONSTRAINED_SHARE * distinct))
        budget = max(1 << 20, entries * (fleet.shape.answer_bytes + ENTRY_OVERHEAD))
        if fleet.setup == "savvy":
            fleet._redis_budget(budget)
        self.control(fleet, RECONFIGURE, budget // 1024)
        self.step(f"{fleet.shape.name} / {fleet.setup}: constrained cache ({budget >> 10} KiB)")
        out = self.phase(fleet, "constrained", rate, self.plan.constrained)
        out.update(budget_bytes=budget, distinct_prompts=distinct,
                   budget_share_of_distinct=budget / (fleet.shape.answer_bytes + ENTRY_OVERHEAD) / distinct)
        return out

    def run(self) -> dict[str, Any]:
        a = self.args
        shapes = ["heavy", "light"] if a.shape == "both" else [a.shape]
        setups = [s for s in SETUPS if s in a.setups]
        started = time.monotonic()
        report: dict[str, Any] = {
            "command": " ".join([Path(sys.executable).name, "-m", TAG, *sys.argv[1:]]),
            "args": {"agents": a.agents, "quick": a.quick, "shape": a.shape, "setups": setups, "seed": a.seed,
                     "kill_agent_at": a.kill_agent_at, "kill_loadgen_at": a.kill_loadgen_at},
            "machine": measure.machine(), "plan": self.plan.__dict__, "budget_bytes": BUDGET,
            "bytecode_compiled": self.bytecode,
            "blas_threads_per_process": 1, "shapes": {},
        }
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        per_setup = 7 + self.plan.ramp_max_steps
        with Progress(TextColumn("{task.description:<60}"), BarColumn(), TimeElapsedColumn(),
                      transient=False) as progress:
            self.progress = progress
            self.task = progress.add_task("agent fleet", total=per_setup * len(shapes) * len(setups))
            for shape_name in shapes:
                shape = SHAPES[shape_name]
                npy = self.tmp / f"weights-{shape_name}.npy"
                np.save(npy, make_weights(shape, a.seed))
                fixed: float | None = None if "naive" in setups else shape.default_fixed_rate
                self.constrained_rate = None
                out: dict[str, Any] = {"weights_bytes": shape.weight_bytes, "answer_bytes": shape.answer_bytes,
                                       "p99_bound_s": shape.p99_bound_s, "setups": {}}
                for setup in setups:
                    res = self.run_setup(setup, shape, npy, fixed)
                    if setup == "naive":
                        fixed = res.get("fixed_rate", shape.default_fixed_rate)
                    out["setups"][setup] = res
                out["fixed_rate"] = fixed
                out["constrained_rate"] = self.constrained_rate
                out["fixed_rate_basis"] = "0.7 x naive's saturation" if "naive" in setups else "shape default"
                npy.unlink()
                report["shapes"][shape_name] = out
            progress.update(self.task, completed=progress.tasks[0].total, description="done")
        report["wall_s"] = time.monotonic() - started
        return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.agent_fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=None, help="agent processes (default 131; --quick: 16)")
    p.add_argument("--quick", action="store_true", help="16 agents, short phases (about a minute on 2 cores)")
    p.add_argument("--shape", choices=("heavy", "light", "both"), default="both")
    p.add_argument("--setups", default="naive,savvy,library", help="comma-separated subset of naive,savvy,library")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="agent_fleet_report", help="directory for report.json and report.html")
    p.add_argument("--kill-agent-at", type=float, default=None, metavar="SECONDS",
                   help="SIGKILL one agent this many seconds into each setup's load")
    p.add_argument("--kill-loadgen-at", type=float, default=None, metavar="SECONDS",
                   help="SIGKILL the load generator this many seconds into each setup's load")
    args = p.parse_args(argv)
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    bad = [s for s in args.setups if s not in SETUPS]
    if bad or not args.setups:
        p.error(f"unknown setups {bad}; choose from {SETUPS}")
    if args.agents is None:
        args.agents = 16 if args.quick else 131
    if args.agents < 2:
        p.error("--agents must be >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "savvy" in args.setups and shutil.which("redis-server") is None:
        print("redis-server is not installed: the savvy setup needs it (or pass --setups naive,library)",
              file=sys.stderr)
        return 2
    harness = Harness(args)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        report = harness.run()
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        harness.close()
        for s, h in previous.items():
            signal.signal(s, h)
    from .report import finish

    out = Path(args.out)
    finish(report, out)
    print(f"report: {out / 'report.json'}  {out / 'report.html'}  (wall {report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
