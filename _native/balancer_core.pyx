# cython: auto_pickle=False
# Compiled hot path of sutazai_hwopt.balancer: per-backend state, the latency sketch, and select + record.
#
# Why compiled: the pure-Python select + record measured 2.4-4.9 us per call (benches/bench_balancer.py),
# over the 1 us target; the same steps here avoid the interpreter's per-attribute and per-call costs.
# Algorithms (all cited in sutazai_hwopt/balancer/algorithms.py): round-robin, weighted least-outstanding,
# power of two choices (Mitzenmacher 2001) and the adaptive cost; the sketch is DDSketch's logarithmic
# mapping (Masson, Rim, Lee, VLDB 2019, section 2). The Python shell (balancer.py) keeps every rare path
# (ejection, refresh, waiters, newly published ejections and probes, session hashing, user algorithms);
# ``Core`` hands those cases to the callables the shell gave it (its written contract, in its docstring) and
# never sees the shell itself. With a shared table (balancer/shared.py) the common path reads and updates the
# compared backends' slots here; the backend side's bookkeeping (``ReporterCore``) is at the end of the file.
# Backend states and algorithm codes are defined once, in balancer_codes.pxi; the table's layout in
# balancer_layout.pxi.
#
# Concurrency: the fast paths run under the GIL without calling Python code between reading and writing a
# backend's counters (the clock is read first), so they are atomic with respect to other Python threads and
# need no lock of their own; every path that calls back into Python takes the shell's lock as before.

cimport cython
from cpython.object cimport PyObject, PyTypeObject
from libc.math cimport ceil, exp, log, sqrt
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

include "balancer_codes.pxi"
include "balancer_layout.pxi"

cdef double _INF = float("inf")


cdef class Sketch:
    """Relative-error quantile sketch (DDSketch log mapping) of non-negative values."""

    cdef public dict buckets
    cdef public double gamma, inv_log_gamma, total, max
    cdef public long long count, zero

    def __init__(self, double relative_accuracy=0.02):
        if not (0.0 < relative_accuracy < 1.0):
            from sutazai_hwopt.errors import InvalidArgumentError
            raise InvalidArgumentError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self.inv_log_gamma = 1.0 / log(self.gamma)
        self.buckets = {}
        self.count = 0
        self.zero = 0
        self.total = 0.0
        self.max = 0.0

    cdef inline void _add(self, double value):
        cdef long i
        cdef object key, old
        if value > 1e-9:
            i = <long>ceil(log(value) * self.inv_log_gamma)
            key = i
            old = self.buckets.get(key)
            self.buckets[key] = 1 if old is None else old + 1
            if value > self.max:
                self.max = value
        else:
            self.zero += 1
        self.count += 1
        self.total += value

    def add(self, double value):
        """Count one value (>= 0)."""
        if not value >= 0.0:
            from sutazai_hwopt.errors import InvalidArgumentError
            raise InvalidArgumentError(f"value must be >= 0, got {value!r}")
        self._add(value)

    def quantile(self, double q):
        """The ``q`` quantile (0..1) within the relative accuracy; 0.0 when empty."""
        if not (0.0 <= q <= 1.0):
            from sutazai_hwopt.errors import InvalidArgumentError
            raise InvalidArgumentError(f"q must be in [0, 1], got {q!r}")
        if self.count == 0:
            return 0.0
        cdef double rank = q * (self.count - 1)
        cdef long long seen = self.zero
        if rank < seen:
            return 0.0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                return 2.0 * self.gamma ** i / (self.gamma + 1.0)
        return self.max

    def merge(self, Sketch other):
        """Add another sketch's counts (same accuracy only)."""
        if other.gamma != self.gamma:
            from sutazai_hwopt.errors import InvalidArgumentError
            raise InvalidArgumentError("cannot merge sketches of different relative accuracy")
        for i, c in other.buckets.items():
            self.buckets[i] = self.buckets.get(i, 0) + c
        self.zero += other.zero
        self.count += other.count
        self.total += other.total
        if other.max > self.max:
            self.max = other.max

    def summary(self):
        """Count, mean, p50/p95/p99 and max as a dict."""
        return {"count": float(self.count), "mean": self.total / self.count if self.count else 0.0,
                "p50": self.quantile(0.50), "p95": self.quantile(0.95), "p99": self.quantile(0.99),
                "max": self.max}


cdef class TypeStats:
    """Counters and latency sketch of one (backend, request type)."""

    cdef public long long requests, errors
    cdef public Sketch sketch
    cdef public double service_est

    def __init__(self):
        self.requests = 0
        self.errors = 0
        self.sketch = Sketch()
        self.service_est = 0.0


