"""Balancing algorithms: small strategy classes behind the :class:`Algorithm` protocol.

Sources:
* round-robin; smooth weighted round-robin: nginx ``ngx_http_upstream_get_peer`` (2012 commit 52327e0);
* least-connections (weighted by capacity);
* power of two choices: Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", IEEE TPDS 2001;
* P2C with peak-EWMA latency: Finagle's ``PeakEwma`` balancer (twitter/finagle, ``Balancers.p2cPeakEwma``);
* latency-predicting ("ML routing"): an online per (backend, request type) service-time model; picks the least
  expected completion time = predicted service + predicted work already queued by this client;
* consistent hashing: weighted rendezvous (highest random weight) hashing, Thaler & Ravishankar 1998, with the
  logarithmic weighting of Schindelhauer & Schomaker 2005, so adding a backend moves only its share of sessions;
* adaptive (the default): weighted least-outstanding with a slowdown correction, see :class:`Adaptive`.

Every ``select`` receives the backends that are admitted (healthy, not ejected) and must skip the ones at
``max_connections``; it returns ``None`` when all are full.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .._native.balancer_core import ALGORITHM_CODES, Rotor, TypeCost
from .state import Backend
from .types import RequestType

__all__ = ["ALGORITHMS", "Adaptive", "Algorithm", "AlgorithmCode", "ConsistentHash", "LatencyPredicting",
           "LeastConnections", "P2C", "P2CPeakEWMA", "RoundRobin", "SmoothWeightedRoundRobin", "make_algorithm"]


class AlgorithmCode(enum.IntEnum):
    """Code of an algorithm's compiled ``select`` (``native_code``); the codes are the compiled core's, defined
    once in ``_native/balancer_codes.pxi`` (``tests/balancer/test_parity.py`` checks the two agree)."""

    PYTHON = ALGORITHM_CODES["python"]  # no compiled twin
    ADAPTIVE = ALGORITHM_CODES["adaptive"]
    ROUND_ROBIN = ALGORITHM_CODES["round_robin"]
    P2C = ALGORITHM_CODES["p2c"]
    LEAST_CONNECTIONS = ALGORITHM_CODES["least_connections"]


@runtime_checkable
class Algorithm(Protocol):
    """A balancing strategy. ``select`` is called under the balancer's lock and must not block."""

    name: str

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        """Pick one backend of ``cands`` that is not full, or ``None``."""
        ...


def _least_loaded(cands: Sequence[Backend], start: int) -> Backend | None:
    best = None
    best_load = math.inf
    n = len(cands)
    for k in range(n):
        b = cands[(start + k) % n]
        if b.in_flight < b.max_conn:
            load = (b.in_flight + b.extra + 1) / b.weight
            if load < best_load:
                best, best_load = b, load
    return best


def _two(cands: Sequence[Backend], n: int, r: Callable[[], float]) -> tuple[Backend, Backend]:
    """Two distinct random candidates (the same one twice only when there is one)."""
    i = int(r() * n)
    if n == 1:
        return cands[i], cands[i]
    j = int(r() * (n - 1))
    if j >= i:
        j += 1
    return cands[i], cands[j]


