"""Discrete-event load-balancing arena: every algorithm of sutazai_hwopt.balancer against an oracle.

Run:  python benches/lb_arena.py            (all cells, ~2-4 min on one core)
      python benches/lb_arena.py --quick    (shorter simulated time, fewer algorithms)

Model (deterministic seeds): 16 heterogeneous backends, each a FIFO queue with 2 workers and exponential
service times of mean 10..50 ms (capacity spread 5x); several independent client processes (default 8),
each with its OWN DynamicLoadBalancer driven in simulated time through ``clock=``, Poisson arrivals at 70 %
and 90 % of total capacity. Disruptions: backends b12 and b13 (40 ms) serve 5x slower during
[8 s, 16 s); backend b04 fails fast (1 ms error answers) during [18 s, 24 s), then recovers. Every client runs
the simulated active check (HTTP GET: fails while a backend fails) every 0.5 s. Workloads: ``single`` (one
request type) and ``mixed`` (10 % COMPUTE_HEAVY costing 10x).

The oracle knows the true current service rates, which backend is failing, and every queue (global view):
it sends each request to the least expected completion time. It is a strong heuristic, not a proven optimum.

Reported per cell: p50 / p99 / p99.9 latency of successful requests (ms), p99 / oracle p99, client-visible
errors per client for the one failure, the "black hole" ratio (share of requests sent to the failing backend
while it failed, over its capacity share; > 1 means it attracted traffic), and the slowest re-admission of
the recovered backend over all clients (simulated seconds from recovery to its first success per client).
``adaptive+shared`` is the default policy with the clients' ejections published through one
``SharedState`` table (the optional host-wide sharing), i.e. NOT "only what one client sees".
``adaptive+published`` adds the backends' own word: every simulated backend embeds a ``Reporter`` on that
table and publishes its in-flight count and service time (simulated: ``ReporterCore.enter`` / ``exit``).

The outage cells (printed after the main ones) fail b04 for 15 s ([10 s, 25 s)), with and without the
simulated active check, and count client-visible errors per client for that one failure.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from sutazai_hwopt.balancer import BackendService, DynamicLoadBalancer, Reporter, RequestType
from sutazai_hwopt.balancer.shared import SharedState
from sutazai_hwopt.config import BalancerSection
from sutazai_hwopt.errors import NoBackendAvailableError

MEANS_MS = [10, 10, 12, 12, 15, 15, 20, 20, 25, 25, 30, 30, 40, 40, 50, 50]
WORKERS = 2
SLOW = (12, 13)
SLOW_WINDOW = (8.0, 16.0)
SLOW_FACTOR = 5.0
FAIL = 4
FAIL_WINDOW = (18.0, 24.0)
OUTAGE_WINDOW = (10.0, 25.0)  # the outage cells: one 15 s failure
HC_INTERVAL = 0.5
HEAVY_SHARE = 0.10
HEAVY_COST = 10.0


@dataclass
class Server:
    idx: int
    mean: float
    busy: int = 0
    queue: deque = field(default_factory=deque)  # (arrival, client, rt, cost, job)
    queued_work: float = 0.0
    inservice_work: float = 0.0
    rep: Reporter | None = None  # publishes this backend's load (adaptive+published)


class Sim:
    def __init__(self, algo: str, load: float, workload: str, clients: int, duration: float, seed: int,
                 fail_window: tuple[float, float] = FAIL_WINDOW, hc: bool = True) -> None:
        self.algo = algo
        self.fail_window = fail_window
        self.hc = hc
        self.now = 0.0
        self.rng = random.Random(seed)
        # Common random numbers: each client's arrivals, request types and job sizes come from its own stream,
        # so every policy faces the same requests (routing changes only where they go, not what they are).
        self.arr_rngs = [random.Random(seed * 1_000_003 + c) for c in range(clients)]
        self.duration = duration
        self.servers = [Server(i, m / 1000.0) for i, m in enumerate(MEANS_MS)]
        capacity = sum(WORKERS / s.mean for s in self.servers)
        mean_cost = (1 - HEAVY_SHARE) + HEAVY_SHARE * HEAVY_COST if workload == "mixed" else 1.0
        self.rate_per_client = load * capacity / mean_cost / clients
        self.workload = workload
        self.cap_share_fail = (WORKERS / self.servers[FAIL].mean) / capacity
        self.heap: list = []
        self.seq = 0
        self.lat: list[float] = []
        self.errors = 0
        self.no_backend = 0
        self.sent_total_failwin = 0
        self.sent_fail_failwin = 0
        self.first_ok_after_recovery = [math.inf] * clients
        self.lbs: list[DynamicLoadBalancer | None] = []
        cfg = BalancerSection(health_check_interval_s=HC_INTERVAL)
        self.shared = None
        base_algo = algo
        if algo.endswith(("+shared", "+published")):  # every client publishes through one shared table
            base_algo = algo.rsplit("+", 1)[0]
            self.shared = SharedState.create(f"hwopt_arena_{os.getpid()}_{seed}", slots=64)
            if algo.endswith("+published"):  # ...and every backend publishes its own load there
                for s in self.servers:
                    s.rep = Reporter(self.shared, f"b{s.idx:02d}", workers=WORKERS)
        for c in range(clients):
            if algo == "oracle":
                self.lbs.append(None)
                continue
            lb = DynamicLoadBalancer(cfg, algorithm=base_algo, clock=self.clock, seed=seed * 1000 + c,
                                     shared=self.shared)
            for s in self.servers:
                lb.register_service(BackendService(service_id=f"b{s.idx:02d}", port=9000 + s.idx,
                                                   weight=round(0.01 / s.mean, 3), max_connections=1000))
            self.lbs.append(lb)
        for c in range(clients):
            self.push(self.arr_rngs[c].expovariate(self.rate_per_client), 0, (c,))
            if algo != "oracle" and hc:
                self.push(self.rng.random() * HC_INTERVAL, 2, (c,))

    def clock(self) -> float:
        return self.now

    def push(self, t: float, kind: int, data: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    def cur_mean(self, s: Server) -> float:
        if s.idx in SLOW and SLOW_WINDOW[0] <= self.now < SLOW_WINDOW[1]:
            return s.mean * SLOW_FACTOR
        return s.mean

    def failing(self, idx: int) -> bool:
        return idx == FAIL and self.fail_window[0] <= self.now < self.fail_window[1]

    def oracle_pick(self, cost: float) -> int:
        best, best_t = -1, math.inf
        for s in self.servers:
            if self.failing(s.idx):
                continue
            m = self.cur_mean(s) * cost
            wait = 0.0 if s.busy < WORKERS else (s.queued_work + s.inservice_work / WORKERS) / WORKERS
            t = wait + m
            if t < best_t:
                best, best_t = s.idx, t
        return best

    def start(self, s: Server, job: tuple) -> None:
        arrival, client, rt, cost, size = job
        m = self.cur_mean(s) * cost
        s.busy += 1
        s.inservice_work += m
        d = size * m  # size: the job's Exp(1) draw, fixed at its arrival
        self.push(self.now + d, 1, (s.idx, arrival, client, rt, m, d))

    def run(self) -> None:
        rng = self.rng
        heavy = self.workload == "mixed"
        while self.heap:
            t, _, kind, data = heapq.heappop(self.heap)
            if t > self.duration:
                break
            self.now = t
            if kind == 0:  # arrival at a client
                (c,) = data
                arng = self.arr_rngs[c]
                self.push(t + arng.expovariate(self.rate_per_client), 0, (c,))
                is_heavy = heavy and arng.random() < HEAVY_SHARE
                size = arng.expovariate(1.0)
                rt = RequestType.COMPUTE_HEAVY if is_heavy else RequestType.DEFAULT
                cost = HEAVY_COST if is_heavy else 1.0
                lb = self.lbs[c]
                if lb is None:
                    idx = self.oracle_pick(cost)
                else:
                    try:
                        sid = lb.select_backend_sync(rt, session_id=(f"s{rng.randrange(10000)}"
                                                                     if self.algo == "consistent_hash" else None))
                    except NoBackendAvailableError:
                        self.no_backend += 1
                        continue
                    idx = int(sid.service_id[1:])
                if self.fail_window[0] <= t < self.fail_window[1]:
                    self.sent_total_failwin += 1
                    self.sent_fail_failwin += idx == FAIL
                s = self.servers[idx]
                if s.rep is not None:
                    s.rep.core.enter()
                if self.failing(idx):
                    self.push(t + 0.001, 3, (idx, t, c, rt))
                    continue
                job = (t, c, rt, cost, size)
                if s.busy < WORKERS:
                    self.start(s, job)
                else:
                    s.queue.append(job)
                    s.queued_work += self.cur_mean(s) * cost
            elif kind == 1:  # service completion
                idx, arrival, c, rt, m, d = data
                s = self.servers[idx]
                if s.rep is not None:
                    s.rep.core.exit(d, True)
                s.busy -= 1
                s.inservice_work -= m
                lat = t - arrival
                self.lat.append(lat)
                lb = self.lbs[c]
                if lb is not None:
                    lb.record_result(f"b{idx:02d}", lat, True, rt)
                if (idx == FAIL and t >= self.fail_window[1]
                        and self.first_ok_after_recovery[c] == math.inf):
                    self.first_ok_after_recovery[c] = t - self.fail_window[1]
                if s.queue:
                    job = s.queue.popleft()
                    s.queued_work -= self.cur_mean(s) * job[3]
                    if s.queued_work < 1e-12:
                        s.queued_work = 0.0
                    self.start(s, job)
            elif kind == 3:  # fast failure answer
                idx, arrival, c, rt = data
                self.errors += 1
                if self.servers[idx].rep is not None:
                    self.servers[idx].rep.core.exit(t - arrival, False)
                lb = self.lbs[c]
                if lb is not None:
                    lb.record_result(f"b{idx:02d}", t - arrival, False, rt)
            else:  # kind 2: health-check round of one client
                (c,) = data
                lb = self.lbs[c]
                assert lb is not None
                for s in self.servers:
                    lb.report_health(f"b{s.idx:02d}", not self.failing(s.idx))
                self.push(t + HC_INTERVAL, 2, (c,))


def quantile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return math.nan
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


ALGOS = ["oracle", "round_robin", "weighted_round_robin", "least_connections", "p2c", "p2c_ewma",
         "latency_predicting", "consistent_hash", "adaptive", "adaptive+shared", "adaptive+published"]
OUTAGE_ALGOS = ["adaptive", "adaptive+shared", "adaptive+published"]


def run_cell(algo: str, load: float, workload: str, clients: int, duration: float, seed: int,
             fail_window: tuple[float, float] = FAIL_WINDOW, hc: bool = True) -> dict:
    sim = Sim(algo, load, workload, clients, duration, seed, fail_window, hc)
    try:
        sim.run()
    finally:
        for s in sim.servers:
            if s.rep is not None:
                s.rep.close()
        if sim.shared is not None:
            sim.shared.close()
            sim.shared.unlink()
    lat = sorted(sim.lat)
    fail_share = sim.sent_fail_failwin / max(1, sim.sent_total_failwin)
    readmit = max(sim.first_ok_after_recovery) if algo != "oracle" else 0.0
    return {"p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99), "p999": quantile(lat, 0.999),
            "errors_per_client": (sim.errors + sim.no_backend) / clients, "no_backend": sim.no_backend,
            "black_hole": fail_share / sim.cap_share_fail, "readmit_s": readmit, "n": len(lat)}


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer algorithms, same disruptions")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--loads", default="0.7,0.9")
    ap.add_argument("--workloads", default="single,mixed")
    ap.add_argument("--outage", action=argparse.BooleanOptionalAction, default=True,
                    help="run the 15 s outage cells (errors per client with and without active checks)")
    a = ap.parse_args(argv)
    algos = a.algos.split(",")
    if a.quick:
        algos = ["oracle", "round_robin", "least_connections", "latency_predicting", "adaptive"]
    print(f"# lb_arena: 16 backends x {WORKERS} workers, {a.clients} clients, {a.duration:g} s simulated, "
          f"seed {a.seed}")
    print(f"{'workload':8} {'load':>4} {'algorithm':22} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'p99/orc':>8} {'err/cl':>7} {'blackhole':>9} {'readmit s':>9}")
    verdict = []
    ratios: dict[tuple[str, float], dict[str, float]] = {}
    for workload in a.workloads.split(","):
        for load in (float(x) for x in a.loads.split(",")):
            orc = None
            for algo in algos:
                t0 = time.perf_counter()
                r = run_cell(algo, load, workload, a.clients, a.duration, a.seed)
                if algo == "oracle":
                    orc = r["p99"]
                ratio = r["p99"] / orc if orc else math.nan
                print(f"{workload:8} {load:4.1f} {algo:22} {r['p50'] * 1e3:8.1f} {r['p99'] * 1e3:8.1f} "
                      f"{r['p999'] * 1e3:9.1f} {ratio:8.2f} {r['errors_per_client']:7.1f} "
                      f"{r['black_hole']:9.2f} {r['readmit_s']:9.2f}   ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
                if algo == "adaptive":
                    verdict.append((workload, load, ratio, r))
                ratios.setdefault((workload, load), {})[algo] = ratio
    print("\n# targets for the default policy (adaptive)")
    for workload, load, ratio, r in verdict:
        ok = (ratio <= 1.05, r["errors_per_client"] <= 2, r["black_hole"] <= 1.0, r["readmit_s"] <= 2.0)
        print(f"{workload:8} {load:4.1f}  p99<=1.05x oracle: {'MET' if ok[0] else 'NOT MET'} ({ratio:.2f}x)  "
              f"errors<=2/client: {'MET' if ok[1] else 'NOT MET'} ({r['errors_per_client']:.1f})  "
              f"no black hole: {'MET' if ok[2] else 'NOT MET'} ({r['black_hole']:.2f})  "
              f"re-admission<=2 s: {'MET' if ok[3] else 'NOT MET'} ({r['readmit_s']:.2f} s)")
    if ratios:
        print("\n# targets of issue 16 (published load), per cell")
        for (workload, load), by in ratios.items():
            parts = []
            for algo, limit in (("adaptive+published", 1.05), ("adaptive+shared", 1.15)):
                if algo in by:
                    parts.append(f"{algo} p99<={limit:.2f}x oracle: {_met(by[algo] <= limit)} ({by[algo]:.2f}x)")
            print(f"{workload:8} {load:4.1f}  " + "  ".join(parts))
    if a.outage and algos != ["oracle"]:
        outage_algos = [x for x in OUTAGE_ALGOS if x in algos] or OUTAGE_ALGOS
        print(f"\n# outage cells: b04 fails during [{OUTAGE_WINDOW[0]:g} s, {OUTAGE_WINDOW[1]:g} s) "
              f"({OUTAGE_WINDOW[1] - OUTAGE_WINDOW[0]:g} s); errors per client for that one failure")
        print(f"{'workload':8} {'load':>4} {'algorithm':22} {'check':>5} {'err/cl':>7} {'limit':>5}  verdict")
        for workload in a.workloads.split(","):
            for load in (float(x) for x in a.loads.split(",")):
                for algo in outage_algos:
                    for hc in (False, True):
                        r = run_cell(algo, load, workload, a.clients, a.duration, a.seed, OUTAGE_WINDOW, hc)
                        limit = 1.0 if hc else 2.0
                        print(f"{workload:8} {load:4.1f} {algo:22} {'yes' if hc else 'no':>5} "
                              f"{r['errors_per_client']:7.2f} {limit:5.1f}  {_met(r['errors_per_client'] <= limit)}",
                              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
