"""Cache traces for the hit-ratio benchmarks: synthetic generators, the LIRS suite loader, Belady's optimum.

Synthetic traces follow ``/work/shared/anchors.md``: Zipf(alpha) over 100k keys with 1M requests; ``scan`` is
Zipf 0.9 with a 20k one-shot sequential scan (fresh keys) after every 80k requests; ``shift`` is Zipf 0.9
whose popularity ranking is re-drawn every 200k requests; ``loop`` cycles over 1.1 x C keys. All are
seeded, so every run sees the same requests.
"""

from __future__ import annotations

import gzip
import heapq
from pathlib import Path

import numpy as np

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces" / "lirs"
if not SHARED_TRACES.is_dir():
    SHARED_TRACES = Path("/work/shared/traces/lirs")

N_KEYS = 100_000
N_REQ = 1_000_000


def _zipf_ranks(rng: np.random.Generator, alpha: float, n_keys: int, n_req: int) -> np.ndarray:
    """Ranks 0..n_keys-1 drawn with P(rank r) proportional to (r + 1) ** -alpha (inverse-CDF sampling)."""
    p = np.arange(1, n_keys + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(n_req), side="right").astype(np.int64)


def zipf(alpha: float, n_keys: int = N_KEYS, n_req: int = N_REQ, seed: int = 1) -> np.ndarray:
    """Zipf(alpha) requests over ``n_keys`` keys, the popular keys scattered over the key space."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_keys).astype(np.int64)
    return perm[_zipf_ranks(rng, alpha, n_keys, n_req)]


def scan(n_keys: int = N_KEYS, n_req: int = N_REQ, seed: int = 2, every: int = 80_000,
         length: int = 20_000) -> np.ndarray:
    """Zipf 0.9 with a one-shot sequential scan of ``length`` fresh keys after every ``every`` requests."""
    base = zipf(0.9, n_keys, n_req, seed)
    out = []
    next_scan_key = n_keys
    for start in range(0, n_req, every):
        out.append(base[start:start + every])
        out.append(np.arange(next_scan_key, next_scan_key + length, dtype=np.int64))
        next_scan_key += length
    return np.concatenate(out)[:n_req]


def shift(n_keys: int = N_KEYS, n_req: int = N_REQ, seed: int = 3, period: int = 200_000) -> np.ndarray:
    """Zipf 0.9 whose popularity ranking is re-drawn every ``period`` requests."""
    rng = np.random.default_rng(seed)
    ranks = _zipf_ranks(rng, 0.9, n_keys, n_req)
    out = np.empty(n_req, dtype=np.int64)
    for start in range(0, n_req, period):
        perm = rng.permutation(n_keys).astype(np.int64)
        out[start:start + period] = perm[ranks[start:start + period]]
    return out


def loop(cache_size: int, n_req: int = N_REQ) -> np.ndarray:
    """Cyclic access over 1.1 x ``cache_size`` keys."""
    n = int(1.1 * cache_size)
    return np.arange(n_req, dtype=np.int64) % n


def synthetic(quick: bool = False) -> list[tuple[str, int, np.ndarray]]:
    """The (name, cache size, trace) cells of the synthetic table; ``quick`` uses 200k requests."""
    n_req = 200_000 if quick else N_REQ
    cells = []
    base = {f"z{a}": zipf(a, n_req=n_req) for a in (0.7, 0.9, 1.1)}
    base["scan"] = scan(n_req=n_req)
    base["shift"] = shift(n_req=n_req, period=200_000 if not quick else 40_000)
    for name, trace in base.items():
        for size in (1000, 10_000):
            cells.append((name, size, trace))
    for size in (1000, 10_000):
        cells.append(("loop", size, loop(size, n_req)))
    return cells


def load_lirs(name: str) -> np.ndarray:
    """One trace of the LIRS suite as int64 keys (non-numeric lines such as ``*`` are skipped)."""
    path = SHARED_TRACES / f"{name}.trace.gz"
    with gzip.open(path, "rt") as fh:
        keys = [int(line) for line in fh if line.strip().lstrip("-").isdigit()]
    return np.asarray(keys, dtype=np.int64)


def lirs_names() -> list[str]:
    """Names of the available LIRS traces."""
    return sorted(p.name.split(".")[0] for p in SHARED_TRACES.glob("*.trace.gz"))


def lirs_cells(fractions: tuple[float, ...] = (0.05, 0.1, 0.25)) -> list[tuple[str, int, np.ndarray]]:
    """(name, cache size, trace) for every LIRS trace at the given fractions of its distinct keys."""
    cells = []
    for name in lirs_names():
        trace = load_lirs(name)
        distinct = len(np.unique(trace))
        for f in fractions:
            cells.append((name, max(10, int(f * distinct)), trace))
    return cells


def belady_hits(trace: np.ndarray, cache_size: int) -> int:
    """Hits of Belady's MIN (evict the key whose next use is farthest), unit sizes, cold misses counted."""
    n = len(trace)
    # next use of each request's key (n = never), computed in one backward pass
    _, inv = np.unique(trace, return_inverse=True)
    nxt = np.full(n, n, dtype=np.int64)
    last = np.full(inv.max() + 1, n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        k = inv[i]
        nxt[i] = last[k]
        last[k] = i
    inv_l = inv.tolist()
    nxt_l = nxt.tolist()
    resident: dict[int, int] = {}   # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key); stale items skipped
    hits = 0
    for i in range(n):
        k = inv_l[i]
        nu = nxt_l[i]
        if k in resident:
            hits += 1
        elif len(resident) >= cache_size:
            while True:
                neg, victim = heapq.heappop(heap)
                if resident.get(victim) == -neg:
                    del resident[victim]
                    break
        resident[k] = nu
        heapq.heappush(heap, (-nu, k))
    return hits
