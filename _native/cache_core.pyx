# Compiled cache core: one open-addressing hash table of slot indices, slot metadata in C arrays and
# intrusive doubly-linked lists, so a hit allocates no Python object.
#
# Policies (each also modelled in plain Python in sutazai_hwopt/cache/reference.py):
#   LRU; LFU with O(1) frequency buckets (Shah, Mitra, Matani 2010), ties evict the oldest of the lowest
#   frequency; ARC (Megiddo & Modha, FAST 2003, Fig. 4, real-valued target p); S3-FIFO (Yang et al.,
#   SOSP 2023); SIEVE (Zhang et al., NSDI 2024); W-TinyLFU (Einziger, Friedman, Manes, ACM ToS 2017) with a
#   1% window and SLRU main; LIRS (Jiang & Zhang, SIGMETRICS 2002); "adaptive": runs one of LRU, W-TinyLFU,
#   LIRS and S3-FIFO, chosen by miniature simulations (Waldspurger et al., "Cache Modeling and Optimization
#   using Miniature Simulations", ATC 2017): shadow caches of maxsize/R entries fed with the 1/R of keys
#   whose hash falls in the sample (set dueling, Qureshi et al., ISCA 2007); every selection period the
#   decayed shadow hit counts are compared and, when another policy leads by more than 1% of the sampled
#   accesses, the resident entries are migrated into its structure. (The hill-climbing W-TinyLFU of Einziger
#   et al., Middleware 2018, was tried first and measured worse: see docs/cache.md.)
#
# Atomicity: with the GIL, a method of this class is atomic as long as it runs no Python code. The only
# Python code it may run is the key's __hash__/__eq__ (the lookup restarts if the table changed meanwhile),
# the weigher and the clock (both called before anything is changed), and the on_evict callback and
# __del__ of released keys and values (both run after the structure is consistent again).

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset
from libc.math cimport ceil, floor, INFINITY
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from debug cimport HWOPT_DEBUG

import math
cimport cython

from sutazai_hwopt.errors import InvalidArgumentError, WeightError, UnhashableKeyError

cdef extern from "Python.h":
    object PyList_New(Py_ssize_t n)
    void PyList_SET_ITEM(object l, Py_ssize_t i, object o)
    Py_hash_t PyObject_Hash(object o) except? -1
    int PyObject_RichCompareBool(PyObject* a, PyObject* b, int op) except -1
    int Py_EQ

# policy kinds
DEF K_LRU = 0
DEF K_LFU = 1
DEF K_ARC = 2
DEF K_S3 = 3
DEF K_SIEVE = 4
DEF K_WTLFU = 5
DEF K_LIRS = 6
DEF K_ADAPT = 7
# fixed list ids; LFU frequency buckets use ids >= L_BUCKET
DEF L_MAIN = 0      # LRU, ARC T2, S3 main, SIEVE queue, W-TinyLFU protected, LIRS stack S
DEF L_SMALL = 1     # ARC T1, S3 small, W-TinyLFU window, LIRS queue Q
DEF L_PROB = 2      # W-TinyLFU probation
DEF L_G1 = 3        # ARC B1, S3 ghost
DEF L_G2 = 4        # ARC B2
DEF L_PRIO = 10     # priority p >= 1 lives in list L_PRIO + p - 1 (LRU within a level)
DEF L_BUCKET = 20
DEF NPRIO = 10
DEF WHEEL = 256
DEF W_NONE = -100000   # wprv value of a slot not in the timer wheel (heads hold -1 - bucket)
# LIRS flags (meta bits)
DEF F_LIR = 1
DEF F_INQ = 2

# The TinyLFU sketch covers at most this many keys (1 MiB): a cache with a huge maxsize (an L1 bounded by
# bytes) does not pay 8 bytes per *potential* entry up front; beyond it the estimates get coarser.
DEF SKETCH_KEYS_MAX = 131072
DEF SEED2 = 0x13198A2E03707344 # shadow sampling hash seed
DEF SEED = 0x243F6A8885A308D3  # TinyLFU sketch hash seed (hex digits of pi)

cdef object _MISSING = object()

# THE policy list of the project: each name next to its kind code, here and nowhere else. Everything else derives
# from it: POLICIES below, sutazai_hwopt.cache.policies (and through it the API, the reference model and the
# configuration's choices); tests/cache/test_parity.py checks the docs and the reference model against it.
cdef dict _KIND_OF = {"lru": K_LRU, "lfu": K_LFU, "arc": K_ARC, "s3fifo": K_S3, "sieve": K_SIEVE,
                      "wtinylfu": K_WTLFU, "lirs": K_LIRS, "adaptive": K_ADAPT}

#: policy names ordered by kind code (``POLICIES[kind]`` is the name of a kind)
POLICIES = tuple(sorted(_KIND_OF, key=_KIND_OF.__getitem__))
if [_KIND_OF[p] for p in POLICIES] != list(range(len(POLICIES))):
    raise ImportError("cache_core: policy kind codes must be 0..n-1")

#: the policies the adaptive policy selects among (its shadow caches, in this order)
SELECTABLE = ("lru", "wtinylfu", "lirs", "s3fifo")

cdef struct Slot:
    PyObject* key          # NULL for a free slot or a ghost
    PyObject* val
    Py_hash_t hash

cdef struct Event:
    PyObject* key
    PyObject* val
    int cause

cdef struct Link:
    int32_t prv
    int32_t nxt
    int32_t lst            # list id, -1 when in no list
    uint8_t freq           # policy bits: SIEVE visited, S3-FIFO counter, LIRS flags
    uint8_t prio


cdef inline double _mono() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint64_t _mix(uint64_t h, uint64_t seed) noexcept:
    h = (h ^ seed) * <uint64_t>0x9E3779B97F4A7C15
    return h ^ (h >> 29)