cdef class TypeCost:
    """Relative cost of one request type, learned by one balancer (cost-aware outstanding counts).

    ``norm`` is a count-based EWMA (about 100 samples) of successful latency x backend weight, i.e. latency
    normalised by capacity; ``cost`` = ``norm`` / the smallest ``norm`` over the types seen (1.0 until known),
    refreshed on the shell's decay tick. A COMPUTE_HEAVY request costing 10x then counts as 10 outstanding.
    """

    cdef public double norm, cost

    def __init__(self):
        self.norm = 0.0
        self.cost = 1.0

    cpdef void learn(self, double latency_s, double weight):
        """Fold one successful latency on a backend of ``weight`` into ``norm``."""
        cdef double x = latency_s * weight
        if self.norm == 0.0:
            self.norm = x
        else:
            self.norm = self.norm + (x - self.norm) * 0.01


cdef class Rotor:
    """Mutable state of one algorithm instance shared by its Python and compiled code paths."""

    cdef public long long i
    cdef public object rand
    cdef public int scan_limit, d
    cdef public double peers

    def __init__(self, rand=None, int scan_limit=32, int d=2, double peers=1.0):
        self.i = 0
        self.rand = rand
        self.scan_limit = scan_limit
        self.d = d
        self.peers = peers


cdef class Backend:
    """Mutable state of one registered backend; fields are public to the algorithms and the shell."""

    cdef public object service, sid, stats, ring
    cdef public double weight, ewma, ewma_t, pending_work, ejected_until, recovered_at, swrr_current, base
    cdef public double extra  # requests other processes have in flight here (shared mode), else 0
    cdef public double pslow  # the backend's published slowdown factor (>= 1), 0 without a fresh report
    cdef public double pworkers  # the requests it serves in parallel, by its own word (0: unknown)
    cdef public double xwork  # cost-weighted work other processes have in flight here (shared mode), else 0
    cdef public long long work_sh  # the work (x WORK_SCALE) this process added to the shared slot
    cdef public long long pdone  # the backend's published completions when this process last saw them change
    cdef public long long pstale  # views of it idle since then (its published slowdown ages with them)
    cdef public long long pfail_run  # consecutive failures by the backend's own word (0 without a report)
    cdef public long long slot  # word index of its slot in the shared table, -1 without one
    cdef public bint pub_live  # a live reporter publishes this backend's load (checked by the shell)
    cdef public double load  # this client's in-flight requests here weighted by their type's cost
    cdef public double streak_sent  # send time of the first failed request of the current failure streak
    cdef public long long max_conn, in_flight, state, ejections, total_ejections, probes_in_flight
    cdef public long long consecutive, ring_i, ring_fails, ring_n, check_pass_run, check_fail_run, index
    cdef public bint active_ok, check_failed_in_ejection

    def __init__(self, service, long long index):
        self.service = service
        self.sid = service.service_id
        self.weight = service.weight
        self.max_conn = service.max_connections
        self.index = index
        self.in_flight = 0
        self.ewma = 0.0
        self.ewma_t = 0.0
        self.base = 0.0
        self.extra = 0.0
        self.pslow = 0.0
        self.pworkers = 0.0
        self.xwork = 0.0
        self.work_sh = 0
        self.pfail_run = 0
        self.slot = -1
        self.pub_live = False
        self.pending_work = 0.0
        self.state = HEALTHY
        self.ejected_until = 0.0
        self.ejections = 0
        self.total_ejections = 0
        self.recovered_at = 0.0
        self.probes_in_flight = 0
        self.consecutive = 0
        self.streak_sent = 0.0
        self.load = 0.0
        self.ring = []
        self.ring_i = 0
        self.ring_fails = 0
        self.ring_n = 0
        self.active_ok = True
        self.check_pass_run = 0
        self.check_fail_run = 0
        self.check_failed_in_ejection = False
        self.stats = {}
        self.swrr_current = 0.0

    cpdef void end_load(self, double cost):
        """Remove one finished request of ``cost`` from ``load`` (exactly 0 when nothing is in flight)."""
        self.load -= cost
        if self.in_flight <= 0 or self.load < 0.0:
            self.load = 0.0

    cpdef TypeStats type_stats(self, rt):
        """The stats of request type ``rt`` (created on first use)."""
        st = self.stats.get(rt)
        if st is None:
            st = TypeStats()
            self.stats[rt] = st
        return <TypeStats>st

    cpdef void observe_latency(self, double sample, double now, double tau):
        """Peak-EWMA (Finagle): jump up to a worse sample at once, decay towards better ones over ``tau``."""
        cdef double dt, w
        if self.ewma == 0.0 or sample > self.ewma:
            self.ewma = sample
        else:
            dt = now - self.ewma_t
            w = exp(-dt / tau) if dt > 0 else 1.0
            if w > 0.9:  # a sample at the same instant still moves the estimate a little
                w = 0.9
            self.ewma = self.ewma * w + sample * (1.0 - w)
        self.ewma_t = now

    cpdef void observe_base(self, double sample):
        """Slow count-based EWMA (about 500 samples) of successful latency: what is normal here."""
        if self.base == 0.0:
            self.base = sample
        else:
            self.base = self.base + (sample - self.base) * 0.002

    cpdef void record_outcome(self, int failed, Py_ssize_t window, double sent=_INF):
        """Consecutive-failure counter and the failure-rate ring of the last ``window`` outcomes.

        ``sent`` is the request's send time (now - latency). A success only ends a failure streak if its
        request was sent at or after the streak's first failed request: answers of requests queued before
        the backend broke say nothing about it now, so they must not reset a fresh streak.
        """
        cdef list ring = self.ring
        cdef Py_ssize_t i
        if failed:
            if self.consecutive == 0:
                self.streak_sent = sent
            self.consecutive += 1
        elif sent >= self.streak_sent:
            self.consecutive = 0
        if len(ring) < window:
            ring.append(failed)
            self.ring_fails += failed
        else:
            i = self.ring_i
            self.ring_fails += failed - <long long>ring[i]
            ring[i] = failed
            self.ring_i = (i + 1) % window
        self.ring_n += 1

    def reset_window(self):
        self.ring = []
        self.ring_i = 0
        self.ring_fails = 0
        self.consecutive = 0


