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
# Files: this one holds the constants, the structs and the class (its state, construction, the mapping
# operations, eviction bookkeeping); the included cache_table.pxi (slot table, intrusive lists), cache_ttl.pxi
# (timer wheel), cache_policies.pxi (sketch, dispatch, policies), cache_adaptive.pxi (shadow caches) and
# cache_introspection.pxi (counters, policy state, checks) hold the rest as functions of the CacheCore.
#
# Atomicity: with the GIL, a method of this class is atomic as long as it runs no Python code. The only
# Python code it may run is the key's __hash__/__eq__ (the lookup restarts if the table changed meanwhile),
# the weigher and the clock (both called before anything is changed), and the on_evict callback and
# __del__ of released keys and values (both run after the structure is consistent again).

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.exc cimport PyErr_ExceptionMatches, PyErr_Clear
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

# The hit path's two per-key steps for the common key type, done as CPython's own dict does them: an exact str
# carries its hash (computed once, cached in the object), and two exact strs are equal iff their lengths, kinds
# and code units are (unicode_eq in Objects/stringlib/eq.h). Neither runs Python code, so a lookup that uses
# them needs no restart check. Anything else (subclasses, other types, a not-ready legacy string of 3.10/3.11)
# takes the generic PyObject_Hash / PyObject_RichCompareBool path.
cdef extern from *:
    """
    static CYTHON_INLINE Py_hash_t hwopt_key_hash(PyObject *o) {
    #if !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED)
        if (PyUnicode_CheckExact(o)) {
            Py_hash_t h = ((PyASCIIObject *)o)->hash;
            if (h != -1) return h;
        }
    #endif
        return PyObject_Hash(o);
    }
    /* 1 equal, 0 unequal, -1 not two exact (ready) strs: the caller must use PyObject_RichCompareBool */
    static CYTHON_INLINE int hwopt_str_eq(PyObject *a, PyObject *b) {
    #if !defined(Py_LIMITED_API)
        Py_ssize_t n;
        int kind;
        if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b)) return -1;
    #if PY_VERSION_HEX < 0x030C0000
        if (!PyUnicode_IS_READY(a) || !PyUnicode_IS_READY(b)) return -1;
    #endif
        n = PyUnicode_GET_LENGTH(a);
        if (n != PyUnicode_GET_LENGTH(b)) return 0;
        kind = PyUnicode_KIND(a);
        if (kind != (int)PyUnicode_KIND(b)) return 0;
        return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * (size_t)kind) == 0;
    #else
        return -1;
    #endif
    }
    """
    # no exception check: the hit path tests -1 itself (PyObject_Hash returns -1 only with an exception set)
    Py_hash_t _key_hash "hwopt_key_hash"(object o)
    int _str_eq "hwopt_str_eq"(PyObject* a, PyObject* b) noexcept

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
# the one key object of every shadow-cache entry: a shadow entry is identified by its hash alone (an identity
# match in _probe), so a sampled access creates, hashes and compares no Python object
cdef object _SHADOW_KEY = object()

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


cdef int _hash_failed(object key) except -1:
    """PyObject_Hash failed: a TypeError becomes UnhashableKeyError, anything else propagates."""
    if PyErr_ExceptionMatches(TypeError):
        PyErr_Clear()
        raise UnhashableKeyError(f"key must be hashable, got {type(key).__name__} {key!r:.80}")
    return -1