cdef class CacheCore:
    """The compiled engine behind :class:`sutazai_hwopt.cache.Cache` (use that class, not this one)."""

    cdef Slot* kv              # key, value, hash (what a lookup touches)
    cdef Link* ln              # list links and policy bits (what a policy update touches)
    cdef int64_t* wts          # NULL until a weight != 1 is stored
    cdef double* expires       # NULL until a TTL is used
    cdef int32_t* wprv         # timer-wheel links
    cdef int32_t* wnxt
    cdef int32_t* lprv         # LIRS second list (queue Q) links
    cdef int32_t* lnxt
    cdef int32_t cap, max_slots, free_head, nslots_used
    cdef int32_t* table
    cdef uint64_t tsize
    cdef int tshift
    # lists
    cdef int32_t* lhead
    cdef int32_t* ltail
    cdef int32_t* lcnt
    cdef int32_t nlists
    # LFU buckets
    cdef int64_t* bfreq
    cdef int32_t* bprv
    cdef int32_t* bnxt
    cdef int32_t bfree, bmin
    # config / state
    cdef readonly int kind
    cdef readonly int64_t maxsize
    cdef readonly int64_t max_weight
    cdef int64_t n_res, weight
    cdef int64_t lvl_cnt[NPRIO]
    cdef int64_t lvl_wt[NPRIO]
    cdef uint64_t version
    # Set by the constructor only (read-only from Python): the API layer wraps on_evict to log the user
    # callback's exceptions, and a later assignment would bypass that wrapper.
    cdef readonly object weigher
    cdef readonly object on_evict
    cdef readonly object clock
    cdef double default_ttl, tick
    cdef int64_t n_ttl, last_tick
    cdef int32_t wheel[WHEEL]
    cdef Event* ev               # evictions waiting for on_evict (owned references)
    cdef Py_ssize_t nev, ev_cap
    # deferred releases
    cdef PyObject** dead
    cdef Py_ssize_t ndead, dead_cap
    # stats
    cdef readonly int64_t hits, misses, evictions, evicted_weight, expirations, rejections
    # policy state
    cdef double arc_p
    cdef int32_t hand
    cdef bint s3_evicted
    cdef int64_t small_max, ghost_max, win_max, prot_max, lir_max, nonres_max
    cdef uint8_t* sketch
    cdef uint64_t sk_blocks
    cdef int64_t sk_add, sk_period
    # adaptive: miniature simulations (spatially sampled shadow caches) of LRU, W-TinyLFU and LIRS choose
    # which of them the cache runs (Waldspurger et al., ATC 2017; set dueling, Qureshi et al., ISCA 2007)
    cdef readonly bint adaptive
    cdef readonly int64_t switches
    cdef list shadows
    cdef int64_t sh_hits[4]
    cdef double sh_score[4]
    cdef double sh_n, sh_margin
    cdef int64_t sh_count, sel_count, sel_period
    cdef uint64_t sh_thresh

    def __cinit__(self, *args, **kwargs):
        self.kv = NULL
        self.ln = NULL
        self.table = NULL
        self.cap = 0
        self.dead = NULL

    def __init__(self, int64_t maxsize, str policy="adaptive", int64_t max_weight=-1, object weigher=None,
                 object ttl=None, object on_evict=None, object clock=None, double window=0.01,
                 int64_t climb_period=0, int64_t sketch_period=0, int64_t sketch_min=0,
                 double switch_margin=0.01):
        cdef int32_t i
        if self.kv != NULL:
            raise InvalidArgumentError("CacheCore.__init__ may be called only once")
        if maxsize < 1 or maxsize > (1 << 29):
            raise InvalidArgumentError(f"maxsize must be an integer in [1, 2**29], got {maxsize!r}")
        if policy not in POLICIES:
            raise InvalidArgumentError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")
        self.kind = _KIND_OF[policy]
        if self.kind == K_ADAPT:
            self.adaptive = True
            self.kind = K_WTLFU
        self.maxsize = maxsize
        self.max_weight = max_weight if max_weight >= 0 else (1 << 62)
        self.weigher = weigher
        self.on_evict = on_evict
        self.clock = clock
        self.default_ttl = self._check_ttl(ttl) if ttl is not None else 0.0
        self.tick = min(max(self.default_ttl / 32.0, 0.001), 60.0) if self.default_ttl > 0 else 1.0
        for i in range(WHEEL):
            self.wheel[i] = -1
        self.last_tick = -1
        cdef int64_t ghosts = 0
        if self.kind == K_ARC:
            ghosts = maxsize
        if self.kind == K_S3 or self.adaptive:
            self.small_max = max(1, <int64_t>(0.1 * maxsize))
            self.ghost_max = max(1, <int64_t>(0.9 * maxsize))
            ghosts = self.ghost_max
        if self.kind == K_LIRS or self.adaptive:
            self.lir_max = max(1, <int64_t>((1.0 - window) * maxsize)) if maxsize > 1 else 1
            if self.lir_max >= maxsize and maxsize > 1:
                self.lir_max = maxsize - 1
            self.nonres_max = 2 * maxsize
            ghosts = self.nonres_max
        if self.kind == K_WTLFU:
            if not (0.0 <= window < 1.0):
                raise InvalidArgumentError(f"window must be in [0, 1), got {window!r}")
            self._set_window(max(1, <int64_t>(window * maxsize)) if maxsize > 1 else 0)
            # one 64-byte block (64 counters) per 10.7 keys: 6 bytes per entry, any block count (the block
            # index is a multiply-shift range reduction, Lemire 2019, not a power-of-two mask)
            self.sk_blocks = max(1, (3 * min(max(maxsize, sketch_min), SKETCH_KEYS_MAX) + 31) // 32)
            self.sketch = <uint8_t*>PyMem_Malloc(self.sk_blocks << 6)
            if self.sketch == NULL:
                raise MemoryError()
            memset(self.sketch, 0, self.sk_blocks << 6)
            # the adaptive policy ages its sketch twice as often (5 x maxsize samples): measured better on
            # phase shifts at no cost on stable Zipf traces (benches/bench_cache_hitratio.py)
            self.sk_period = sketch_period if sketch_period > 0 else 10 * maxsize
        self.max_slots = <int32_t>(maxsize + ghosts + 2)
        self.nlists = L_BUCKET + (self.max_slots + 1 if self.kind == K_LFU else 0)
        self.lhead = <int32_t*>PyMem_Malloc(self.nlists * sizeof(int32_t))
        self.ltail = <int32_t*>PyMem_Malloc(self.nlists * sizeof(int32_t))
        self.lcnt = <int32_t*>PyMem_Malloc(self.nlists * sizeof(int32_t))
        if self.lhead == NULL or self.ltail == NULL or self.lcnt == NULL:
            raise MemoryError()
        for i in range(self.nlists):
            self.lhead[i] = -1
            self.ltail[i] = -1
            self.lcnt[i] = 0
        if self.kind == K_LFU:
            self.bfreq = <int64_t*>PyMem_Malloc(self.nlists * sizeof(int64_t))
            self.bprv = <int32_t*>PyMem_Malloc(self.nlists * sizeof(int32_t))
            self.bnxt = <int32_t*>PyMem_Malloc(self.nlists * sizeof(int32_t))
            if self.bfreq == NULL or self.bprv == NULL or self.bnxt == NULL:
                raise MemoryError()
            self.bfree = -1
            for i in range(self.nlists - 1, L_BUCKET - 1, -1):
                self.bnxt[i] = self.bfree
                self.bfree = i
            self.bmin = -1
        self.hand = -1
        self._grow(min(self.max_slots, 16))
        cdef int64_t r
        if self.adaptive:
            r = min(64, max(1, maxsize // 128))
            self.sh_thresh = (<uint64_t>1 << 32) // <uint64_t>r
            self.shadows = [CacheCore(max(1, maxsize // r), p) for p in SELECTABLE]
            self.sel_period = climb_period if climb_period > 0 else max(1024, 4 * maxsize)
            self.sh_margin = switch_margin

    def __dealloc__(self):
        cdef int32_t i
        if self.kv != NULL:
            for i in range(self.cap):
                if self.kv[i].key != NULL:
                    Py_DECREF(<object>self.kv[i].key)
                if self.kv[i].val != NULL:
                    Py_DECREF(<object>self.kv[i].val)
        PyMem_Free(self.kv); PyMem_Free(self.ln)
        PyMem_Free(self.wts); PyMem_Free(self.expires); PyMem_Free(self.wprv); PyMem_Free(self.wnxt)
        PyMem_Free(self.lprv); PyMem_Free(self.lnxt); PyMem_Free(self.table); PyMem_Free(self.lhead)
        PyMem_Free(self.ltail); PyMem_Free(self.lcnt); PyMem_Free(self.bfreq); PyMem_Free(self.bprv)
        PyMem_Free(self.bnxt); PyMem_Free(self.sketch); PyMem_Free(self.dead)
        for j in range(self.nev):
            Py_DECREF(<object>self.ev[j].key)
            Py_DECREF(<object>self.ev[j].val)
        PyMem_Free(self.ev)

    # ------------------------------------------------------------------ storage
    cdef int _grow(self, int32_t newcap) except -1:
        cdef int32_t i, old = self.cap
        cdef void* p
        if newcap <= old:
            return 0
        self.kv = <Slot*>self._re(self.kv, newcap * sizeof(Slot))
        self.ln = <Link*>self._re(self.ln, newcap * sizeof(Link))
        if self.wts != NULL:
            self.wts = <int64_t*>self._re(self.wts, newcap * sizeof(int64_t))
        if self.expires != NULL:
            self.expires = <double*>self._re(self.expires, newcap * sizeof(double))
            self.wprv = <int32_t*>self._re(self.wprv, newcap * sizeof(int32_t))
            self.wnxt = <int32_t*>self._re(self.wnxt, newcap * sizeof(int32_t))
        if self.kind == K_LIRS or self.lprv != NULL:
            self.lprv = <int32_t*>self._re(self.lprv, newcap * sizeof(int32_t))
            self.lnxt = <int32_t*>self._re(self.lnxt, newcap * sizeof(int32_t))
        for i in range(newcap - 1, old - 1, -1):
            self.kv[i].key = NULL
            self.kv[i].val = NULL
            self.ln[i].lst = -1
            self.ln[i].freq = 0
            self.ln[i].prio = 0
            self.ln[i].nxt = self.free_head if i < newcap - 1 or old > 0 else -1
            if self.wts != NULL:
                self.wts[i] = 1
            if self.expires != NULL:
                self.expires[i] = INFINITY
                self.wprv[i] = W_NONE
        # free list: new slots old..newcap-1 in order, then the previous free list
        for i in range(old, newcap - 1):
            self.ln[i].nxt = i + 1
        self.ln[newcap - 1].nxt = self.free_head if old > 0 else -1
        self.free_head = old
        self.cap = newcap
        # table: a power of two with load factor <= 3/4 when every slot is used
        cdef uint64_t ts = 16
        cdef int sh = 60
        while ts < <uint64_t>(2 * newcap):
            ts <<= 1
            sh -= 1
        if ts != self.tsize:
            PyMem_Free(self.table)
            self.table = <int32_t*>PyMem_Malloc(ts * sizeof(int32_t))
            if self.table == NULL:
                raise MemoryError()
            for i in range(<int32_t>ts):
                self.table[i] = -1
            self.tsize = ts
            self.tshift = sh
            for i in range(old):
                if self.kv[i].key != NULL or self.ln[i].lst >= 0:   # resident or ghost
                    self._tinsert(i)
        return 0

    cdef void* _re(self, void* p, size_t n) except NULL:
        cdef void* q = PyMem_Realloc(p, n)
        if q == NULL:
            raise MemoryError()
        return q

    cdef int32_t _alloc(self) except -1:
        cdef int32_t i
        cdef int32_t want
        if self.free_head < 0:
            want = max(16, 2 * self.cap)
            if self.cap < self.maxsize + 2 and want > self.maxsize + 2:
                want = self.maxsize + 2        # room for the residents first; ghosts may grow it later
            self._grow(min(self.max_slots, want))
            if self.free_head < 0:
                raise MemoryError("cache slots exhausted")
        i = self.free_head
        self.free_head = self.ln[i].nxt
        self.nslots_used += 1
        return i

    cdef inline void _free(self, int32_t i) noexcept:
        self.ln[i].lst = -1
        self.ln[i].nxt = self.free_head
        self.free_head = i
        self.nslots_used -= 1

    cdef inline uint64_t _home(self, Py_hash_t h) noexcept:
        return (<uint64_t>h * <uint64_t>0x9E3779B97F4A7C15) >> (self.tshift + 0) & (self.tsize - 1)

    cdef void _tinsert(self, int32_t i) noexcept:
        cdef uint64_t pos = self._home(self.kv[i].hash), mask = self.tsize - 1
        while self.table[pos] >= 0:
            pos = (pos + 1) & mask
        self.table[pos] = i

    cdef void _tdelete(self, int32_t i) noexcept:
        cdef uint64_t mask = self.tsize - 1
        cdef uint64_t pos = self._home(self.kv[i].hash), j, home
        cdef int32_t e
        while self.table[pos] != i:
            pos = (pos + 1) & mask
        j = pos
        while True:
            j = (j + 1) & mask
            e = self.table[j]
            if e < 0:
                break
            home = self._home(self.kv[e].hash)
            if ((j - home) & mask) >= ((j - pos) & mask):
                self.table[pos] = e
                pos = j
        self.table[pos] = -1
        self.version += 1

    cdef inline int32_t _probe(self, object key, Py_hash_t h) except -2:
        """Fast path of :meth:`_find` for a resident key found by identity; else defers to it."""
        cdef uint64_t mask = self.tsize - 1
        cdef uint64_t pos = self._home(h)
        cdef int32_t i, g
        while True:
            i = self.table[pos]
            if i < 0:
                return -1
            if self.kv[i].hash == h:
                if self.kv[i].key == <PyObject*>key:
                    return i
                return self._find(key, h, &g)
            pos = (pos + 1) & mask

    cdef int32_t _find(self, object key, Py_hash_t h, int32_t* ghost) except -2:
        """Resident slot of ``key`` or -1; ``ghost[0]`` gets a ghost slot with the same hash, or -1."""
        cdef uint64_t mask, pos
        cdef int32_t i
        cdef PyObject* k
        cdef uint64_t ver
        cdef int r
        while True:
            mask = self.tsize - 1
            pos = self._home(h)
            ghost[0] = -1
            while True:
                i = self.table[pos]
                if i < 0:
                    return -1
                if self.kv[i].hash == h:
                    k = self.kv[i].key
                    if k == NULL:
                        if ghost[0] < 0:
                            ghost[0] = i
                    elif k == <PyObject*>key:
                        return i
                    else:
                        ver = self.version
                        Py_INCREF(<object>k)
                        try:
                            r = PyObject_RichCompareBool(k, <PyObject*>key, Py_EQ)
                        finally:
                            Py_DECREF(<object>k)
                        if self.version != ver:
                            break  # the table changed under __eq__: restart the lookup
                        if r:
                            return i
                pos = (pos + 1) & mask

    cdef inline void _defer(self, PyObject* o) except *:
        if self.ndead == self.dead_cap:
            self.dead_cap = max(16, 2 * self.dead_cap)
            self.dead = <PyObject**>self._re(self.dead, self.dead_cap * sizeof(PyObject*))
        self.dead[self.ndead] = o
        self.ndead += 1

    cdef int _release(self) except -1:
        """Drop deferred references and fire on_evict, now that the structure is consistent.

        Nothing during an operation allocates a garbage-collected object (a collection could run finalizers,
        which may re-enter the cache or let another thread in): evictions are recorded in a C array here
        and turned into callbacks only now.
        """
        cdef PyObject* o
        cdef Event* batch
        cdef Py_ssize_t n, j
        while self.ndead:
            self.ndead -= 1
            o = self.dead[self.ndead]
            Py_DECREF(<object>o)
        while self.nev:
            n = self.nev
            batch = <Event*>self._re(NULL, n * sizeof(Event))
            memcpy(batch, self.ev, n * sizeof(Event))
            self.nev = 0                    # callbacks may evict again: they get a fresh buffer
            try:
                for j in range(n):
                    if self.on_evict is not None:
                        self.on_evict(<object>batch[j].key, <object>batch[j].val,
                                      "evicted" if batch[j].cause == 1 else "expired")
            finally:
                for j in range(n):
                    Py_DECREF(<object>batch[j].key)
                    Py_DECREF(<object>batch[j].val)
                PyMem_Free(batch)
        return 0

    # ------------------------------------------------------------------ lists
    cdef inline void _push(self, int32_t l, int32_t i) noexcept:
        cdef int32_t h = self.lhead[l]
        self.ln[i].prv = -1
        self.ln[i].nxt = h
        if h >= 0:
            self.ln[h].prv = i
        else:
            self.ltail[l] = i
        self.lhead[l] = i
        self.lcnt[l] += 1
        self.ln[i].lst = l

    cdef inline void _unlink(self, int32_t i) noexcept:
        cdef int32_t l = self.ln[i].lst, p = self.ln[i].prv, n = self.ln[i].nxt
        if p >= 0:
            self.ln[p].nxt = n
        else:
            self.lhead[l] = n
        if n >= 0:
            self.ln[n].prv = p
        else:
            self.ltail[l] = p
        self.lcnt[l] -= 1
        self.ln[i].lst = -1

    cdef inline void _move(self, int32_t l, int32_t i) noexcept:
        if self.lhead[l] == i:
            return
        self._unlink(i)
        self._push(l, i)

    # LIRS second intrusive list (queue Q of resident HIR blocks, or the FIFO of non-resident ones)
    cdef inline void _qpush(self, int32_t l, int32_t i) noexcept:
        cdef int32_t h = self.lhead[l]
        self.lprv[i] = -1
        self.lnxt[i] = h
        if h >= 0:
            self.lprv[h] = i
        else:
            self.ltail[l] = i
        self.lhead[l] = i
        self.lcnt[l] += 1

    cdef inline void _qunlink(self, int32_t l, int32_t i) noexcept:
        cdef int32_t p = self.lprv[i], n = self.lnxt[i]
        if p >= 0:
            self.lnxt[p] = n
        else:
            self.lhead[l] = n
        if n >= 0:
            self.lprv[n] = p
        else:
            self.ltail[l] = p
        self.lcnt[l] -= 1


    # ------------------------------------------------------------------ bookkeeping
    cdef inline bint _over(self) noexcept:
        return self.n_res > self.maxsize or self.weight > self.max_weight

    cdef inline int64_t _w(self, int32_t i) noexcept:
        return self.wts[i] if self.wts != NULL else 1

    cdef int _drop(self, int32_t i, int cause, int32_t ghost) except -1:
        """Forget resident ``i`` (already unlinked from policy lists); keep it as a ghost if asked.

        ``cause``: 0 removed by the caller, 1 evicted, 2 expired. ``ghost``: -1 free the slot, -3 keep the
        slot and its table entry (the caller links it), else the ghost list to push it to.
        """
        cdef int64_t w = self._w(i)
        cdef int p = self.ln[i].prio
        self.n_res -= 1
        self.weight -= w
        self.lvl_cnt[p] -= 1
        self.lvl_wt[p] -= w
        if self.expires != NULL and self.wprv[i] != W_NONE:
            self._wheel_unlink(i)
        if cause == 1:
            self.evictions += 1
            self.evicted_weight += w
        elif cause == 2:
            self.expirations += 1
        if cause and self.on_evict is not None:
            if self.nev == self.ev_cap:
                self.ev_cap = max(8, 2 * self.ev_cap)
                self.ev = <Event*>self._re(self.ev, self.ev_cap * sizeof(Event))
            Py_INCREF(<object>self.kv[i].key)
            Py_INCREF(<object>self.kv[i].val)
            self.ev[self.nev].key = self.kv[i].key
            self.ev[self.nev].val = self.kv[i].val
            self.ev[self.nev].cause = cause
            self.nev += 1
        self._defer(self.kv[i].key)
        self._defer(self.kv[i].val)
        self.kv[i].key = NULL
        self.kv[i].val = NULL
        self.ln[i].prio = 0
        self.ln[i].freq = 0
        if self.wts != NULL:
            self.wts[i] = 1
        self.version += 1
        if ghost == -1:
            self._tdelete(i)
            self._free(i)
        elif ghost >= 0:
            self._push(ghost, i)
        return 0

    cdef inline void _free_ghost(self, int32_t g) noexcept:
        self._unlink(g)
        self._tdelete(g)
        self._free(g)

    # ------------------------------------------------------------------ TTL: timer wheel
    cdef double _now(self) except? -1.0:
        if self.clock is None:
            return _mono()
        return float(self.clock())

    cdef double _check_ttl(self, object ttl) except -1.0:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (0 < ttl < math.inf):
            raise InvalidArgumentError(f"ttl must be a finite number of seconds > 0 or None, got {ttl!r}")
        return float(ttl)

    cdef int _ensure_ttl(self) except -1:
        cdef int32_t i
        if self.expires != NULL:
            return 0
        self.expires = <double*>self._re(NULL, self.cap * sizeof(double))
        self.wprv = <int32_t*>self._re(NULL, self.cap * sizeof(int32_t))
        self.wnxt = <int32_t*>self._re(NULL, self.cap * sizeof(int32_t))
        for i in range(self.cap):
            self.expires[i] = INFINITY
            self.wprv[i] = W_NONE
        return 0

    cdef void _wheel_link(self, int32_t i, double now, double exp) noexcept:
        cdef int64_t t = <int64_t>floor(exp / self.tick)
        if self.last_tick < 0:
            self.last_tick = <int64_t>floor(now / self.tick)
        if t < self.last_tick:
            t = self.last_tick
        cdef int b = t & (WHEEL - 1)
        cdef int32_t h = self.wheel[b]
        self.expires[i] = exp
        self.wprv[i] = -1 - b      # -1-b marks "bucket head" (b >= 0)
        self.wnxt[i] = h
        if h >= 0:
            self.wprv[h] = i
        self.wheel[b] = i
        self.n_ttl += 1

    cdef void _wheel_unlink(self, int32_t i) noexcept:
        cdef int32_t p = self.wprv[i], n = self.wnxt[i]
        if p >= 0:
            self.wnxt[p] = n
        else:
            self.wheel[-1 - p] = n
        if n >= 0:
            self.wprv[n] = p
        self.wprv[i] = W_NONE
        self.expires[i] = INFINITY
        self.n_ttl -= 1

    cdef int _expire(self, double now) except -1:
        """Remove every expired entry in the wheel buckets passed since the last call."""
        cdef int64_t cur = <int64_t>floor(now / self.tick), t, start
        cdef int32_t e, n
        if self.last_tick < 0:
            self.last_tick = cur
        start = self.last_tick
        if cur - start >= WHEEL:
            start = cur - WHEEL + 1
        t = start
        while t <= cur:
            e = self.wheel[t & (WHEEL - 1)]
            while e >= 0:
                n = self.wnxt[e]
                if self.expires[e] <= now:
                    self._remove(e, 2)
                e = n
            t += 1
        self.last_tick = cur
        return 0

    # ------------------------------------------------------------------ TinyLFU frequency sketch
    # Counters are bytes saturating at 15, grouped in 64-byte blocks (one cache line): an item's 4 counters
    # (one per 16-byte row of its block) sit in the block its hash selects, as in Caffeine's sketch.
    cdef inline void _sk_inc(self, Py_hash_t h) noexcept:
        cdef uint64_t x = _mix(<uint64_t>h, SEED)
        cdef uint8_t* b = &self.sketch[(((x >> 32) * self.sk_blocks) >> 32) << 6]
        cdef int r
        for r in range(4):
            if b[(r << 4) + ((x >> (r << 2)) & 15)] < 15:
                b[(r << 4) + ((x >> (r << 2)) & 15)] += 1
        self.sk_add += 1
        if self.sk_add >= self.sk_period:
            self._sk_age()

    cdef void _sk_age(self) noexcept:
        cdef uint64_t j
        for j in range(self.sk_blocks << 6):
            self.sketch[j] >>= 1
        self.sk_add //= 2

    cdef inline int _sk_est(self, Py_hash_t h) noexcept:
        cdef uint64_t x = _mix(<uint64_t>h, SEED)
        cdef uint8_t* b = &self.sketch[(((x >> 32) * self.sk_blocks) >> 32) << 6]
        cdef int r, m = 15, v
        for r in range(4):
            v = b[(r << 4) + ((x >> (r << 2)) & 15)]
            if v < m:
                m = v
        return m

    cdef void _set_window(self, int64_t w) noexcept:
        self.win_max = w
        self.prot_max = <int64_t>(0.8 * (self.maxsize - w))

    # ------------------------------------------------------------------ policy dispatch
    cdef inline int _p_hit(self, int32_t i) except -1:
        cdef int k = self.kind
        cdef int32_t d
        if self.ln[i].prio:
            self._move(L_PRIO + self.ln[i].prio - 1, i)
            return 0
        if self.adaptive and k != K_WTLFU:
            self._sk_inc(self.kv[i].hash)    # keep the sketch warm for a switch to W-TinyLFU
        if k == K_WTLFU:
            self._sk_inc(self.kv[i].hash)
            if self.ln[i].lst == L_PROB:
                self._unlink(i)
                self._push(L_MAIN, i)
                while self.lcnt[L_MAIN] > self.prot_max and self.lcnt[L_MAIN] > 0:
                    d = self.ltail[L_MAIN]
                    self._unlink(d)
                    self._push(L_PROB, d)
            else:
                self._move(self.ln[i].lst, i)
        elif k == K_LRU or k == K_ARC:
            self._move(L_MAIN, i)
        elif k == K_SIEVE:
            self.ln[i].freq = 1
        elif k == K_S3:
            if self.ln[i].freq < 3:
                self.ln[i].freq += 1
        elif k == K_LFU:
            _lfu_hit(self, i)
        else:
            _lirs_hit(self, i)
        return 0

    cdef int _p_insert(self, int32_t i, int32_t g) except -1:
        """Give new resident ``i`` (priority 0) to the policy; ``g`` is a ghost with its hash, or -1."""
        cdef int k = self.kind
        if self.adaptive and k != K_WTLFU:
            self._sk_inc(self.kv[i].hash)
        if k == K_WTLFU:
            _wt_insert(self, i)
        elif k == K_ARC:
            _arc_insert(self, i, g)
        elif k == K_S3:
            if g >= 0:                           # consumed before evicting, as libCacheSim does
                self._free_ghost(g)
            while self._over() and self._p_evict_one():
                pass
            if g >= 0:
                self._push(L_MAIN, i)
            elif not self.s3_evicted and self.lcnt[L_SMALL] >= self.small_max:
                self._push(L_MAIN, i)            # warm-up: small is full, the cache is not
            else:
                self._push(L_SMALL, i)
        elif k == K_LIRS:
            _lirs_insert(self, i, g)
        else:
            while self._over() and self._p_evict_one():
                pass
            if k == K_LFU:
                _lfu_push(self, i)
            else:
                self._push(L_MAIN, i)
        return 0

    cdef int _p_remove(self, int32_t i) except -1:
        """Unlink resident ``i`` from its policy or priority list (explicit delete or expiry)."""
        if self.ln[i].prio:
            self._unlink(i)
        elif self.kind == K_SIEVE:
            if self.hand == i:
                self.hand = self.ln[i].prv
            self._unlink(i)
        elif self.kind == K_LFU:
            _lfu_unlink(self, i)
        elif self.kind == K_LIRS:
            _lirs_remove(self, i)
        else:
            self._unlink(i)
        return 0

    cdef bint _p_evict_one(self) except -1:
        """Evict one priority-0 entry chosen by the policy; False if it holds none."""
        cdef int k = self.kind
        cdef int32_t v
        if k == K_LRU:
            v = self.ltail[L_MAIN]
        elif k == K_WTLFU:
            v = self.ltail[L_PROB]
            if v < 0:
                v = self.ltail[L_MAIN]
            if v < 0:
                v = self.ltail[L_SMALL]
        elif k == K_SIEVE:
            return _sieve_evict(self)
        elif k == K_S3:
            return _s3_evict(self)
        elif k == K_ARC:
            return _arc_replace(self, False)
        elif k == K_LFU:
            return _lfu_evict(self)
        else:
            return _lirs_evict(self)
        if v < 0:
            return False
        self._unlink(v)
        self._drop(v, 1, -1)
        return True

    cdef bint _evict_prio(self, int pmax) except -1:
        """Evict the LRU entry of the lowest non-empty priority level in 1..pmax."""
        cdef int p
        cdef int32_t v
        for p in range(1, pmax + 1):
            v = self.ltail[L_PRIO + p - 1]
            if v >= 0:
                self._unlink(v)
                self._drop(v, 1, -1)
                return True
        return False

    # ------------------------------------------------------------------ operations
    cdef int _remove(self, int32_t i, int cause) except -1:
        self._p_remove(i)
        self._drop(i, cause, -1)
        return 0

    cdef inline Py_hash_t _hash(self, object key) except? -1:
        try:
            return PyObject_Hash(key)
        except TypeError:
            raise UnhashableKeyError(f"key must be hashable, got {type(key).__name__} {key!r:.80}") from None

    cdef inline int32_t _lookup(self, object key, Py_hash_t h) except -2:
        """Resident, unexpired slot of ``key`` or -1 (an expired entry found here is removed)."""
        if self.n_ttl == 0:
            return self._probe(key, h)
        return self._lookup_ttl(key, h)

    cdef int32_t _lookup_ttl(self, object key, Py_hash_t h) except -2:
        # the clock (Python code) is read before the probe, so no Python code runs between finding the slot
        # and using it
        cdef double now = self._now()
        cdef int32_t i = self._probe(key, h)
        if i >= 0 and self.n_ttl and self.expires[i] != INFINITY and self.expires[i] <= now:
            self._remove(i, 2)
            self._release()
            return -1
        return i

    cdef inline int _count(self, bint hit, Py_hash_t h) except -1:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        if self.adaptive:
            if (_mix(<uint64_t>h, SEED2) >> 32) < self.sh_thresh:
                _shadow(self, h, hit)
            self.sel_count += 1
            if self.sel_count >= self.sel_period:
                _select(self)
        return 0

    cdef bint _access(self, object key) except -1:
        """One get-then-put-on-miss access (the shadows' and simulate's step); True on a hit."""
        cdef Py_hash_t h = self._hash(key)
        cdef int32_t i = self._lookup(key, h)
        if i >= 0:
            self._count(True, h)
            self._p_hit(i)
            return True
        self._count(False, h)
        self._put(key, None, 1, -1.0, 0)
        return False

    def __getitem__(self, key):
        cdef Py_hash_t h = self._hash(key)
        cdef int32_t i = self._lookup(key, h)
        if i >= 0:
            self._count(True, h)
            self._p_hit(i)
            return <object>self.kv[i].val
        self._count(False, h)
        raise KeyError(key)

    @cython.binding(False)   # a plain method descriptor: the fastest call path CPython offers
    def get(self, key, default=None):
        """Return the value of ``key`` (an access: counts a hit or miss) or ``default``."""
        cdef Py_hash_t h = self._hash(key)
        cdef int32_t i = self._lookup(key, h)
        if i >= 0:
            self._count(True, h)
            self._p_hit(i)
            return <object>self.kv[i].val
        self._count(False, h)
        return default

    def peek(self, key, default=None):
        """Return the value of ``key`` or ``default`` without counting an access."""
        cdef int32_t i = self._lookup(key, self._hash(key))
        return <object>self.kv[i].val if i >= 0 else default

    def __contains__(self, key):
        return self._lookup(key, self._hash(key)) >= 0

    def __setitem__(self, key, value):
        self._put(key, value, -1, -1.0, 0)

    def __delitem__(self, key):
        cdef int32_t i = self._lookup(key, self._hash(key))
        if i < 0:
            raise KeyError(key)
        self._remove(i, 0)
        self._release()

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its value; ``default`` (or KeyError) when absent."""
        cdef int32_t i = self._lookup(key, self._hash(key))
        if i < 0:
            if default is _MISSING:
                raise KeyError(key)
            return default
        value = <object>self.kv[i].val
        self._remove(i, 0)
        self._release()
        return value

    def __len__(self):
        return self.n_res

    def __iter__(self):
        return iter(self.keys_list())

    def keys_list(self):
        """Snapshot of the resident, unexpired keys (arbitrary order)."""
        cdef int32_t i
        cdef Py_ssize_t n = 0
        cdef double now = self._now() if self.n_ttl else 0.0
        out = PyList_New(self.n_res)        # the only allocation: made before the scan
        for i in range(self.cap):
            if self.kv[i].key != NULL and not (self.n_ttl and self.expires[i] <= now) and n < self.n_res:
                Py_INCREF(<object>self.kv[i].key)
                PyList_SET_ITEM(out, n, <object>self.kv[i].key)
                n += 1
        return out if n == len(out) else out[:n]

    def put(self, key, value, *, weight=None, ttl=None, priority=0):
        """Store ``value`` under ``key``; return False when the entry could not be kept (see the docs)."""
        cdef int64_t w = -1
        cdef double t = -1.0
        if weight is not None:
            w = self._check_weight(weight, "weight")
        if ttl is not None:
            t = self._check_ttl(ttl)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise InvalidArgumentError(f"priority must be an integer in 0..9, got {priority!r}")
        return self._put(key, value, w, t, priority)

    cdef int64_t _check_weight(self, object w, str what) except -1:
        cdef double f
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise WeightError(f"{what} must be a non-negative number, got {w!r}")
        if isinstance(w, float):
            if not (0.0 <= w < 9.2e18):
                raise WeightError(f"{what} must be a finite non-negative number, got {w!r}")
            w = int(ceil(w))
        if w < 0:
            raise WeightError(f"{what} must be >= 0, got {w!r}")
        if w > self.max_weight:
            raise WeightError(f"{what} {w!r} is larger than max_bytes={self.max_weight}")
        return w

    cdef bint _put(self, object key, object value, int64_t w, double ttl, int p) except -1:
        cdef Py_hash_t h = self._hash(key)
        cdef int32_t i, g
        cdef double now = 0.0
        cdef int64_t cnt_le = 0, wt_le = 0
        cdef int q
        cdef bint stored
        if w < 0:
            w = self._check_weight(self.weigher(key, value), "weigher result") if self.weigher is not None else 1
        if ttl < 0 and self.default_ttl > 0:
            ttl = self.default_ttl
        if ttl > 0 or self.n_ttl:
            now = self._now()
            if ttl > 0:
                self._ensure_ttl()
            if self.n_ttl:
                self._expire(now)
        if self.kind == K_ARC or self.kind == K_S3 or self.kind == K_LIRS:
            i = self._find(key, h, &g)         # these policies need the ghost with this hash
        else:
            i = self._probe(key, h)
            g = -1
        if i >= 0:
            if self._w(i) == w and self.ln[i].prio == p:
                self._defer(self.kv[i].val)
                Py_INCREF(value)
                self.kv[i].val = <PyObject*>value
                if self.expires != NULL and self.wprv[i] != W_NONE:
                    self._wheel_unlink(i)
                if ttl > 0:
                    self._wheel_link(i, now, now + ttl)
                self._p_hit(i)
                self._release()
                return True
            self._remove(i, 0)
            self._find(key, h, &g)
        for q in range(p + 1):
            cnt_le += self.lvl_cnt[q]
            wt_le += self.lvl_wt[q]
        if self.n_res - cnt_le + 1 > self.maxsize or self.weight - wt_le + w > self.max_weight:
            self.rejections += 1
            self._release()
            return False
        if self.adaptive and (_mix(<uint64_t>h, SEED2) >> 32) < self.sh_thresh:
            _shadow_put(self, h)
        if w != 1 and self.wts == NULL:
            self.wts = <int64_t*>self._re(NULL, self.cap * sizeof(int64_t))
            for q in range(self.cap):
                self.wts[q] = 1
        i = self._alloc()
        Py_INCREF(key)
        Py_INCREF(value)
        self.kv[i].key = <PyObject*>key
        self.kv[i].val = <PyObject*>value
        self.kv[i].hash = h
        self.ln[i].prio = p
        self.ln[i].freq = 0
        if self.wts != NULL:
            self.wts[i] = w
        self._tinsert(i)
        self.version += 1
        self.n_res += 1
        self.weight += w
        self.lvl_cnt[p] += 1
        self.lvl_wt[p] += w
        if ttl > 0:
            self._wheel_link(i, now, now + ttl)
        if p == 0:
            self._p_insert(i, g)
        else:
            while self._over() and self._p_evict_one():
                pass
            while self._over() and self._evict_prio(p):
                pass
            self._push(L_PRIO + p - 1, i)
        if HWOPT_DEBUG:
            assert not self._over(), "bound exceeded after put"
        stored = self.kv[i].key == <PyObject*>key   # the policy may have refused the new entry itself
        self._release()
        return stored

    def expire(self):
        """Remove the entries whose TTL has passed; return how many were removed."""
        cdef int64_t before = self.expirations
        if self.n_ttl:
            self._expire(self._now())
            self._release()
        return self.expirations - before

    def clear(self):
        """Remove every entry (no eviction callbacks); counters are kept."""
        cdef int32_t i
        for i in range(self.cap):
            if self.kv[i].key != NULL:
                self._defer(self.kv[i].key)
                self._defer(self.kv[i].val)
                self.kv[i].key = NULL
                self.kv[i].val = NULL
            self.ln[i].lst = -1
            self.ln[i].freq = 0
            self.ln[i].prio = 0
            self.ln[i].nxt = i + 1 if i + 1 < self.cap else -1
            if self.wts != NULL:
                self.wts[i] = 1
            if self.expires != NULL:
                self.expires[i] = INFINITY
                self.wprv[i] = W_NONE
        self.free_head = 0 if self.cap else -1
        self.nslots_used = 0
        for i in range(<int32_t>self.tsize):
            self.table[i] = -1
        for i in range(L_BUCKET):
            self.lhead[i] = -1
            self.ltail[i] = -1
            self.lcnt[i] = 0
        if self.kind == K_LFU:
            self.bfree = -1
            for i in range(self.nlists - 1, L_BUCKET - 1, -1):
                self.bnxt[i] = self.bfree
                self.bfree = i
            self.bmin = -1
        for i in range(WHEEL):
            self.wheel[i] = -1
        for i in range(NPRIO):
            self.lvl_cnt[i] = 0
            self.lvl_wt[i] = 0
        self.n_res = 0
        self.weight = 0
        self.n_ttl = 0
        self.hand = -1
        self.arc_p = 0.0
        self.s3_evicted = False
        self.version += 1
        self._release()

    def counters(self):
        """Raw counters as a dict (the API layer adds loads and load time)."""
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "evicted_weight": self.evicted_weight, "expirations": self.expirations,
                "rejections": self.rejections, "currsize": self.n_res, "weight": self.weight}

    def _policy_state(self):
        """Test hook: the internal policy state, compared with the reference model's."""
        d = {"lists": [self._list(l) for l in range(L_BUCKET)], "arc_p": self.arc_p,
             "window": self.win_max, "protected_max": self.prot_max, "hand": self._key_of(self.hand),
             "kind": POLICIES[self.kind], "switches": self.switches}
        if self.kind == K_LFU:
            b = self.bmin
            buckets = []
            while b >= 0:
                buckets.append((self.bfreq[b], self._list(b)))
                b = self.bnxt[b]
            d["buckets"] = buckets
        if self.kind == K_LIRS:
            d["lists"][L_SMALL] = []
            d["lists"][L_G1] = []
            d["queue"] = self._qlist(L_SMALL)
            d["nonresident"] = self._qlist(L_G1)
            d["lir"] = sorted((self._key_of(i) for i in range(self.cap)
                               if self.ln[i].lst == L_MAIN and self.ln[i].freq & F_LIR), key=repr)
        return d

    cdef object _key_of(self, int32_t i):
        if i < 0:
            return None
        return <object>self.kv[i].key if self.kv[i].key != NULL else ("ghost", self.kv[i].hash)

    cdef list _list(self, int32_t l):
        cdef int32_t i = self.lhead[l]
        out = []
        while i >= 0:
            out.append(self._key_of(i))
            i = self.ln[i].nxt
        return out

    cdef list _qlist(self, int32_t l):
        cdef int32_t i = self.lhead[l]
        out = []
        while i >= 0:
            out.append(self._key_of(i))
            i = self.lnxt[i]
        return out

    def __sizeof__(self):
        cdef size_t per = sizeof(Slot) + sizeof(Link)
        cdef size_t n = sizeof(CacheCore) + self.cap * per + self.tsize * sizeof(int32_t)
        n += self.nlists * 3 * sizeof(int32_t)
        if self.wts != NULL:
            n += self.cap * sizeof(int64_t)
        if self.expires != NULL:
            n += self.cap * (sizeof(double) + 2 * sizeof(int32_t))
        if self.lprv != NULL:
            n += self.cap * 2 * sizeof(int32_t)
        if self.sketch != NULL:
            n += self.sk_blocks << 6
        if self.bfreq != NULL:
            n += self.nlists * (sizeof(int64_t) + 2 * sizeof(int32_t))
        if self.shadows:
            n += sum(sh.__sizeof__() for sh in self.shadows)
        return n

    def _simulate(self, const int64_t[::1] trace):
        """Benchmark/test hook: replay integer keys as get-then-put-on-miss (value None); return the hits."""
        cdef Py_ssize_t t, n = trace.shape[0]
        cdef int64_t before = self.hits
        for t in range(n):
            self._access(trace[t])
        return self.hits - before

    def check(self):
        """Verify the internal invariants (counts, lists, table); raise CorruptionError if one fails."""
        from sutazai_hwopt.errors import CorruptionError
        cdef int32_t i, n = 0, found
        cdef int64_t wsum = 0
        cdef int32_t g
        for i in range(self.cap):
            if self.kv[i].key != NULL:
                n += 1
                wsum += self._w(i)
                found = self._find(<object>self.kv[i].key, self.kv[i].hash, &g)
                if found != i:
                    raise CorruptionError(f"slot {i} is not reachable through the table")
        if n != self.n_res or wsum != self.weight:
            raise CorruptionError(f"counts: {n} resident / weight {wsum}, recorded {self.n_res} / {self.weight}")
        if self._over():
            raise CorruptionError("a bound is exceeded")
        return True


include "cache_policies.pxi"