# ---------------------------------------------------------------------------------------------------------
# Shared table across processes (sutazai_hwopt/balancer/shared.py owns the segment; its layout is defined in
# balancer_layout.pxi): 64-bit words updated with GCC atomics, so counts from many processes add up without a lock.

cdef extern from *:
    """
    static inline long long hwopt_atomic_add(long long *p, long long d) {
        return __atomic_add_fetch(p, d, __ATOMIC_SEQ_CST);
    }
    static inline long long hwopt_atomic_load(long long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void hwopt_atomic_store(long long *p, long long v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int hwopt_atomic_cas(long long *p, long long expected, long long v) {
        return __atomic_compare_exchange_n(p, &expected, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    """
    long long hwopt_atomic_add(long long *p, long long d) nogil
    long long hwopt_atomic_load(long long *p) nogil
    void hwopt_atomic_store(long long *p, long long v) nogil
    int hwopt_atomic_cas(long long *p, long long expected, long long v) nogil


cdef class AtomicWords:
    """Atomic 64-bit words over a writable buffer (a shared-memory segment); index = word number."""

    cdef object _view
    cdef long long *_base
    cdef public Py_ssize_t nwords

    def __init__(self, buf):
        cdef unsigned char[::1] mv = buf
        if mv.shape[0] < 8 or (<size_t>&mv[0]) % 8 != 0:
            raise ValueError("buffer must be 8-byte aligned and hold at least one word")
        self._view = mv
        self._base = <long long *>&mv[0]
        self.nwords = mv.shape[0] // 8

    cdef inline long long *_at(self, Py_ssize_t i) except NULL:
        if i < 0 or i >= self.nwords:
            raise IndexError(f"word {i} out of range 0..{self.nwords - 1}")
        return self._base + i

    def add(self, Py_ssize_t i, long long delta):
        """Atomically add ``delta`` to word ``i``; returns the new value."""
        return hwopt_atomic_add(self._at(i), delta)

    def load(self, Py_ssize_t i):
        """Atomic load of word ``i``."""
        return hwopt_atomic_load(self._at(i))

    def store(self, Py_ssize_t i, long long value):
        """Atomic store into word ``i``."""
        hwopt_atomic_store(self._at(i), value)

    def cas(self, Py_ssize_t i, long long expected, long long value):
        """Atomically set word ``i`` to ``value`` if it still holds ``expected``; True if it did."""
        return bool(hwopt_atomic_cas(self._at(i), expected, value))

    def gather(self, list indices):
        """Atomic loads of several words (one call for a whole table scan)."""
        cdef Py_ssize_t k, n = len(indices)
        cdef list out = [0] * n
        for k in range(n):
            out[k] = hwopt_atomic_load(self._at(indices[k]))
        return out

    def release(self):
        """Drop the buffer reference (before the segment is closed)."""
        self._view = None
        self._base = NULL
        self.nwords = 0


