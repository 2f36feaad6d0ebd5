"""Detection accuracy measured on labelled synthetic traces (seeded), not assumed.

Normal agents draw their metrics from heavy-tailed (log-normal) distributions that reach towards the
thresholds; faulty agents get one fault of random strength, from just past the threshold to far past it.
The detector's precision and recall over many (agent, pass) cases must meet the issue's targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sutazai_hwopt.profiler import detect_bottlenecks
from sutazai_hwopt.profiler.predict import anomaly_scores

MiB = 1024.0**2
FAULTS = ("cpu_starvation", "memory_leak", "io_thrashing", "context_switch_storm")


def normal_agent(rng: np.random.Generator) -> dict[str, Any]:
    cpu = float(min(rng.lognormal(0.5, 1.0), 24.0))
    return {"cpu_percent": cpu, "rss_bytes": float(rng.lognormal(18, 1)),
            "run_wait_ratio": float(min(rng.lognormal(-4, 1.2), 0.45)), "wait_share": float(rng.beta(1, 6)),
            "read_bps": float(rng.lognormal(10, 2.5)) % (12 * MiB), "write_bps": float(rng.lognormal(10, 2.5)) % (
                12 * MiB),
            "ctx_switches_ps": float(min(rng.lognormal(4, 1.5), 9000.0)), "involuntary_ctx_ps": 5.0,
            "major_faults_ps": float(min(rng.lognormal(0, 1.5), 150.0)),
            "rss_growth_intervals": float(rng.integers(0, 2)), "rss_growth_bytes": float(rng.uniform(0, 12 * MiB)),
            "rss_slope_bps": float(rng.uniform(0, 2 * MiB)), "alive": True}


def inject(p: dict[str, Any], fault: str, rng: np.random.Generator) -> None:
    k = float(rng.uniform(1.02, 6.0))  # strength relative to the threshold
    if fault == "cpu_starvation":
        p.update(cpu_percent=float(rng.uniform(0.5, 20)), run_wait_ratio=min(0.5 * k, 0.99),
                 wait_share=float(rng.uniform(0.52, 0.99)))
    elif fault == "memory_leak":
        p.update(rss_growth_intervals=float(rng.integers(2, 8)), rss_growth_bytes=16 * MiB * k,
                 rss_slope_bps=MiB * k * 4)
    elif fault == "io_thrashing":
        p.update(write_bps=16 * MiB * k)
    else:
        p.update(ctx_switches_ps=10_000.0 * k)


def test_precision_and_recall_on_labelled_synthetic_traces() -> None:
    """Over 400 seeded passes of 20 agents with random faults: precision >= 0.95 and recall >= 0.90."""
    rng = np.random.default_rng(2024)
    tp = fp = fn = 0
    for _ in range(400):
        profiles = {f"a{i}": normal_agent(rng) for i in range(20)}
        truth: set[tuple[str, str]] = set()
        for aid in rng.choice(list(profiles), size=int(rng.integers(0, 4)), replace=False):
            fault = str(rng.choice(FAULTS))
            inject(profiles[str(aid)], fault, rng)
            truth.add((fault, str(aid)))
        found = {(b.type, a) for b in detect_bottlenecks({}, profiles) for a in b.agents}
        tp += len(found & truth)
        fp += len(found - truth)
        fn += len(truth - found)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert tp > 300
    assert precision >= 0.95, (precision, tp, fp)
    assert recall >= 0.90, (recall, tp, fn)


def test_anomaly_scores_separate_injected_outliers() -> None:
    """IsolationForest ranks agents whose newest sample departs from their history above normal ones (AUC)."""
    rng = np.random.default_rng(7)
    aucs = []
    for trial in range(5):
        window = rng.lognormal(0, 0.3, size=(40, 30, 5))
        bad = rng.choice(30, size=3, replace=False)
        window[-1, bad] *= rng.uniform(8, 30, size=(3, 5))
        scores = anomaly_scores(window, [f"a{i}" for i in range(30)], seed=trial)
        s_bad = [scores[f"a{i}"] for i in bad]
        s_ok = [scores[f"a{i}"] for i in range(30) if i not in bad]
        aucs.append(np.mean([b > o for b in s_bad for o in s_ok]))
    assert float(np.mean(aucs)) >= 0.95, aucs
