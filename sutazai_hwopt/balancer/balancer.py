"""DynamicLoadBalancer: client-side balancing with passive outlier ejection, active checks and analytics.

The balancer is a plain object guarded by one short lock (never held while a caller's request runs), usable
from threads (``select_backend_sync``) and from asyncio (``select_backend``). It does no I/O of its own until
``await start()``: active health checks then run as one asyncio task. Time comes from ``clock`` (monotonic
seconds), so tests and the discrete-event arena (``benches/lb_arena.py``) drive it in simulated time.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from .._native.balancer_core import Core, TypeCost
from ..config import BalancerSection, ConfigSource, section_of
from ..errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NoBackendAvailableError,
    NotFoundError,
    StateError,
)
from ..logs import get_logger
from .algorithms import (
    P2C,
    Adaptive,
    Algorithm,
    AlgorithmCode,
    ConsistentHash,
    LeastConnections,
    RoundRobin,
    make_algorithm,
)
from .health import HealthChecker
from .lease import Lease
from .shared import SharedState
from .state import EJECTED, HEALTHY, PROBING, STATE_NAMES, Backend, OutlierPolicy, backend_as_dict
from .types import BackendService, RequestType

__all__ = ["DynamicLoadBalancer", "ReferenceCore", "SelectionPath", "SharedTable"]

log = get_logger("balancer")
_NATIVE_ALGOS = (Adaptive, RoundRobin, P2C, LeastConnections)
_INF = math.inf


class SharedTable(Protocol):
    """What a balancer needs of a host-wide table (:class:`~.shared.SharedState` is the implementation)."""

    @property
    def version(self) -> int: ...

    def ejections_after(self, service_ids: Iterable[str], now: float) -> tuple[int, list[tuple[str, float]]]: ...

    def publish_ejection(self, service_id: str, until: float) -> None: ...

    def begin_request(self, backend: Backend, cost: float) -> None: ...

    def end_request(self, backend: Backend) -> None: ...

    def slot(self, service_id: str) -> int: ...

    def refresh_view(self, backends: list[Any]) -> None: ...

    def reporter_live(self, service_id: str) -> bool: ...

    def claim_probe(self, service_id: str, now: float, hold_s: float) -> float: ...

    def release_probe(self, service_id: str) -> None: ...


class SelectFn(Protocol):
    """``select_backend_sync``'s signature (what a :class:`SelectionPath` provides as ``select``)."""

    def __call__(self, request_type: RequestType = ..., session_id: str | None = ...) -> BackendService: ...


class RecordFn(Protocol):
    """``record_result``'s signature (what a :class:`SelectionPath` provides as ``record``)."""

    def __call__(self, service_id: str, latency_s: float, success: bool,
                 request_type: RequestType = ...) -> None: ...


class SelectionPath(Protocol):
    """The strategy behind ``select_backend_sync`` and ``record_result``, chosen when a balancer is built:
    the compiled ``Core`` (the default) or :class:`ReferenceCore` (``reference=True``)."""

    @property
    def select(self) -> SelectFn: ...

    @property
    def record(self) -> RecordFn: ...


class ReferenceCore:
    """The pure-Python reference model of the compiled ``Core``'s select and record: every call takes the
    balancer's complete Python steps, which the compiled fast path must match (``tests/balancer/test_native.py``)."""

    __slots__ = ("_clock", "_record", "_select")

    def __init__(self, clock: Callable[[], float],
                 select_slow: Callable[[RequestType, str | None, float], BackendService],
                 record_slow: Callable[[str, float, bool, RequestType | None, float | None], None]) -> None:
        self._clock = clock
        self._select = select_slow
        self._record = record_slow

    def select(self, request_type: RequestType = RequestType.DEFAULT,
               session_id: str | None = None) -> BackendService:
        """``select_backend_sync`` on the Python path."""
        return self._select(request_type, session_id, self._clock())

    def record(self, service_id: str, latency_s: float, success: bool,
               request_type: RequestType = RequestType.DEFAULT) -> None:
        """``record_result`` on the Python path."""
        self._record(service_id, latency_s, success, request_type, None)