cdef inline bint _slot_ok(AtomicWords w, long long slot):
    return w is not None and w._base != NULL and 0 <= slot and slot + SLOT_WORDS <= w.nwords


cdef enum:
    PSLOW_STALE_VIEWS = 50  # looks at an idle backend, without a new completion, that halve its slowdown's excess


cdef void _view_one(Backend b, AtomicWords w):
    """Fill ``b.extra`` / ``b.xwork`` (what others have in flight there, as a count and as cost-weighted work)
    and, from a live reporter, ``b.pslow`` and ``b.pworkers``, from the shared slot of ``b``."""
    cdef long long *p = w._base + b.slot
    cdef long long g = hwopt_atomic_load(p + S_OUT), pub, fast, base, done
    cdef double xw = <double>(hwopt_atomic_load(p + S_WORK) - b.work_sh) / WORK_SCALE
    if xw < 0.0:
        xw = 0.0
    if b.pub_live:
        pub = hwopt_atomic_load(p + S_INFL) + hwopt_atomic_load(p + S_QUEUE)
        if pub > g:  # requests of clients without this table: counted by the backend only, at unit cost
            xw += pub - g
            g = pub
        fast = hwopt_atomic_load(p + S_SVC)
        base = hwopt_atomic_load(p + S_SVC_BASE)
        b.pslow = <double>fast / base if base > 0 and fast > 2 * base else 1.0
        # A slowdown figure is only refreshed by completions, and a backend everyone avoids has none: an idle
        # backend's figure ages with each look that finds nothing new (half its excess after PSLOW_STALE_VIEWS),
        # so a recovered backend gets a request again and its next completion tells the truth either way.
        done = hwopt_atomic_load(p + S_DONE)
        if done != b.pdone:
            b.pdone = done
            b.pstale = 0
        elif pub == 0:
            b.pstale += 1
        if b.pstale > 0 and b.pslow > 1.0:
            b.pslow = 1.0 + (b.pslow - 1.0) * PSLOW_STALE_VIEWS / (PSLOW_STALE_VIEWS + b.pstale)
        b.pworkers = <double>hwopt_atomic_load(p + S_WORKERS)
        b.pfail_run = hwopt_atomic_load(p + S_FAIL_RUN)
    else:
        b.pslow = 0.0
        b.pworkers = 0.0
        b.pfail_run = 0
    b.extra = <double>(g - b.in_flight) if g > b.in_flight else 0.0
    b.xwork = xw


cpdef void shared_begin(Backend b, AtomicWords w, double cost):
    """Count one request of ``cost`` selected on ``b`` in its shared slot (outstanding count and work)."""
    cdef long long *p
    cdef long long d
    if _slot_ok(w, b.slot):
        p = w._base + b.slot
        d = <long long>(cost * WORK_SCALE + 0.5)
        hwopt_atomic_add(p + S_OUT, 1)
        hwopt_atomic_add(p + S_WORK, d)
        b.work_sh += d


cpdef void shared_end(Backend b, AtomicWords w):
    """Remove one ended request of ``b`` (``in_flight`` already decremented) from its shared slot: its share
    of the work this process added, all of it when none is left in flight, so the sums stay exact."""
    cdef long long *p
    cdef long long d
    if _slot_ok(w, b.slot):
        p = w._base + b.slot
        d = b.work_sh if b.in_flight <= 0 else b.work_sh // (b.in_flight + 1)
        hwopt_atomic_add(p + S_OUT, -1)
        hwopt_atomic_add(p + S_WORK, -d)
        b.work_sh -= d


cdef inline void _view(Backend b, AtomicWords w):
    if b.slot >= 0 and b.slot + SLOT_WORDS <= w.nwords:
        _view_one(b, w)


cpdef void shared_view(list backends, AtomicWords words):
    """Refresh every backend's host-wide view (``extra``, ``pslow``) from the table (slot < 0: untouched)."""
    cdef Backend b
    for x in backends:
        b = <Backend>x
        if _slot_ok(words, b.slot):
            _view_one(b, words)


cdef inline double adaptive_cost(Backend b, double peers, double mc):
    cdef double n = peers * b.load + b.xwork
    if b.pworkers > 1.0:  # by the backend's word, that many are served at once: the rest wait
        n = n + 1.0 - b.pworkers
        if n < 0.0:
            n = 0.0
    cdef double c = (n + mc) / b.weight
    if b.pslow > 0.0:  # the backend's own word on its service time replaces the latency guess
        c *= b.pslow
    elif b.slot < 0 and b.base > 0.0 and b.ewma > 2.0 * b.base:  # with a host-wide count, see Adaptive
        c *= sqrt(b.ewma / (2.0 * b.base))
    return c


