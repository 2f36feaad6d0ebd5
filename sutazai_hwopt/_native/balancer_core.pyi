"""Stub of the compiled balancer core (_native/balancer_core.pyx)."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from typing_extensions import disjoint_base

__test__: dict[str, str]

BACKEND_STATES: dict[str, int]
ALGORITHM_CODES: dict[str, int]
SHARED_LAYOUT: dict[str, int]

@disjoint_base
class Sketch:
    buckets: dict[int, int]
    gamma: float
    inv_log_gamma: float
    total: float
    max: float
    count: int
    zero: int
    def __init__(self, relative_accuracy: float = ...) -> None: ...
    def add(self, value: float) -> None: ...
    def quantile(self, q: float) -> float: ...
    def merge(self, other: Sketch) -> None: ...
    def summary(self) -> dict[str, float]: ...

@disjoint_base
class TypeStats:
    requests: int
    errors: int
    sketch: Sketch
    service_est: float
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

@disjoint_base
class TypeCost:
    norm: float
    cost: float
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def learn(self, latency_s: float, weight: float) -> None: ...

@disjoint_base
class Rotor:
    i: int
    rand: Any
    scan_limit: int
    d: int
    peers: float
    def __init__(self, rand: Any = ..., scan_limit: int = ..., d: int = ..., peers: float = ...) -> None: ...

@disjoint_base
class Backend:
    service: Any
    sid: Any
    stats: Any
    ring: Any
    weight: float
    ewma: float
    ewma_t: float
    pending_work: float
    ejected_until: float
    recovered_at: float
    swrr_current: float
    base: float
    extra: float
    pslow: float
    pworkers: float
    xwork: float
    work_sh: int
    pfail_run: int
    pdone: int
    pstale: int
    slot: int
    pub_live: bool
    max_conn: int
    in_flight: int
    state: int
    ejections: int
    total_ejections: int
    probes_in_flight: int
    consecutive: int
    streak_sent: float
    load: float
    ring_i: int
    ring_fails: int
    ring_n: int
    check_pass_run: int
    check_fail_run: int
    index: int
    active_ok: bool
    check_failed_in_ejection: bool
    def __init__(self, service: Any, index: int) -> None: ...
    def end_load(self, cost: float) -> None: ...
    def type_stats(self, rt: Any) -> TypeStats: ...
    def observe_latency(self, sample: float, now: float, tau: float) -> None: ...
    def observe_base(self, sample: float) -> None: ...
    def record_outcome(self, failed: int, window: int, sent: float = ...) -> None: ...
    def reset_window(self) -> None: ...

def native_select(code: int, st: Rotor, cands: list[Any], mc: float = ...,
                  words: AtomicWords | None = ...) -> Any: ...
def shared_view(backends: list[Any], words: AtomicWords) -> None: ...
def shared_begin(b: Backend, w: AtomicWords, cost: float) -> None: ...
def shared_end(b: Backend, w: AtomicWords) -> None: ...

@disjoint_base
class Core:
    dirty: bool
    learn: bool
    affinity: bool
    probing: bool
    next_change: float
    next_decay: float
    tau: float
    cands: list[Any]
    route: dict[Any, Any]
    backends: dict[Any, Any]
    tcost: dict[Any, Any]
    clock: Any
    shared: Any
    words: AtomicWords | None
    shared_seen: int
    fail_k: int
    default_rt: Any
    locked: Any
    window: int
    @property
    def waiters(self) -> list[Any]: ...
    @property
    def select_slow(self) -> Callable[[Any, str | None, float], Any]: ...
    @property
    def record_slow(self) -> Callable[[str, float, bool, Any, float | None], None]: ...
    @property
    def no_backend(self) -> Callable[[], Any]: ...
    @property
    def wake(self) -> Callable[[], None]: ...
    def __init__(self, clock: Callable[[], float], route: dict[Any, Any], backends: dict[Any, Any],
                 default_rt: Any, locked: Callable[[], bool], waiters: list[Any], *,
                 select_slow: Callable[[Any, str | None, float], Any],
                 record_slow: Callable[[str, float, bool, Any, float | None], None],
                 no_backend: Callable[[], Any], wake: Callable[[], None]) -> None: ...
    def select(self, request_type: Any = ..., session_id: str | None = ...) -> Any: ...
    def record(self, service_id: str, latency_s: float, success: bool, request_type: Any = ...) -> None: ...

@disjoint_base
class AtomicWords:
    nwords: int
    def __init__(self, buf: Any) -> None: ...
    def add(self, i: int, delta: int) -> int: ...
    def load(self, i: int) -> int: ...
    def store(self, i: int, value: int) -> None: ...
    def cas(self, i: int, expected: int, value: int) -> bool: ...
    def gather(self, indices: list[int]) -> list[int]: ...
    def release(self) -> None: ...

@disjoint_base
class ReporterCore:
    @property
    def slot(self) -> int: ...
    def __init__(self, words: AtomicWords, slot: int) -> None: ...
    def begin(self) -> int: ...
    def done(self, start_ns: int, ok: bool = ...) -> None: ...
    def enter(self) -> None: ...
    def exit(self, service_s: float, ok: bool = ...) -> None: ...
    def queue_add(self, delta: int) -> None: ...
    def serving(self) -> AbstractContextManager[None]: ...
    def queued(self) -> AbstractContextManager[None]: ...
