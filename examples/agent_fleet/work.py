"""What the fleet computes, the wire protocol and the seeded request stream (shared by agents, load generator, harness).

Everything here is deterministic from the seed, so the load generator can recompute any answer an agent sent and
every setup sees exactly the same stream of prompts.
"""

from __future__ import annotations

import argparse
import struct
import zlib
from dataclasses import dataclass

import numpy as np

#: the three setups, in the order they run (naive first: it sets the fixed rate)
SETUPS = ("naive", "savvy", "library")

# ---- request kinds -------------------------------------------------------------------------------------------
PING, LIGHT, DEFAULT, HEAVY = 0, 1, 2, 3
FLUSH, RECONFIGURE, STATS = 8, 9, 10
KIND_NAMES = {LIGHT: "light", DEFAULT: "default", HEAVY: "heavy"}
#: share of each request kind in the stream: 25% embedding lookups, 65% partial products, 10% costing 4x.
KIND_MIX = ((LIGHT, 0.25), (DEFAULT, 0.65), (HEAVY, 0.10))

# ---- levels an answer came from (sent back with every answer) ------------------------------------------------
COMPUTED, LEVEL_L1, LEVEL_SHARED, LEVEL_L3, LEVEL_REMOTE = 0, 1, 2, 3, 4
LEVEL_NAMES = {COMPUTED: "miss (computed)", LEVEL_L1: "L1 / private", LEVEL_SHARED: "L2 / redis",
               LEVEL_L3: "L3", LEVEL_REMOTE: "remote"}

# ---- wire protocol: fixed 16-byte requests, 8-byte response header + payload ----------------------------------
REQUEST = struct.Struct("<BxxxIQ")        # kind, argument, prompt id
RESPONSE = struct.Struct("<BBxxI")        # status (0 ok), level, payload length
OK, FAILED = 0, 1


@dataclass(frozen=True)
class Shape:
    """A workload shape: the weights and the size of an answer (one cache value)."""

    name: str
    rows: int
    cols: int
    answer: int          # float32 values per answer
    p99_bound_s: float   # the latency bound of the saturation ramp
    first_rate: float    # first rate of the ramp (requests/s)
    default_fixed_rate: float  # fixed rate when naive did not run (its saturation x 0.7 is used otherwise)

    @property
    def weight_bytes(self) -> int:
        return self.rows * self.cols * 4

    @property
    def answer_bytes(self) -> int:
        return self.answer * 4


SHAPES = {
    # 64 MiB of float32; a miss multiplies a quarter (16 MiB) or all of it (4x) by a vector: milliseconds.
    "heavy": Shape("heavy", 4096, 4096, 1024, p99_bound_s=0.250, first_rate=100.0, default_fixed_rate=300.0),
    # 1 MiB; a miss is a row lookup or a product of 64 KiB - 1 MiB: microseconds.
    "light": Shape("light", 512, 512, 128, p99_bound_s=0.050, first_rate=400.0, default_fixed_rate=1500.0),
}

#: prompts are Zipf(0.9) over this many ids (per request kind, so 3x as many distinct keys)
KEY_SPACE = 100_000
ZIPF_S = 0.9


def make_weights(shape: Shape, seed: int) -> np.ndarray:
    """The model weights of a shape (float32, C order), the same for a seed."""
    rng = np.random.default_rng([seed, 1])
    return rng.standard_normal((shape.rows, shape.cols), dtype=np.float32)


def make_inputs(shape: Shape, seed: int) -> np.ndarray:
    """A vector of 2 x cols floats; the input of prompt ``i`` is the window starting at ``i % cols`` (no copy)."""
    rng = np.random.default_rng([seed, 2])
    return rng.standard_normal(2 * shape.cols, dtype=np.float32)


def compute(weights: np.ndarray, inputs: np.ndarray, kind: int, prompt: int, answer: int) -> np.ndarray:
    """The answer to a prompt: ``answer`` float32 values. The load generator calls the same function to verify."""
    rows, cols = weights.shape
    x = inputs[prompt % cols: prompt % cols + cols]
    if kind == LIGHT:             # an embedding lookup
        return weights[prompt % rows, :answer] * x[0]
    if kind == DEFAULT:           # a product with a quarter of the rows (x1)
        start = (prompt % 4) * (rows // 4)
        y = weights[start:start + rows // 4] @ x
        return y.reshape(-1, answer).sum(axis=0)
    y = weights @ x               # the whole matrix (x4)
    return y.reshape(-1, answer).sum(axis=0)


def cache_key(kind: int, prompt: int) -> bytes:
    """The cache key of a prompt of a kind (the same bytes in every setup)."""
    return b"%d:%d" % (kind, prompt)


# ---- the seeded stream ---------------------------------------------------------------------------------------
BURST_EVERY_S = 5.0      # every 5 s ...
BURST_LEN_S = 0.5        # ... half a second ...
BURST_FACTOR = 2.0       # ... at twice the base rate (the mean over time is the offered rate)
_SLOT_S = 0.5


def salt_of(name: str) -> int:
    """A stable salt for a phase name (the same stream for every setup)."""
    return zlib.crc32(name.encode())


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


_CDF = _zipf_cdf(KEY_SPACE, ZIPF_S)


def make_stream(seed: int, salt: int, rate: float, duration: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times (s from the phase start), kinds and prompt ids of an open-loop phase.

    Poisson arrivals whose rate doubles for 0.5 s every 5 s (bursts), normalised so the mean rate is ``rate``;
    prompt ids Zipf(0.9) over ``KEY_SPACE`` ids, mapped through a permutation fixed by the seed.
    """
    rng = np.random.default_rng([seed, salt])
    burst_share = BURST_LEN_S / BURST_EVERY_S
    base = rate / (1.0 - burst_share + burst_share * BURST_FACTOR)
    slots = max(1, round(duration / _SLOT_S))
    starts = np.arange(slots) * _SLOT_S
    in_burst = (starts % BURST_EVERY_S) >= (BURST_EVERY_S - BURST_LEN_S)
    slot_rates = np.where(in_burst, base * BURST_FACTOR, base)
    counts = rng.poisson(slot_rates * _SLOT_S)
    times = np.sort(np.repeat(starts, counts) + rng.random(int(counts.sum())) * _SLOT_S)
    n = times.size
    kinds_, probs = zip(*KIND_MIX)
    kinds = rng.choice(np.array(kinds_, dtype=np.uint8), size=n, p=np.array(probs))
    ranks = np.searchsorted(_CDF, rng.random(n))
    perm = np.random.default_rng([seed, 3]).permutation(KEY_SPACE)
    return times, kinds, perm[np.minimum(ranks, KEY_SPACE - 1)].astype(np.int64)


def distinct_keys(kinds: np.ndarray, prompts: np.ndarray) -> int:
    """Distinct (kind, prompt) keys of a stream."""
    return int(np.unique(prompts.astype(np.int64) * 8 + kinds).size)


def process_args(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every process of a setup takes (agent and load generator)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--setup", choices=SETUPS, required=True)
    p.add_argument("--shape", choices=tuple(SHAPES), required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--npy", required=True, help="the weights file of the shape")
    return p