cdef Backend least_loaded(list cands, long long start, AtomicWords w=None):
    cdef Backend best = None, b
    cdef double best_load = _INF, load
    cdef Py_ssize_t n = len(cands), k
    for k in range(n):
        b = <Backend>cands[(start + k) % n]
        if w is not None:
            _view(b, w)
        if b.in_flight < b.max_conn:
            load = (b.in_flight + b.extra + 1) / b.weight
            if load < best_load:
                best = b
                best_load = load
    return best


cpdef object native_select(int code, Rotor st, list cands, double mc=1.0, AtomicWords words=None):
    """The compiled ``select`` of algorithm ``code`` (same result as its Python twin), or None if all full.

    With ``words`` (the shared table) each backend looked at first has its host-wide view refreshed from its
    slot (``shared_view``), so only the backends compared are read.
    """
    cdef Py_ssize_t n = len(cands), k, i, j
    cdef Backend b, a, best = None
    cdef double c, best_c = _INF
    cdef long long start
    if n == 0:
        return None
    if code == ALG_ADAPTIVE:
        if n <= st.scan_limit:
            st.i += 1
            start = <long long>(<double>st.rand() * n)  # random scan start: ties fall randomly (no herding)
            for k in range(n):
                b = <Backend>cands[(start + k) % n]
                if b.in_flight >= b.max_conn:
                    continue
                if words is not None:
                    _view(b, words)
                c = adaptive_cost(b, st.peers, mc)
                if c < best_c:
                    best = b
                    best_c = c
            return best
        for k in range(st.d):
            b = <Backend>cands[<Py_ssize_t>(<double>st.rand() * n)]
            if b.in_flight >= b.max_conn:
                continue
            if words is not None:
                _view(b, words)
            c = adaptive_cost(b, st.peers, mc)
            if c < best_c:
                best = b
                best_c = c
        return best if best is not None else least_loaded(cands, 0, words)
    if code == ALG_RR:
        for k in range(n):
            i = st.i % n
            st.i = i + 1
            b = <Backend>cands[i]
            if b.in_flight < b.max_conn:
                return b
        return None
    if code == ALG_LC:
        st.i += 1
        return least_loaded(cands, st.i, words)
    if code == ALG_P2C:
        i = <Py_ssize_t>(<double>st.rand() * n)
        if n == 1:
            a = b = <Backend>cands[i]
        else:
            j = <Py_ssize_t>(<double>st.rand() * (n - 1))
            if j >= i:
                j += 1
            a = <Backend>cands[i]
            b = <Backend>cands[j]
        if words is not None:
            _view(a, words)
            _view(b, words)
        if a.in_flight < a.max_conn and b.in_flight < b.max_conn:
            return a if (a.in_flight + a.extra + 1) / a.weight <= (b.in_flight + b.extra + 1) / b.weight else b
        if a.in_flight < a.max_conn:
            return a
        if b.in_flight < b.max_conn:
            return b
        return least_loaded(cands, 0, words)
    raise ValueError(f"unknown native algorithm code {code}")