cdef inline Py_hash_t _int_hash(Py_hash_t h) noexcept:
    """``hash(int(h))`` (CPython's integer hash, modulo 2**61 - 1), the hash a shadow entry is stored under."""
    cdef uint64_t a = (<uint64_t>0 - <uint64_t>h) if h < 0 else <uint64_t>h
    cdef Py_hash_t r
    a = a % ((<uint64_t>1 << 61) - 1)
    r = -<Py_hash_t>a if h < 0 else <Py_hash_t>a
    return -2 if r == -1 else r


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
    # popitem: while set, the first entry the policy evicts is handed over (owned refs) instead of counted
    cdef bint popping
    # expire(collect=True): expirations are recorded as events even without on_evict
    cdef bint collecting
    cdef PyObject* popped_key
    cdef PyObject* popped_val
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
        self.default_ttl = _check_ttl(self, ttl) if ttl is not None else 0.0
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
            _set_window(self, max(1, <int64_t>(window * maxsize)) if maxsize > 1 else 0)
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
        _grow(self, min(self.max_slots, 16))
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

    # ------------------------------------------------------------------ deferred release
    # (the slot table and the lists are in cache_table.pxi)
    cdef inline int _defer(self, PyObject* o) except -1:   # (not `except *`: no PyErr_Occurred per call)
        if self.ndead == self.dead_cap:
            self.dead_cap = max(16, 2 * self.dead_cap)
            self.dead = <PyObject**>_re(self.dead, self.dead_cap * sizeof(PyObject*))
        self.dead[self.ndead] = o
        self.ndead += 1
        return 0

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
            batch = <Event*>_re(NULL, n * sizeof(Event))
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

    # ------------------------------------------------------------------ bookkeeping
    # (the TTL wheel is in cache_ttl.pxi; the sketch and the policies in cache_policies.pxi)
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
            _wheel_unlink(self, i)
        if cause == 1 and self.popping:
            if self.popped_key == NULL:
                Py_INCREF(<object>self.kv[i].key)
                Py_INCREF(<object>self.kv[i].val)
                self.popped_key = self.kv[i].key
                self.popped_val = self.kv[i].val
            cause = 0
        if cause == 1:
            self.evictions += 1
            self.evicted_weight += w
        elif cause == 2:
            self.expirations += 1
        if cause and (self.on_evict is not None or (cause == 2 and self.collecting)):
            if self.nev == self.ev_cap:
                self.ev_cap = max(8, 2 * self.ev_cap)
                self.ev = <Event*>_re(self.ev, self.ev_cap * sizeof(Event))
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
            _tdelete(self, i)
            _free(self, i)
        elif ghost >= 0:
            _push(self, ghost, i)
        return 0

    cdef inline void _free_ghost(self, int32_t g) noexcept:
        _unlink(self, g)
        _tdelete(self, g)
        _free(self, g)

    # ------------------------------------------------------------------ operations
    cdef int _remove(self, int32_t i, int cause) except -1:
        _p_remove(self, i)
        self._drop(i, cause, -1)
        return 0

    cdef inline Py_hash_t _hash(self, object key) except? -1:
        cdef Py_hash_t h = _key_hash(key)
        if h == -1:                 # PyObject_Hash returns -1 only with an exception set
            _hash_failed(key)
        return h

    cdef inline int32_t _lookup(self, object key, Py_hash_t h) except -2:
        """Resident, unexpired slot of ``key`` or -1 (an expired entry found here is removed)."""
        if self.n_ttl == 0:
            return _probe(self, key, h)
        return self._lookup_ttl(key, h)

    cdef int32_t _lookup_ttl(self, object key, Py_hash_t h) except -2:
        # the clock (Python code) is read before the probe, so no Python code runs between finding the slot
        # and using it
        cdef double now = _now(self)
        cdef int32_t i = _probe(self, key, h)
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
            _p_hit(self, i)
            return True
        self._count(False, h)
        self._put(key, None, 1, -1.0, 0)
        return False

    def __getitem__(self, key):
        cdef Py_hash_t h = self._hash(key)
        cdef int32_t i = self._lookup(key, h)
        if i >= 0:
            self._count(True, h)
            _p_hit(self, i)
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
            _p_hit(self, i)
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

    def popitem(self):
        """Remove and return ``(key, value)`` of the entry the policy would evict next; KeyError when empty.

        Priority-0 entries go first, in the policy's eviction order, then the lowest priority level's LRU.
        Not an eviction: no counter, no ``on_evict``.
        """
        cdef PyObject* k
        cdef PyObject* v
        if self.n_ttl:
            _expire(self, _now(self))
        if self.n_res == 0:
            self._release()
            raise KeyError("popitem(): cache is empty")
        self.popping = True
        try:
            if not (self.lvl_cnt[0] and _p_pop_one(self)):
                _evict_prio(self, NPRIO - 1)
        finally:
            self.popping = False
        k = self.popped_key
        v = self.popped_val
        self.popped_key = NULL
        self.popped_val = NULL
        if k == NULL:
            self._release()
            raise KeyError("popitem(): no entry could be removed")
        self._defer(k)
        self._defer(v)
        result = (<object>k, <object>v)
        self._release()
        return result

    def _entry(self, key):
        """Pickling hook: ``(value, weight, priority, seconds left or None)`` of ``key``, or None."""
        cdef double now = _now(self) if self.n_ttl else 0.0
        cdef int32_t i = self._lookup(key, self._hash(key))
        if i < 0:
            return None
        left = None
        if self.expires != NULL and self.expires[i] != INFINITY:
            left = max(self.expires[i] - now, 1e-9)
        return (<object>self.kv[i].val, self._w(i), self.ln[i].prio, left)

    def __len__(self):
        return self.n_res

    def __iter__(self):
        return iter(self.keys_list())

    def keys_list(self):
        """Snapshot of the resident, unexpired keys (arbitrary order)."""
        cdef int32_t i
        cdef Py_ssize_t n = 0
        cdef double now = _now(self) if self.n_ttl else 0.0
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
            t = _check_ttl(self, ttl)
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
        return self._put_h(key, self._hash(key), value, w, ttl, p)

    cdef bint _put_h(self, object key, Py_hash_t h, object value, int64_t w, double ttl, int p) except -1:
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
            now = _now(self)
            if ttl > 0:
                _ensure_ttl(self)
            if self.n_ttl:
                _expire(self, now)
        if self.kind == K_ARC or self.kind == K_S3 or self.kind == K_LIRS:
            i = _find(self, key, h, &g)         # these policies need the ghost with this hash
        else:
            i = _probe(self, key, h)
            g = -1
        if i >= 0:
            if self._w(i) == w and self.ln[i].prio == p:
                self._defer(self.kv[i].val)
                Py_INCREF(value)
                self.kv[i].val = <PyObject*>value
                if self.expires != NULL and self.wprv[i] != W_NONE:
                    _wheel_unlink(self, i)
                if ttl > 0:
                    _wheel_link(self, i, now, now + ttl)
                _p_hit(self, i)
                self._release()
                return True
            self._remove(i, 0)
            _find(self, key, h, &g)
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
            self.wts = <int64_t*>_re(NULL, self.cap * sizeof(int64_t))
            for q in range(self.cap):
                self.wts[q] = 1
        i = _alloc(self)
        Py_INCREF(key)
        Py_INCREF(value)
        self.kv[i].key = <PyObject*>key
        self.kv[i].val = <PyObject*>value
        self.kv[i].hash = h
        self.ln[i].prio = p
        self.ln[i].freq = 0
        if self.wts != NULL:
            self.wts[i] = w
        _tinsert(self, i)
        self.version += 1
        self.n_res += 1
        self.weight += w
        self.lvl_cnt[p] += 1
        self.lvl_wt[p] += w
        if ttl > 0:
            _wheel_link(self, i, now, now + ttl)
        if p == 0:
            _p_insert(self, i, g)
        else:
            while self._over() and _p_evict_one(self):
                pass
            while self._over() and _evict_prio(self, p):
                pass
            _push(self, L_PRIO + p - 1, i)
        if HWOPT_DEBUG:
            assert not self._over(), "bound exceeded after put"
        stored = self.kv[i].key == <PyObject*>key   # the policy may have refused the new entry itself
        self._release()
        return stored

    def expire(self, now=None, bint collect=False):
        """Remove the entries whose TTL has passed by ``now`` (default: the cache's clock).

        Returns how many were removed, or with ``collect=True`` the removed ``(key, value)`` pairs (what
        cachetools' ``TTLCache.expire`` returns). ``on_evict`` still fires for each.
        """
        cdef int64_t before = self.expirations
        cdef double t
        cdef Py_ssize_t j
        cdef list out = []
        if now is not None and (isinstance(now, bool) or not isinstance(now, (int, float))
                                or not math.isfinite(now)):
            raise InvalidArgumentError(f"now must be a finite number of seconds or None, got {now!r}")
        if self.n_ttl:
            t = _now(self) if now is None else float(now)
            self.collecting = collect
            try:
                _expire(self, t)
            finally:
                self.collecting = False
            if collect:
                for j in range(self.nev):
                    if self.ev[j].cause == 2:
                        out.append((<object>self.ev[j].key, <object>self.ev[j].val))
            self._release()
        if collect:
            return out
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

    # ------------------------------------------------------------------ introspection (cache_introspection.pxi)
    def counters(self):
        """Raw counters as a dict (the API layer adds loads and load time)."""
        return _counters_of(self)

    def _policy_state(self):
        """Test hook: the internal policy state, compared with the reference model's."""
        return _state_of(self)

    def __sizeof__(self):
        return _sizeof_of(self)

    def check(self):
        """Verify the internal invariants (counts, lists, table); raise CorruptionError if one fails."""
        return _check(self)

    def _simulate(self, const int64_t[::1] trace):
        """Benchmark/test hook: replay integer keys as get-then-put-on-miss (value None); return the hits."""
        cdef Py_ssize_t t, n = trace.shape[0]
        cdef int64_t before = self.hits
        for t in range(n):
            self._access(trace[t])
        return self.hits - before

# The rest of CacheCore's code, by concern: functions of the CacheCore they act on, in textual includes (one
# compiled module; the def methods above call into them).
include "cache_table.pxi"
include "cache_ttl.pxi"
include "cache_policies.pxi"
include "cache_adaptive.pxi"
include "cache_introspection.pxi"