class RoundRobin:
    """Plain rotation, ignoring weights (the baseline)."""

    name = "round_robin"
    native_code = AlgorithmCode.ROUND_ROBIN

    def __init__(self) -> None:
        self.state = Rotor()

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        n = len(cands)
        st = self.state
        for _ in range(n):
            i = st.i % n
            st.i = i + 1
            b = cands[i]
            if b.in_flight < b.max_conn:
                return b
        return None


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: over a cycle each backend gets exactly its weight share, interleaved.

    Each pick adds every backend's weight to its ``current``, takes the largest and subtracts the total.
    """

    name = "weighted_round_robin"

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        best = None
        total = 0.0
        for b in cands:
            if b.in_flight >= b.max_conn:
                continue
            b.swrr_current += b.weight
            total += b.weight
            if best is None or b.swrr_current > best.swrr_current:
                best = b
        if best is not None:
            best.swrr_current -= total
        return best


class LeastConnections:
    """Fewest in-flight requests per unit of weight (this client's view); ties rotate."""

    name = "least_connections"
    native_code = AlgorithmCode.LEAST_CONNECTIONS

    def __init__(self) -> None:
        self.state = Rotor()

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        self.state.i += 1
        return _least_loaded(cands, self.state.i)


class P2C:
    """Power of two choices over in-flight requests per unit of weight (Envoy's least-request)."""

    name = "p2c"
    native_code = AlgorithmCode.P2C

    def __init__(self, rng: random.Random | None = None) -> None:
        self.state = Rotor((rng or random.Random()).random)

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        n = len(cands)
        if n == 0:
            return None
        a, b = _two(cands, n, self.state.rand)
        fa = a.in_flight < a.max_conn
        fb = b.in_flight < b.max_conn
        if fa and fb:
            return a if (a.in_flight + a.extra + 1) / a.weight <= (b.in_flight + b.extra + 1) / b.weight else b
        if fa:
            return a
        if fb:
            return b
        return _least_loaded(cands, 0)


class P2CPeakEWMA:
    """Finagle's P2C with peak-EWMA: cost = peak-EWMA latency x (in-flight + 1); unknown hosts cost a penalty
    once busy so that a new host is not flooded before its first answer."""

    name = "p2c_ewma"

    def __init__(self, rng: random.Random | None = None, penalty_s: float = 1.0) -> None:
        self._rand = (rng or random.Random()).random
        self._penalty = penalty_s

    def _cost(self, b: Backend) -> float:
        if b.ewma == 0.0:
            return 0.0 if b.in_flight == 0 else self._penalty + b.in_flight
        return b.ewma * (b.in_flight + 1)

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        n = len(cands)
        if n == 0:
            return None
        a, b = _two(cands, n, self._rand)
        fa = a.in_flight < a.max_conn
        fb = b.in_flight < b.max_conn
        if fa and fb:
            return a if self._cost(a) <= self._cost(b) else b
        if fa:
            return a
        if fb:
            return b
        return _least_loaded(cands, 0)


class LatencyPredicting:
    """"ML routing": an online model of service time per (backend, request type), least expected completion.

    The model is ``TypeStats.service_est`` — an exponentially weighted mean of observed latency per
    (backend, request type), learned by the balancer on every ``record_result`` — plus the work this client
    already queued on the backend (``pending_work``: the predicted service of its in-flight requests). A
    backend with no sample for the type borrows the mean estimate of the backends that have one.
    """

    name = "latency_predicting"
    learns = True

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        known = 0.0
        nk = 0
        for b in cands:
            st = b.stats.get(rt)
            if st is not None and st.service_est > 0.0:
                known += st.service_est
                nk += 1
        prior = known / nk if nk else 1e-3
        best = None
        best_t = math.inf
        for b in cands:
            if b.in_flight >= b.max_conn:
                continue
            st = b.stats.get(rt)
            if st is None or st.service_est == 0.0:
                if b.in_flight == 0:
                    return b  # explore: an idle backend without an estimate (new or just re-admitted)
                s = prior
            else:
                s = st.service_est
            t = s + b.pending_work
            if t < best_t:
                best, best_t = b, t
        return best


class ConsistentHash:
    """Session affinity by weighted rendezvous hashing over the admitted backends.

    Rendezvous rather than Maglev: no table to rebuild, exact weight shares, and when a backend is ejected
    or full its sessions fall to their next-ranked backend while every other session stays put.
    Without a session id it falls back to ``fallback`` (default least-connections).
    """

    name = "consistent_hash"

    def __init__(self, fallback: Algorithm | None = None) -> None:
        import numpy as np
        import xxhash

        self._np = np
        self._hash = xxhash.xxh64_intdigest
        self._fallback = fallback or LeastConnections()
        self._key: tuple[int, int] = (0, -1)
        self._seeds = np.zeros(0, dtype=np.uint64)
        self._logw = np.zeros(0)

    def _prepare(self, cands: Sequence[Backend]) -> None:
        np = self._np
        self._seeds = np.array([self._hash(b.sid.encode()) for b in cands], dtype=np.uint64)
        self._weights = np.array([b.weight for b in cands], dtype=np.float64)
        self._key = (id(cands), len(cands))

    def scores(self, cands: Sequence[Backend], session_id: str) -> object:
        """Rendezvous score of each candidate for ``session_id`` (highest wins): ``-w / ln(u)``."""
        np = self._np
        if self._key != (id(cands), len(cands)):
            self._prepare(cands)
        x = self._seeds ^ np.uint64(self._hash(session_id.encode()))
        # splitmix64 finaliser, vectorised (uint64 array arithmetic wraps silently).
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
        return -self._weights / np.log(u)

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        if session_id is None:
            return self._fallback.select(cands, rt, session_id)
        if not cands:
            return None
        s = self.scores(cands, session_id)
        b = cands[int(self._np.argmax(s))]  # type: ignore[call-overload]
        if b.in_flight < b.max_conn:
            return b
        for i in self._np.argsort(-s):  # type: ignore[operator]
            b = cands[int(i)]
            if b.in_flight < b.max_conn:
                return b
        return None


def _adaptive_cost(b: Backend, peers: float, mc: float) -> float:
    """The Python twin of ``adaptive_cost`` in ``_native/balancer_core.pyx`` (see :class:`Adaptive`)."""
    n = peers * b.load + b.xwork
    if b.pworkers > 1.0:
        n = max(0.0, n + 1.0 - b.pworkers)
    c = (n + mc) / b.weight
    if b.pslow > 0.0:
        c *= b.pslow
    elif b.slot < 0 and b.base > 0.0 and b.ewma > 2.0 * b.base:
        c *= math.sqrt(b.ewma / (2.0 * b.base))
    return c


class Adaptive:
    """The default: weighted least-outstanding with concurrency compensation, corrected for slowdowns.

    Cost = ``(peers x load + xwork + cost) / weight x max(1, sqrt(peak_ewma / (2 x base)))`` where ``base`` is
    the backend's long-run mean latency (slow EWMA) and ``peak_ewma`` its recent latency with failures counted as
    ``failure_penalty_s``. ``peers`` is C3's concurrency compensation (Suresh et al., NSDI 2015, section 4.1:
    ``q = 1 + os x n``): one client sees only its own share of each backend's queue, so its outstanding count
    is scaled up as if ``peers`` clients behaved like it; without it, every client sees the fast backends idle
    and all of them pile onto those at once. 4 (not the arena's 8 clients) was measured best-or-even for 2, 8
    and 16 clients; it is 1 when host-wide counts are shared (``extra`` then holds the other processes' share).
    With a shared table ``xwork`` holds the other processes' in-flight work here (their requests weighted by
    type cost). When the backend publishes its own load (:mod:`.reporter`) requests it counts beyond the
    table's are added at unit cost, its published ``pworkers`` are subtracted (that many start at once:
    ``max(0, n + 1 - workers) + cost``; the whole queue counts, not the mean wait ``(k - w + 1) / w`` of a FIFO
    with w servers: that one measured worse at p99 in the arena, 1.03-1.09x against 0.93-0.97x at 90 % load,
    single type), and its published slowdown ``pslow`` (recent over long-run service time, when above 2x;
    aged while the backend is idle and avoided, see ``_view_one`` in ``_native/balancer_core.pyx``) replaces
    the latency factor below.
    Latency-proportional costs herd (every client flees to the same fast backend at once), so latency only
    enters through the capped square-root factor, which moves traffic off a backend that is clearly slower
    than usual (a slowdown or a failing backend), and only for a backend without a host-wide count
    (``slot < 0``): with one, the queue a slowdown builds is counted directly, and the latency (which includes
    that queue) would count it twice (the arena's shared-counts cells, seeds 1-4: p99 1.22-1.24x -> 1.14-1.18x
    the oracle's at 70 % load, single type). Compared over every admitted backend when there are few
    (exact argmin, scanned from a random start so ties fall randomly per client), over ``d`` random ones when
    many (power of d choices, O(1)).
    """

    name = "adaptive"
    native_code = AlgorithmCode.ADAPTIVE

    def __init__(self, rng: random.Random | None = None, scan_limit: int = 32, d: int = 2,
                 peers: float = 4.0) -> None:
        self.state = Rotor((rng or random.Random()).random, scan_limit, d, peers)
        self.tcost: dict[RequestType, TypeCost] = {}  # set by the balancer that uses this instance

    def cost(self, b: Backend, mc: float = 1.0) -> float:
        """The cost this policy minimises (lower is better) for a request of relative cost ``mc``."""
        return _adaptive_cost(b, self.state.peers, mc)

    def select(self, cands: Sequence[Backend], rt: RequestType, session_id: str | None) -> Backend | None:
        n = len(cands)
        if n == 0:
            return None
        best = None
        best_c = math.inf
        st = self.state
        tc = self.tcost.get(rt)
        mc = tc.cost if tc is not None else 1.0
        if n <= st.scan_limit:
            st.i += 1
            start = int(st.rand() * n)  # random scan start: ties fall randomly, so clients do not herd
            peers = st.peers
            for k in range(n):
                b = cands[(start + k) % n]
                if b.in_flight >= b.max_conn:
                    continue
                c = _adaptive_cost(b, peers, mc)
                if c < best_c:
                    best, best_c = b, c
            return best
        r = st.rand
        for _ in range(st.d):
            b = cands[int(r() * n)]
            if b.in_flight >= b.max_conn:
                continue
            c = self.cost(b, mc)
            if c < best_c:
                best, best_c = b, c
        return best if best is not None else _least_loaded(cands, 0)


#: algorithm name -> factory (names match ``BalancerSection.algorithm``).
ALGORITHMS: dict[str, Callable[..., Algorithm]] = {
    "round_robin": RoundRobin,
    "weighted_round_robin": SmoothWeightedRoundRobin,
    "least_connections": LeastConnections,
    "p2c": P2C,
    "p2c_ewma": P2CPeakEWMA,
    "latency_predicting": LatencyPredicting,
    "consistent_hash": ConsistentHash,
    "adaptive": Adaptive,
}


def make_algorithm(spec: str | Algorithm, rng: random.Random | None = None) -> Algorithm:
    """An algorithm instance from a name of :data:`ALGORITHMS` or an object implementing :class:`Algorithm`."""
    from ..errors import InvalidArgumentError

    if isinstance(spec, str):
        factory = ALGORITHMS.get(spec)
        if factory is None:
            raise InvalidArgumentError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {spec!r}")
        if spec in ("p2c", "p2c_ewma", "adaptive"):
            return factory(rng=rng)
        return factory()
    if not isinstance(spec, Algorithm):
        raise InvalidArgumentError(f"algorithm must be a name or an Algorithm, got {spec!r}")
    return spec