cdef class Core:
    """Fast select + record of one balancer; anything unusual is handed to the Python shell's callables.

    The contract, all given at construction (the core never holds the balancer object):

    * ``clock()`` -> monotonic seconds;
    * ``route``: request type -> ``(canonical type, algorithm, code, Rotor)`` and ``backends``: service id ->
      ``Backend``, the shell's own dicts, read here, changed only by the shell under its lock;
    * ``default_rt``: the request type of a call that names none; ``locked()``: the shell holds its lock;
    * ``waiters``: the shell's list of waiting async callers (mutated in place, never rebound): when it is not
      empty after a result, ``wake()`` is called;
    * ``select_slow(request_type, session_id, now)`` and ``record_slow(service_id, latency_s, success,
      request_type, now or None)``: the complete Python paths; ``no_backend()`` raises the shell's error.

    The shell writes the flags (``dirty``, ``learn``, ``affinity``, ``probing``, ``next_change``,
    ``next_decay``), ``cands``, ``tcost``, ``shared``, ``tau`` and ``window``; the core only reads them.
    """

    cdef public bint dirty, learn, affinity, probing
    cdef public double next_change, next_decay, tau
    cdef public list cands
    cdef public dict route, backends, tcost
    cdef public object clock, shared, default_rt, locked
    cdef public AtomicWords words  # the shared table's words (None: no table, or not a SharedState)
    cdef public long long fail_k  # a backend reporting this many consecutive failures goes to the shell
    cdef public long long shared_seen  # the table's ejection version the shell last applied
    cdef public Py_ssize_t window
    cdef readonly list waiters
    cdef readonly object select_slow, record_slow, no_backend, wake

    def __init__(self, clock, dict route, dict backends, default_rt, locked, list waiters, *,
                 select_slow, record_slow, no_backend, wake):
        self.clock = clock
        self.route = route
        self.backends = backends
        self.default_rt = default_rt
        self.locked = locked
        self.waiters = waiters
        self.select_slow = select_slow
        self.record_slow = record_slow
        self.no_backend = no_backend
        self.wake = wake
        self.probing = False
        self.cands = []
        self.dirty = True
        self.learn = False
        self.affinity = True
        self.next_change = _INF
        self.next_decay = 0.0
        self.tau = 1.0
        self.window = 32
        self.shared = None
        self.words = None
        self.shared_seen = -1
        self.fail_k = 2
        self.tcost = {}

    def select(self, request_type=None, session_id=None):
        """Fast path of ``select_backend_sync``: built-in algorithm, nothing due, no session, no new shared
        ejection (with a shared table it reads the compared backends' slots and counts the request there)."""
        cdef double now = self.clock()
        if request_type is None:
            request_type = self.default_rt
        entry = self.route.get(request_type)
        cdef AtomicWords w = self.words
        if (entry is None or self.dirty or now >= self.next_change or now >= self.next_decay
                or (self.shared is not None and (w is None or w._base == NULL
                                                 or hwopt_atomic_load(w._base + H_VERSION) != self.shared_seen))
                or self.learn or self.probing
                or (session_id is not None and self.affinity) or self.locked()):
            return self.select_slow(request_type, session_id, now)
        cdef tuple e = <tuple>entry
        cdef int code = e[2]
        if code == ALG_PY:
            return self.select_slow(request_type, session_id, now)
        cdef TypeCost tc = <TypeCost>self.tcost[e[0]]
        if self.shared is None:
            w = None
        b = native_select(code, <Rotor>e[3], self.cands, tc.cost, w)
        if b is None:
            return self.no_backend()
        cdef Backend bb = <Backend>b
        if bb.pfail_run >= self.fail_k and w is not None:  # it says it is failing: the shell ejects it
            return self.select_slow(request_type, session_id, now)
        bb.in_flight += 1
        bb.load += tc.cost
        if w is not None:
            shared_begin(bb, w, tc.cost)
        return bb.service

    def record(self, service_id, double latency_s, success, request_type=None):
        """Fast path of ``record_result``: a healthy backend, nothing learned (a shared count is decremented)."""
        cdef AtomicWords w = self.words
        if (not (0.0 <= latency_s < _INF) or self.learn
                or (self.shared is not None and (w is None or w._base == NULL))):
            return self.record_slow(service_id, latency_s, success, request_type, None)
        if request_type is None:
            request_type = self.default_rt
        cdef double now = self.clock()  # first: user code may switch threads, nothing below does
        entry = self.route.get(request_type)
        b = self.backends.get(service_id)
        if entry is None or b is None or not success:
            return self.record_slow(service_id, latency_s, success, request_type, now)
        cdef Backend bb = <Backend>b
        if bb.in_flight <= 0 or bb.state != HEALTHY or self.locked():
            return self.record_slow(service_id, latency_s, success, request_type, now)
        rt = (<tuple>entry)[0]
        bb.in_flight -= 1
        if self.shared is not None:
            shared_end(bb, w)
        cdef TypeCost tc = <TypeCost>self.tcost[rt]
        bb.end_load(tc.cost)
        tc.learn(latency_s, bb.weight)
        st = bb.stats.get(rt)
        cdef TypeStats ts = bb.type_stats(rt) if st is None else <TypeStats>st
        ts.requests += 1
        ts.sketch._add(latency_s)
        bb.observe_latency(latency_s, now, self.tau)
        bb.observe_base(latency_s)
        bb.record_outcome(0, self.window, now - latency_s)
        if self.waiters:
            self.wake()


# ---------------------------------------------------------------------------------------------------------
# Backend side: a serving process publishes its own load into its slot (sutazai_hwopt/balancer/reporter.py
# owns registration and the public API). Only atomic adds and stores of this process's own slot; no lock.