class DynamicLoadBalancer:
    """Routes requests over registered backends; counts each selected request as in flight until its result.

    Args:
        config: the ``load_balancer.json`` section (defaults if ``None``).
        algorithm: default algorithm name or :class:`~.algorithms.Algorithm` (overrides ``config.algorithm``).
        algorithms: per request type overrides.
        clock: monotonic seconds; ``time.monotonic`` by default, a ``FakeClock`` in tests and simulations.
        seed: seeds the randomised algorithms (P2C, adaptive) for reproducible runs.
        shared: optional :class:`~.shared.SharedState` publishing ejections and outstanding counts to other
            processes on the host.
        namespace: share them with every balancer of this namespace (overrides ``config.namespace``): the
            namespace's table is attached, or created by the first balancer, and closed by :meth:`close`.
            Without ``shared`` or a namespace the balancer sees only its own process.
        reference: take the pure-Python path (:class:`ReferenceCore`, the reference model the tests compare
            the compiled fast path with) instead of the compiled one.

    ``select_backend_sync`` and ``record_result`` are the bound methods of the :class:`SelectionPath` chosen
    at construction (no wrapper in between: they are the hot path).

    Example:
        >>> lb = DynamicLoadBalancer(algorithm="round_robin")
        >>> lb.register_service(BackendService(service_id="a", port=8001))
        >>> with lb.lease() as backend:
        ...     backend.service_id
        'a'
    """

    def __init__(self, config: BalancerSection | ConfigSource = None, *, algorithm: str | Algorithm | None = None,
                 algorithms: Mapping[RequestType, str | Algorithm] | None = None,
                 clock: Callable[[], float] | None = None, seed: int | None = None,
                 shared: SharedTable | None = None, reference: bool = False, namespace: str | None = None) -> None:
        cfg = section_of(config, BalancerSection)
        ns = cfg.namespace if namespace is None else namespace
        self._own_table: SharedState | None = None
        if shared is None and ns:
            shared = self._own_table = SharedState.open(ns)
        self.config = cfg
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._rng = random.Random(seed)
        self._op = OutlierPolicy(
            consecutive_failures=cfg.consecutive_failures, failure_rate_threshold=cfg.failure_rate_threshold,
            window=cfg.failure_window, min_requests=cfg.failure_min_requests,
            base_ejection_s=cfg.base_ejection_s, max_ejection_s=cfg.max_ejection_s,
            max_ejection_percent=cfg.max_ejection_percent, probes=cfg.half_open_probes,
            ewma_tau_s=cfg.ewma_tau_s, failure_penalty_s=cfg.failure_penalty_s)
        default = make_algorithm(algorithm if algorithm is not None else cfg.algorithm, self._rng)
        self._shared = shared
        _global_view(default, shared)
        self._default_algo = default
        self._route: dict[Any, tuple[RequestType, Algorithm, int, Any]] = {
            rt: _entry(rt, default) for rt in RequestType}
        self._hash = default if isinstance(default, ConsistentHash) else None
        self._lock = threading.Lock()
        self._backends: dict[str, Backend] = {}
        self._draining: dict[str, Backend] = {}
        self._list: list[Backend] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []  # never rebound
        # The compiled core shares the route and backend dicts and owns the "something changed" flags; it
        # gets the callables of its contract, not this object.
        self._c = Core(self._clock, self._route, self._backends, RequestType.DEFAULT, self._lock.locked,
                       self._waiters, select_slow=self._select_py, record_slow=self._record_py,
                       no_backend=self._no_backend, wake=self._wake)
        self._c.tau = self._op.ewma_tau_s
        self._c.window = self._op.window
        self._c.affinity = cfg.session_affinity
        self._c.shared = shared
        self._c.words = getattr(shared, "words", None)  # a SharedState: the compiled path reads its slots
        self._c.fail_k = cfg.consecutive_failures
        self._next_live = -_INF  # when the reporters' liveness (pid + start time) is checked next
        self._c.tcost = {rt: TypeCost() for rt in RequestType}
        _give_costs(default, self._c.tcost)
        self._checks_active = False
        self._health: HealthChecker | None = None
        self._ejections_total = 0
        if algorithms:
            for rt, algo in algorithms.items():
                self.set_algorithm(rt, algo)
        self._update_learn()
        self._path: SelectionPath = (ReferenceCore(self._clock, self._select_py, self._record_py) if reference
                                     else self._c)
        self.select_backend_sync: SelectFn = self._path.select
        """Pick a backend for one request and count it in flight; end it with :attr:`record_result`.

        ``select_backend_sync(request_type=RequestType.DEFAULT, session_id=None) -> BackendService``

        Raises:
            NoBackendAvailableError: every backend is full, ejected or unhealthy (or none is registered).
            InvalidArgumentError: ``request_type`` is not a :class:`RequestType`.
        """
        self.record_result: RecordFn = self._path.record
        """End one in-flight request on ``service_id`` with its latency and outcome.

        ``record_result(service_id, latency_s, success, request_type=RequestType.DEFAULT) -> None``

        Raises:
            NotFoundError: unknown ``service_id``.
            StateError: no request is in flight on it (a result recorded twice).
            InvalidArgumentError: ``latency_s`` negative or not finite, or an unknown request type.
        """

    # ----------------------------------------------------------------------------------------- membership
    def register_service(self, service: BackendService) -> None:
        """Add a backend. Raises ``AlreadyExistsError`` for a duplicate id (the balancer is left unchanged)."""
        if not isinstance(service, BackendService):
            raise InvalidArgumentError(f"service must be a BackendService, got {type(service).__name__}")
        slot = self._shared.slot(service.service_id) if self._shared is not None else -1
        with self._lock:
            if service.service_id in self._backends:
                raise AlreadyExistsError(f"service_id {service.service_id!r} is already registered")
            b = self._draining.pop(service.service_id, None)
            nb = Backend(service, len(self._list))
            nb.slot = slot
            if b is not None:  # re-registered while old requests drain: keep their in-flight count
                nb.in_flight = b.in_flight
                nb.load = b.load
                nb.work_sh = b.work_sh  # what this process still owes the shared work sum
            self._backends[service.service_id] = nb
            self._list.append(nb)
            self._c.dirty = True
        log.info("registered backend %s (%s:%d, weight %.3g)", service.service_id, service.host, service.port,
                 service.weight)
        self._wake()

    def deregister_service(self, service_id: str) -> None:
        """Remove a backend; results of its requests still in flight are accepted and then forgotten."""
        with self._lock:
            b = self._backends.pop(service_id, None)
            if b is None:
                raise NotFoundError(f"service_id {service_id!r} is not registered")
            self._list.remove(b)
            for i, x in enumerate(self._list):
                x.index = i
            if b.in_flight > 0:
                self._draining[service_id] = b
            self._c.dirty = True
        log.info("deregistered backend %s", service_id)

    def services(self) -> list[BackendService]:
        """The registered backends, in registration order."""
        with self._lock:
            return [b.service for b in self._list]

    def set_algorithm(self, request_type: RequestType, algorithm: str | Algorithm) -> None:
        """Route ``request_type`` with ``algorithm`` (a name of ``ALGORITHMS`` or an Algorithm object)."""
        rt = self._request_type(request_type)
        algo = make_algorithm(algorithm, self._rng)
        _global_view(algo, self._shared)
        _give_costs(algo, self._c.tcost)
        with self._lock:
            self._route[rt] = _entry(rt, algo)
            self._update_learn()

    def _update_learn(self) -> None:
        self._c.learn = any(getattr(e[1], "learns", False) for e in self._route.values())

    def _request_type(self, request_type: Any) -> RequestType:
        entry = self._route.get(request_type)
        if entry is None:
            raise InvalidArgumentError(
                f"request_type must be one of {[r.value for r in RequestType]}, got {request_type!r}")
        return entry[0]

    # ------------------------------------------------------------------------------------------ selection
    def _refresh(self, now: float) -> None:
        """Expire ejections and rebuild the admitted list (called under the lock when something changed)."""
        nxt = _INF
        op = self._op
        for b in self._list:
            if b.state == EJECTED:
                if now >= b.ejected_until:
                    if self._checks_active and b.check_fail_run > 0:
                        self._eject(b, now, "active check still failing")
                    elif (self._shared is not None
                          and (until := self._shared.claim_probe(b.sid, now, op.base_ejection_s)) > now):
                        b.ejected_until = until  # another process probes (or re-ejected it): wait for it
                    else:
                        b.state = PROBING
                        b.probes_in_flight = 0
                        log.info("backend %s half-open: admitting %d probe(s)", b.sid, op.probes)
                if b.state == EJECTED and b.ejected_until < nxt:
                    nxt = b.ejected_until
        self._c.cands = [b for b in self._list if b.active_ok and (
            b.state == HEALTHY or (b.state == PROBING and b.probes_in_flight < op.probes))]
        self._c.next_change = nxt
        self._c.probing = any(b.state == PROBING for b in self._c.cands)
        self._c.dirty = False

    def _decay(self, now: float) -> None:
        """Let the peak-EWMA (and learned service times) of backends that got no answer lately decay (Finagle
        decays at read time), so a backend penalised once is tried again instead of being starved forever."""
        tau = self._op.ewma_tau_s
        norms = [tc.norm for tc in self._c.tcost.values() if tc.norm > 0.0]
        if norms:  # relative type costs for cost-aware outstanding counts (adaptive)
            lo = min(norms)
            for tc in self._c.tcost.values():
                tc.cost = tc.norm / lo if tc.norm > 0.0 else 1.0
        prior: dict[Any, float] = {}
        if self._c.learn:  # per type: the mean learned service time over the backends
            sums: dict[Any, list[float]] = {}
            for b in self._list:
                for rt, st in b.stats.items():
                    if st.service_est > 0.0:
                        acc = sums.setdefault(rt, [0.0, 0.0])
                        acc[0] += st.service_est
                        acc[1] += 1.0
            prior = {rt: a[0] / a[1] for rt, a in sums.items()}
        for b in self._list:
            if b.ewma > 0.0 and now - b.ewma_t >= tau * 0.25:
                f = math.exp(-(now - b.ewma_t) / tau)
                b.ewma *= f
                b.ewma_t = now
                # A stale learned estimate drifts towards the type's mean, so a backend judged slow during
                # a bad spell is tried again (and re-measured) instead of being starved forever.
                for rt, st in b.stats.items():
                    p = prior.get(rt)
                    if p is not None and st.service_est > 0.0:
                        st.service_est = p + (st.service_est - p) * f ** 0.2  # 5x slower than the EWMA
        self._c.next_decay = now + tau * 0.25
        if self._shared is not None and now >= self._next_live:
            self._next_live = now + self.config.health_check_interval_s
            for b in self._list:  # a dead reporter's figures are dropped within one health interval
                b.pub_live = self._shared.reporter_live(b.sid)

    def _no_backend(self) -> BackendService:
        raise NoBackendAvailableError(self._why_none())

    def _select_py(self, request_type: RequestType, session_id: str | None, now: float) -> BackendService:
        """The complete selection (the compiled fast path hands every unusual case to this)."""
        with self._lock:
            entry = self._route.get(request_type)
            if entry is None:
                self._request_type(request_type)
            rt, algo = entry[0], entry[1]  # type: ignore[index]
            shared = self._shared
            if shared is not None and shared.version != self._c.shared_seen:
                # adopted before the refresh: an expired ejection re-published elsewhere is not probed here
                self._c.shared_seen, ejected = shared.ejections_after(list(self._backends), now)
                for sid, until in ejected:
                    self._adopt_ejection(self._backends[sid], until)
            if self._c.dirty or now >= self._c.next_change:
                self._refresh(now)
            if now >= self._c.next_decay:
                self._decay(now)
            if shared is not None:
                shared.refresh_view(self._list)
                k = self._op.consecutive_failures
                for x in self._c.cands:  # the backend's own word: it failed k times in a row, whoever sent
                    if x.pfail_run >= k and x.state == HEALTHY:
                        self._eject(x, now, f"it reports {x.pfail_run} consecutive failures")
                if self._c.dirty:
                    self._refresh(now)
            if session_id is not None and self.config.session_affinity and not isinstance(algo, ConsistentHash):
                if self._hash is None:
                    self._hash = ConsistentHash(fallback=algo)
                b = self._hash.select(self._c.cands, rt, session_id)
            else:
                b = algo.select(self._c.cands, rt, session_id)
            if b is None:
                raise NoBackendAvailableError(self._why_none())
            b.in_flight += 1
            b.load += self._c.tcost[rt].cost
            if b.state == PROBING:
                b.probes_in_flight += 1
                if b.probes_in_flight >= self._op.probes:
                    self._c.dirty = True
            if self._c.learn:
                st = b.stats.get(rt)
                if st is not None:
                    b.pending_work += st.service_est
            if self._shared is not None:
                self._shared.begin_request(b, self._c.tcost[rt].cost)
            return b.service

    def _why_none(self) -> str:
        n = len(self._list)
        if n == 0:
            return "no backend is registered"
        full = sum(1 for b in self._c.cands if b.in_flight >= b.max_conn)
        return (f"no backend available: {n} registered, {len(self._c.cands)} admitted, {full} of those at "
                f"max_connections; the rest are ejected, probing or failing health checks")

    async def select_backend(self, request_type: RequestType = RequestType.DEFAULT,
                             session_id: str | None = None, *, wait_timeout: float | None = None) -> BackendService:
        """Async :meth:`select_backend_sync`; with ``wait_timeout`` (seconds) waits for a free backend.

        Raises:
            NoBackendAvailableError: none is available (after ``wait_timeout``, if given).
        """
        try:
            return self.select_backend_sync(request_type, session_id)
        except NoBackendAvailableError:
            if not wait_timeout:
                raise
        if wait_timeout < 0 or not math.isfinite(wait_timeout):
            raise InvalidArgumentError(f"wait_timeout must be a finite number >= 0, got {wait_timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return self.select_backend_sync(request_type, session_id)
            fut: asyncio.Future[None] = loop.create_future()
            entry = (loop, fut)
            with self._lock:
                self._waiters.append(entry)
            try:
                # Re-check periodically too: an ejection can expire without any event waking us.
                await asyncio.wait_for(asyncio.shield(fut), timeout=min(left, 0.05))
            except asyncio.TimeoutError:
                pass
            finally:
                with self._lock:
                    if entry in self._waiters:
                        self._waiters.remove(entry)
            try:
                return self.select_backend_sync(request_type, session_id)
            except NoBackendAvailableError:
                continue

    def _wake(self) -> None:
        if not self._waiters:
            return
        with self._lock:
            waiters = self._waiters[:]
            self._waiters.clear()  # in place: the compiled core holds this list
        for loop, fut in waiters:
            try:
                loop.call_soon_threadsafe(_set_done, fut)
            except RuntimeError:  # loop closed
                pass

    # ---------------------------------------------------------------------------------------- outcomes
    def _record_py(self, service_id: str, latency_s: float, success: bool, request_type: RequestType | None,
                   now: float | None) -> None:
        """The complete result recording (the compiled fast path hands every unusual case to this)."""
        if not (0.0 <= latency_s < _INF):
            raise InvalidArgumentError(f"latency_s must be a finite number >= 0, got {latency_s!r}")
        if request_type is None:
            request_type = RequestType.DEFAULT
        if now is None:
            now = self._clock()
        with self._lock:
            entry = self._route.get(request_type)
            if entry is None:
                self._request_type(request_type)
            rt = entry[0]  # type: ignore[index]
            b = self._backends.get(service_id)
            if b is None:
                b = self._draining.get(service_id)
                if b is None:
                    raise NotFoundError(f"service_id {service_id!r} is not registered")
            if b.in_flight <= 0:
                raise StateError(f"service_id {service_id!r} has no request in flight")
            b.in_flight -= 1
            tc = self._c.tcost[rt]
            b.end_load(tc.cost)
            if self._shared is not None:
                self._shared.end_request(b)
            st = b.stats.get(rt)
            if st is None:
                st = b.type_stats(rt)
            st.requests += 1
            st.sketch.add(latency_s)
            op = self._op
            if success:
                tc.learn(latency_s, b.weight)
                b.observe_latency(latency_s, now, op.ewma_tau_s)
                b.observe_base(latency_s)
            else:
                st.errors += 1
                b.observe_latency(latency_s if latency_s > op.failure_penalty_s else op.failure_penalty_s,
                                  now, op.ewma_tau_s)
            if self._c.learn:
                if success:
                    st.service_est = latency_s if st.service_est == 0.0 else st.service_est * 0.8 + latency_s * 0.2
                b.pending_work = b.pending_work - st.service_est if b.in_flight > 0 else 0.0
                if b.pending_work < 0.0:
                    b.pending_work = 0.0
            if b.sid not in self._backends:
                if b.in_flight == 0:
                    self._draining.pop(b.sid, None)
            else:
                self._outlier(b, not success, now, now - latency_s)
        if self._waiters:
            self._wake()

    def release(self, service_id: str, request_type: RequestType = RequestType.DEFAULT) -> None:
        """End an in-flight request without an outcome (the caller cancelled it): no stats, no ejection."""
        with self._lock:
            b = self._backends.get(service_id) or self._draining.get(service_id)
            if b is None:
                raise NotFoundError(f"service_id {service_id!r} is not registered")
            if b.in_flight <= 0:
                raise StateError(f"service_id {service_id!r} has no request in flight")
            b.in_flight -= 1
            b.end_load(self._c.tcost[self._request_type(request_type)].cost)
            if self._shared is not None:
                self._shared.end_request(b)
            if b.state == PROBING and b.probes_in_flight > 0:
                b.probes_in_flight -= 1
                self._c.dirty = True
                if self._shared is not None:
                    self._shared.release_probe(b.sid)
            if self._c.learn:
                st = b.stats.get(self._request_type(request_type))
                b.pending_work = max(0.0, b.pending_work - st.service_est) if st and b.in_flight else 0.0
            if b.sid not in self._backends and b.in_flight == 0:
                self._draining.pop(b.sid, None)
        self._wake()

    def _outlier(self, b: Backend, failed: bool, now: float, sent: float) -> None:
        """Passive outlier detection (under the lock); ``sent`` is the request's send time (now - latency)."""
        op = self._op
        if b.state == EJECTED:
            return  # a late answer of a request sent before the ejection says nothing new
        if b.state == PROBING:
            if b.probes_in_flight > 0:
                b.probes_in_flight -= 1
            if failed:
                self._eject(b, now, "half-open probe failed", force=True)  # published before the release
            else:
                b.state = HEALTHY
                b.recovered_at = now
                b.reset_window()
                log.info("backend %s re-admitted after a successful probe", b.sid)
            if self._shared is not None:
                self._shared.release_probe(b.sid)
            self._c.dirty = True
            return
        b.record_outcome(1 if failed else 0, op.window, sent)
        if not failed:
            return
        if b.consecutive >= op.consecutive_failures:
            self._eject(b, now, f"{b.consecutive} consecutive failures")
        elif len(b.ring) >= op.min_requests and b.ring_fails >= op.failure_rate_threshold * len(b.ring):
            self._eject(b, now, f"failure rate {b.ring_fails}/{len(b.ring)}")

    def _eject(self, b: Backend, now: float, why: str, force: bool = False) -> None:
        op = self._op
        if not force and b.state == HEALTHY:
            out = sum(1 for x in self._list if x.state != HEALTHY or not x.active_ok)
            if (out + 1) * 100.0 > op.max_ejection_percent * len(self._list):
                log.warning("backend %s not ejected (%s): %d of %d already out, panic threshold %.0f%%",
                            b.sid, why, out, len(self._list), op.max_ejection_percent)
                b.reset_window()
                return
        if b.recovered_at and now - b.recovered_at >= op.max_ejection_s:
            b.ejections = 0  # healthy for long enough: back-off starts over
        dur = min(op.base_ejection_s * (2.0 ** b.ejections), op.max_ejection_s)
        b.ejections += 1
        b.total_ejections += 1
        self._ejections_total += 1
        b.state = EJECTED
        b.ejected_until = now + dur
        b.ewma = 0.0  # forget the failure penalty: a re-admitted backend starts as unknown and gets its probe
        for st in b.stats.values():
            st.service_est = 0.0
        b.probes_in_flight = 0
        b.check_failed_in_ejection = b.check_fail_run > 0
        b.reset_window()
        self._c.dirty = True
        if self._shared is not None:
            self._shared.publish_ejection(b.sid, b.ejected_until)
        log.warning("backend %s ejected for %.3g s (%s)", b.sid, dur, why)

    def _adopt_ejection(self, b: Backend, until: float) -> None:
        """Eject ``b`` until ``until`` because another process did (under the lock; not re-published)."""
        if b.state == EJECTED and b.ejected_until >= until:
            return
        now = self._clock()
        if b.recovered_at and now - b.recovered_at >= self._op.max_ejection_s:
            b.ejections = 0
        # Counted as this balancer's own: the back-off grows host-wide, whichever process probes next.
        b.ejections += 1
        b.state = EJECTED
        b.ejected_until = until
        b.probes_in_flight = 0
        b.ewma = 0.0
        b.reset_window()
        self._c.dirty = True
        log.info("backend %s ejected until %.3f: published by another process", b.sid, until)

    # ------------------------------------------------------------------------------------------ health
    def report_health(self, service_id: str, healthy: bool) -> None:
        """Feed one active health-check result (the checker calls this; simulations may too).

        ``unhealthy_threshold`` failures in a row take the backend out; ``healthy_threshold`` passes bring
        it back, and also end a passive ejection early if a check failed during that ejection.
        """
        now = self._clock()
        cfg = self.config
        with self._lock:
            self._checks_active = True
            b = self._backends.get(service_id)
            if b is None:
                raise NotFoundError(f"service_id {service_id!r} is not registered")
            if healthy:
                b.check_pass_run += 1
                b.check_fail_run = 0
                if not b.active_ok and b.check_pass_run >= cfg.healthy_threshold:
                    b.active_ok = True
                    self._c.dirty = True
                    log.info("backend %s passes active checks again", b.sid)
                if (b.state == EJECTED and b.check_failed_in_ejection
                        and b.check_pass_run >= cfg.healthy_threshold):
                    b.state = PROBING
                    b.probes_in_flight = 0
                    self._c.dirty = True
                    log.info("backend %s half-open early: active checks recovered", b.sid)
            else:
                b.check_fail_run += 1
                b.check_pass_run = 0
                if b.state == EJECTED:
                    b.check_failed_in_ejection = True
                if b.active_ok and b.check_fail_run >= cfg.unhealthy_threshold:
                    b.active_ok = False
                    self._c.dirty = True
                    log.warning("backend %s fails active checks: taken out", b.sid)
            _ = now
        self._wake()

    async def start(self) -> None:
        """Start active health checks (TCP connect, or HTTP GET of ``health_path``) as one asyncio task."""
        if self._health is not None:
            raise StateError("the balancer is already started")
        self._checks_active = True
        self._health = HealthChecker(self, interval_s=self.config.health_check_interval_s,
                                     timeout_s=self.config.health_check_timeout_s)
        self._health.start()

    async def check_now(self) -> None:
        """Run one round of active checks now and wait for it (started or not)."""
        self._checks_active = True
        h = self._health or HealthChecker(self, interval_s=self.config.health_check_interval_s,
                                          timeout_s=self.config.health_check_timeout_s)
        await h.run_once()

    def close(self) -> None:
        """Stop sharing: unmap the namespace table this balancer attached itself (idempotent; a table passed as
        ``shared=`` is the caller's to close). The balancer keeps routing on its own process's view."""
        table, self._own_table = self._own_table, None
        if table is None:
            return
        with self._lock:
            self._shared = None
            self._c.shared = None
            self._c.words = None
        table.close()

    async def stop(self) -> None:
        """Stop the health checks (idempotent)."""
        h, self._health = self._health, None
        if h is not None:
            await h.stop()

    async def __aenter__(self) -> DynamicLoadBalancer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------- leases
    def lease(self, request_type: RequestType = RequestType.DEFAULT, session_id: str | None = None, *,
              wait_timeout: float | None = None) -> Lease:
        """A context manager (``with`` or ``async with``) that selects a backend and always ends the request.

        A normal exit records success, an exception records failure (or only releases, for cancellation and
        for exceptions the caller marks as not the backend's fault with ``lease.ignore()``).
        """
        self._request_type(request_type)
        return Lease(self, request_type, session_id, wait_timeout, clock=self._clock)

    # ---------------------------------------------------------------------------------------- analytics
    def state_of(self, service_id: str) -> str:
        """``healthy``, ``ejected``, ``probing`` or ``unhealthy`` (failing active checks)."""
        with self._lock:
            b = self._backends.get(service_id)
            if b is None:
                raise NotFoundError(f"service_id {service_id!r} is not registered")
            if self._c.dirty or self._clock() >= self._c.next_change:
                self._refresh(self._clock())
            return STATE_NAMES[b.state] if b.active_ok else "unhealthy"

    def in_flight(self, service_id: str | None = None) -> int:
        """In-flight requests on one backend, or on all of them (including deregistered, draining ones)."""
        with self._lock:
            if service_id is None:
                return sum(b.in_flight for b in self._list) + sum(b.in_flight for b in self._draining.values())
            b = self._backends.get(service_id) or self._draining.get(service_id)
            if b is None:
                raise NotFoundError(f"service_id {service_id!r} is not registered")
            return b.in_flight

    def analytics(self) -> dict[str, Any]:
        """Per backend and request type: counts, errors, in-flight, p50/p95/p99 latency, ejections."""
        with self._lock:
            return {
                "algorithm": self._default_algo.name,
                "backends": {b.sid: backend_as_dict(b) for b in self._list},
                "ejections": self._ejections_total,
                "admitted": len(self._c.cands),
                "registered": len(self._list),
            }


def _entry(rt: RequestType, algo: Algorithm) -> tuple[RequestType, Algorithm, int, Any]:
    """A route entry: the canonical type, the algorithm, its compiled code (0: Python only) and its state."""
    state = getattr(algo, "state", None)
    # int(): the compiled core reads the code on every selection; not for subclasses (their select may differ)
    code = int(getattr(algo, "native_code", AlgorithmCode.PYTHON)) if type(algo) in _NATIVE_ALGOS else 0
    return (rt, algo, code, state)


def _global_view(algo: Algorithm, shared: SharedTable | None) -> None:
    """With host-wide outstanding counts (``shared``) adaptive needs no concurrency compensation."""
    if shared is not None and isinstance(algo, Adaptive) and algo.state.peers != 1.0:
        algo.state.peers = 1.0


def _give_costs(algo: Algorithm, tcost: dict[Any, TypeCost]) -> None:
    """Adaptive weighs outstanding requests by their type's learned cost: give it this balancer's table."""
    if isinstance(algo, Adaptive):
        algo.tcost = tcost


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
