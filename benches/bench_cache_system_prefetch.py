"""Learned prefetching on a seeded agent-workflow trace and on plain Zipf: misses avoided, precision, hit ratio.

Run:  python benches/bench_cache_system_prefetch.py            (about a minute)
      python benches/bench_cache_system_prefetch.py --quick
      python benches/bench_cache_system_prefetch.py --branchy   (adds a harder workflow trace)

Each trace runs twice through the same IntelligentCacheSystem configuration (L2 only, 16 KiB values, a tier that
holds a fraction of the working set), once without and once with prefetching forced on
(``prefetch_mode="always"``; the default, "auto", is measured by ``benches/test_prefetch.py``;
``prefetch_inline=True`` so the result does not depend on thread timing). On a miss the caller loads and puts
the value, as an agent would.

* workflow trace: 16 agents interleaved; each runs sessions that follow one of 40 workflow templates (chosen by
  Zipf 1.0), a chain of 4-9 tool / model calls; 30% of the steps branch on the previous result (two outcomes,
  70/30); 10% of accesses are one-off keys (user queries) that nobody can predict.
* Zipf trace: Zipf 0.9 over 20,000 keys, no sequential structure: prefetching must not hurt.

Printed: hit ratio without / with, misses turned into hits (target >= 30% on the workflow trace), precision =
prefetched-and-used / prefetched (target >= 60%), and hit-ratio points lost on Zipf (target <= 0.5).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sutazai_hwopt.cache.system import IntelligentCacheSystem
from sutazai_hwopt.testing import throwaway_namespace

VALUE = bytes(16000)


def workflow_trace(n: int, seed: int = 1, *, branchy: bool = False) -> list[tuple[str, str]]:
    """(agent, key) accesses of agents running branching tool-call chains, with unpredictable noise.

    ``branchy``: every step has three outcomes (70/20/10%) and 15% of accesses are one-off keys.
    """
    rng = random.Random(seed)
    templates = []
    for t in range(40):
        length = rng.randint(4, 9)
        # A step is a fixed call (70% of steps) or branches on the previous result (30%: two outcomes, 70/30).
        templates.append([[f"wf{t}:step{j}:v{v}"
                           for v in range(3 if branchy else 2 if rng.random() < 0.3 else 1)]
                          for j in range(length)])
    weights = [1.0 / (i + 1) for i in range(len(templates))]
    agents = [f"agent_{i:03d}" for i in range(16)]
    sessions: dict[str, list[str]] = {a: [] for a in agents}
    out: list[tuple[str, str]] = []
    noise = 0
    while len(out) < n:
        a = rng.choice(agents)
        if not sessions[a]:
            tpl = rng.choices(templates, weights)[0]
            probs = (0.7, 0.2, 0.1) if branchy else (0.7, 0.3)
            sessions[a] = [rng.choices(step, probs[:len(step)])[0] for step in tpl]
        if rng.random() < (0.15 if branchy else 0.10):
            noise += 1
            out.append((a, f"query:{rng.randrange(10**9)}"))
        else:
            out.append((a, sessions[a].pop(0)))
    return out


def zipf_trace(n: int, keys: int = 20000, alpha: float = 0.9, seed: int = 2,
               prefix: str = "z") -> list[tuple[str, str]]:
    """(agent, key) accesses drawn i.i.d. from Zipf(alpha) over ``keys`` keys by 16 agents."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, keys + 1) ** alpha
    p /= p.sum()
    ks = rng.choice(keys, size=n, p=p)
    ags = rng.integers(0, 16, size=n)
    return [(f"agent_{a:03d}", f"{prefix}{k}") for a, k in zip(ags.tolist(), ks.tolist(), strict=True)]


def run(trace: list[tuple[str, str]], prefetch: bool, l2_size: int) -> dict[str, float]:
    with throwaway_namespace("bench-pf") as ns:
        cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 0, "l2_size": l2_size, "l3_size": 0,
                                        "enable_prefetch": prefetch, "prefetch_inline": True,
                                        "prefetch_mode": "always", "prefetch_depth": 3}, loader=lambda k: VALUE)
        hits = 0
        t0 = time.perf_counter()
        for agent, key in trace:
            _, level = cache.get(key, agent)
            if level is None:
                cache.put(key, VALUE, agent)
            else:
                hits += 1
        dt = time.perf_counter() - t0
        st = cache.stats()
        cache.destroy()
    pf = st.get("prefetch", {})
    return {"hit_ratio": hits / len(trace), "misses": len(trace) - hits, "prefetched": pf.get("prefetched", 0),
            "used": pf.get("used", 0), "us_per_access": dt / len(trace) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter traces")
    ap.add_argument("--branchy", action="store_true",
                    help="also a harder workflow trace: 3 outcomes at every step, 15%% one-off keys")
    args = ap.parse_args()
    n = 30000 if args.quick else 80000
    l2 = 2 << 20   # ~115 values of 16 KiB
    print(f"{'trace':10s} {'hit% off':>9s} {'hit% on':>9s} {'misses off':>11s} {'misses on':>10s} "
          f"{'avoided':>8s} {'precision':>9s} {'µs/access off/on':>17s}")
    traces = [("workflow", workflow_trace(n)), ("zipf-0.9", zipf_trace(n))]
    if args.branchy:
        traces.insert(1, ("branchy", workflow_trace(n, branchy=True)))
    for name, trace in traces:
        off = run(trace, False, l2)
        on = run(trace, True, l2)
        avoided = (off["misses"] - on["misses"]) / off["misses"]
        precision = on["used"] / on["prefetched"] if on["prefetched"] else float("nan")
        print(f"{name:10s} {off['hit_ratio'] * 100:9.2f} {on['hit_ratio'] * 100:9.2f} {off['misses']:11.0f} "
              f"{on['misses']:10.0f} {avoided * 100:7.1f}% {precision * 100:8.1f}% "
              f"{off['us_per_access']:8.1f}/{on['us_per_access']:.1f}")
        if name != "zipf-0.9":
            print(f"  target: >= 30% of misses avoided at >= 60% precision -> "
                  f"{'met' if avoided >= 0.30 and precision >= 0.60 else 'NOT met'}")
        else:
            lost = (off["hit_ratio"] - on["hit_ratio"]) * 100
            print(f"  target: <= 0.5 points of hit ratio lost -> lost {lost:.2f} points: "
                  f"{'met' if lost <= 0.5 else 'NOT met'} ({on['prefetched']:.0f} prefetches)")


if __name__ == "__main__":
    main()