cdef inline long long _mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class ReporterCore:
    """The request-path bookkeeping of one reporting backend: counts and service-time EWMAs in its slot.

    ``begin()`` counts a request in flight and returns its start (monotonic ns); ``done(start, ok)`` ends it:
    a success folds its service time into the fast (1/8) and slow (1/512) EWMAs (plain means until that many
    successes), a failure counts in the
    failure words and leaves the service time alone (a fast error answer is not a fast backend).
    ``serving()`` is the same pair as a context manager (an exception inside counts as a failure).
    """

    cdef AtomicWords words
    cdef long long *_p
    cdef readonly long long slot

    def __init__(self, AtomicWords words, long long slot):
        if not _slot_ok(words, slot):
            raise ValueError(f"slot {slot} is not a slot of the table")
        self.words = words
        self.slot = slot
        self._p = words._base + slot

    cdef inline long long *_ptr(self) except NULL:
        if self.words._base == NULL:
            from sutazai_hwopt.errors import StateError
            raise StateError("the shared table of this reporter is closed")
        return self._p

    cdef inline void _end(self, long long *p, long long ns, bint ok) noexcept nogil:
        cdef long long fast, base, n
        hwopt_atomic_add(p + S_INFL, -1)
        n = hwopt_atomic_add(p + S_DONE, 1) - hwopt_atomic_load(p + S_FAILS)  # successes, this one included
        if ok:
            if ns < 1:
                ns = 1
            fast = hwopt_atomic_load(p + S_SVC)
            base = hwopt_atomic_load(p + S_SVC_BASE)
            # plain means over the first samples, then EWMAs: the first sample alone is no baseline
            if fast <= 0 or n <= 1:
                fast = ns
                base = ns
            else:
                fast += (ns - fast) // (n if n < 8 else 8)
                base += (ns - base) // (n if n < 512 else 512)
            hwopt_atomic_store(p + S_SVC, fast)
            hwopt_atomic_store(p + S_SVC_BASE, base)
            if hwopt_atomic_load(p + S_FAIL_RUN) != 0:
                hwopt_atomic_store(p + S_FAIL_RUN, 0)
        else:
            hwopt_atomic_add(p + S_FAILS, 1)
            hwopt_atomic_add(p + S_FAIL_RUN, 1)

    def begin(self):
        """Count one request in flight; returns its start time (monotonic ns) for :meth:`done`."""
        hwopt_atomic_add(self._ptr() + S_INFL, 1)
        return _mono_ns()

    def done(self, long long start_ns, bint ok=True):
        """End the request begun at ``start_ns`` (its service time is measured up to now)."""
        self._end(self._ptr(), _mono_ns() - start_ns, ok)

    def enter(self):
        """Count one request in flight (for callers that measure service time themselves)."""
        hwopt_atomic_add(self._ptr() + S_INFL, 1)

    def exit(self, double service_s, bint ok=True):
        """End one request that took ``service_s`` seconds of service (a simulation's own clock)."""
        self._end(self._ptr(), <long long>(service_s * 1e9), ok)

    def queue_add(self, long long delta):
        """Add ``delta`` to the published queue (requests waiting before they are served)."""
        hwopt_atomic_add(self._ptr() + S_QUEUE, delta)

    def serving(self):
        """``with core.serving(): ...`` counts the block as one request (an exception: a failure)."""
        cdef _Serving cm = _Serving.__new__(_Serving)  # no argument parsing: tp_new of a free-listed type
        cm.core = self
        cm.vc = <_hwopt_vcf>_serving_vc
        return cm

    def queued(self):
        """``with core.queued(): ...`` counts the block as one request waiting in the backend's queue."""
        cdef _Queued cm = _Queued.__new__(_Queued)
        cm.core = self
        cm.vc = <_hwopt_vcf>_queued_vc
        return cm


# The ``with`` statement's own cost. CPython looks ``__enter__`` and ``__exit__`` up on the type and binds each
# to the instance (two method objects allocated, then freed) and calls ``__exit__`` through argument parsing:
# about two thirds of ``with reporter.serving():`` before the bookkeeping itself (benches/test_balancer_published.py).
# So the two context types below keep the ordinary methods for code that reads them from the class (e.g.
# contextlib.ExitStack: ``type(cm).__enter__(cm)``), but an instance's ``__enter__`` / ``__exit__`` resolve to the
# instance itself (``_SelfMethod``), which is called through the vectorcall protocol (``_enable_vectorcall``):
# no argument -> enter, three (exc type, value, traceback) -> exit. Nothing is allocated per ``with`` beyond the
# free-listed context object.

cdef extern from *:
    """
    typedef PyObject *(*hwopt_vcf)(PyObject *, PyObject **, size_t, PyObject *);
    static int hwopt_enable_vectorcall(PyTypeObject *t, Py_ssize_t offset) {
        t->tp_vectorcall_offset = offset;
        t->tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL;
        PyType_Modified(t);
        return 0;
    }
    """
    ctypedef object (*_hwopt_vcf "hwopt_vcf")(object, PyObject **, size_t, PyObject *)
    int hwopt_enable_vectorcall(PyTypeObject *t, Py_ssize_t offset) except -1
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)


cdef str _CM_ARGS = "a context object takes no argument (enter) or three (exit)"


@cython.final
cdef class _SelfMethod:
    """Class attribute ``__enter__`` / ``__exit__``: the plain function on the class, the instance itself on an
    instance (which the vectorcall slot then runs as that method)."""

    cdef object func

    def __get__(self, instance, owner):
        return self.func if instance is None else instance


cdef inline int _cm_args(PyObject **args, size_t nargsf, PyObject *kwnames) except -2:
    """0 (enter) or 1 (exit, exception type None) or 2 (exit with an exception); TypeError otherwise."""
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf)
    if kwnames == NULL or len(<object>kwnames) == 0:
        if n == 0:
            return 0
        if n == 3:
            return 1 if args[0] == <PyObject *>None else 2
    raise TypeError(_CM_ARGS)


cdef object _serving_vc(object o, PyObject **args, size_t nargsf, PyObject *kwnames):
    cdef _Serving cm = <_Serving>o
    cdef int what = _cm_args(args, nargsf, kwnames)
    if what == 0:
        hwopt_atomic_add(cm.core._ptr() + S_INFL, 1)
        cm.t0 = _mono_ns()
        return None
    cm.core._end(cm.core._ptr(), _mono_ns() - cm.t0, what == 1)
    return False


cdef object _queued_vc(object o, PyObject **args, size_t nargsf, PyObject *kwnames):
    cdef _Queued cm = <_Queued>o
    cdef int what = _cm_args(args, nargsf, kwnames)
    hwopt_atomic_add(cm.core._ptr() + S_QUEUE, 1 if what == 0 else -1)
    return None if what == 0 else False


def _serving_enter(_Serving cm):
    hwopt_atomic_add(cm.core._ptr() + S_INFL, 1)
    cm.t0 = _mono_ns()


def _serving_exit(_Serving cm, et, ev, tb):
    cm.core._end(cm.core._ptr(), _mono_ns() - cm.t0, et is None)
    return False


def _queued_enter(_Queued cm):
    hwopt_atomic_add(cm.core._ptr() + S_QUEUE, 1)


def _queued_exit(_Queued cm, et, ev, tb):
    hwopt_atomic_add(cm.core._ptr() + S_QUEUE, -1)
    return False


cdef object _cm_call(cm, tuple args, enter, exit):
    if len(args) == 0:
        enter(cm)
        return None
    if len(args) == 3:
        return exit(cm, *args)
    raise TypeError(_CM_ARGS)


cdef _SelfMethod _self_method(func):
    cdef _SelfMethod m = _SelfMethod.__new__(_SelfMethod)
    m.func = func
    return m


@cython.final
@cython.no_gc  # holds only its reporter, which never refers back: no cycle to collect
@cython.freelist(64)
cdef class _Serving:
    """One ``with reporter.serving():`` block (see the note above on how ``with`` calls it)."""

    cdef _hwopt_vcf vc  # read by CPython at the offset given to hwopt_enable_vectorcall
    cdef ReporterCore core
    cdef long long t0
    __enter__ = _self_method(_serving_enter)
    __exit__ = _self_method(_serving_exit)

    def __call__(self, *args):
        """Only the ``with`` statement calls this (its vectorcall slot; here for callers without it)."""
        return _cm_call(self, args, _serving_enter, _serving_exit)


@cython.final
@cython.no_gc
@cython.freelist(64)
cdef class _Queued:
    """One ``with reporter.queued():`` block."""

    cdef _hwopt_vcf vc
    cdef ReporterCore core
    __enter__ = _self_method(_queued_enter)
    __exit__ = _self_method(_queued_exit)

    def __call__(self, *args):
        """Only the ``with`` statement calls this (its vectorcall slot; here for callers without it)."""
        return _cm_call(self, args, _queued_enter, _queued_exit)


cdef int _enable_vectorcall() except -1:
    """Point both context types' vectorcall slot at their ``vc`` field (its offset measured on an instance)."""
    cdef _Serving s = _Serving.__new__(_Serving)
    cdef _Queued q = _Queued.__new__(_Queued)
    hwopt_enable_vectorcall(<PyTypeObject *>_Serving, <char *>&s.vc - <char *><void *>s)
    hwopt_enable_vectorcall(<PyTypeObject *>_Queued, <char *>&q.vc - <char *><void *>q)
    return 0


_enable_vectorcall()
