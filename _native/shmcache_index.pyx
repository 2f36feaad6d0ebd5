# cython: auto_pickle=False
"""The shared L2/L3 cache index: a hash table inside a pool segment's meta area, values in pool blocks.

Algorithms:

* Index: open addressing with linear probing and backward-shift deletion (Knuth, TAOCP vol. 3 §6.4,
  Algorithm R), so there are no tombstones; slots hold the key's 64-bit XXH3 hash, the block offset, the
  key length, a reference bit and the priority. Keys are stored in the block and compared byte for byte.
* Eviction: SIEVE (Zhang et al., "SIEVE is simpler than LRU", NSDI 2024): a FIFO queue in insertion order
  linked through the block headers (blocks never move), a visited bit set by a hit (no reordering, so a hit
  needs no queue update), and a hand that walks from the oldest entry towards the newest, clearing visited
  bits and evicting the first unvisited entry. One queue per priority (0-9), following the engine's rule:
  a victim is always taken from the lowest non-empty priority level.
* Crash safety: every change happens under the pool's robust process-shared mutex. Blocks are the
  authoritative record (a 128-byte header: magic, state, hash, sequence number, key, pins); the table is
  derived and is rebuilt from one walk of the heap by :meth:`ShmIndex.repair` when a lock holder died
  (keeping, per key, the committed block with the highest sequence number).
* Zero-copy reads: :class:`BlockView` exports a block's body read-only through the buffer protocol and pins
  the block; its ``__dealloc__`` unpins (the last unpin of a block is applied at the process's next locked
  operation, at most 16 unpins late, so a get costs one lock round trip). Pins are a bitmap of process slots in the block header, so the pins
  of a dead process can be found and released (:meth:`ShmIndex.reclaim_proc`). An evicted or overwritten
  block that is still pinned becomes DEAD (a "zombie"): out of the index, freed by its last unpinner.
* L1 coherence: an array of epoch stripes (one u64 per hash stripe) is bumped on every change of a key of the
  stripe; a process validates its private copy by one lock-free read of the stripe.
* Lock-free reads: the same stripe words are sequence locks (Lameter's seqlock; the memory-model recipe of
  Boehm, MSPC 2012). A writer, already holding the lock, makes each stripe it touches odd before changing an
  entry of it (a slot, a shifted slot, a block leaving the index and so its memory) and even again when the
  operation ends. :meth:`ShmIndex.get` reads the stripe (odd: retry), probes and copies head and body with
  every offset and length checked against the heap, re-reads the stripe and returns the copy only when it is
  unchanged; after ``READ_TRIES`` failed attempts it takes the locked path. Readers write nothing but their
  own counters and the slot's visited bit, so a reader killed mid-read leaves nothing to repair; a writer
  killed mid-write leaves stripes odd, and the next locker's repair makes every stripe even again.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_FillInfo, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from sutazai_hwopt._native import pool_alloc as _pool_alloc
from sutazai_hwopt.errors import (
    CorruptionError,
    IncompatibleLayoutError,
    InvalidArgumentError,
    PoolExhaustedError,
    StateError,
)

from debug cimport HWOPT_DEBUG
from pool_heap_api cimport HEAP_API_NAME, heap_api_t
from pool_layout cimport hdr_t
from shmcache_layout cimport *

cdef extern from *:
    """
    #if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
    /* glibc keeps the lock word (0 = free, else owner tid | waiters bit) first in pthread_mutex_t. */
    static inline int sz_mutex_busy(const char *m) { return __atomic_load_n((const int *)m, __ATOMIC_RELAXED) != 0; }
    #else
    static inline int sz_mutex_busy(const char *m) { (void)m; return 0; }
    #endif
    #if defined(__x86_64__) || defined(__i386__)
    static inline void sz_pause(void) { __builtin_ia32_pause(); }
    #elif defined(__aarch64__)
    static inline void sz_pause(void) { __asm__ __volatile__("yield"); }
    #else
    static inline void sz_pause(void) { }
    #endif
    /* Sequence lock of the stripes (Boehm, "Can seqlocks get along with programming language memory models?",
       MSPC 2012): a writer, holding the pool lock, stores the odd value then issues a release fence before
       touching entries, and publishes the next even value with a release store; a reader loads the word with
       acquire, reads, issues an acquire fence and reloads it. Fields a reader uses are loaded exactly once
       (relaxed atomics), so a bounds check cannot be undone by a second read of a changing field. */
    static inline uint64_t sz_seq_begin(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint64_t sz_seq_end(const uint64_t *p) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline void sz_seq_open(uint64_t *p) {
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    static inline void sz_seq_close(uint64_t *p) {
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
    }
    static inline uint64_t sz_ld64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline uint32_t sz_ld32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline uint16_t sz_ld16(const uint16_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline uint8_t sz_ld8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void sz_st8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline void sz_add64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    """
    bint sz_mutex_busy(const char *m) nogil
    void sz_pause() nogil
    uint64_t sz_seq_begin(const uint64_t *p) nogil
    uint64_t sz_seq_end(const uint64_t *p) nogil
    void sz_seq_open(uint64_t *p) nogil
    void sz_seq_close(uint64_t *p) nogil
    uint64_t sz_ld64(const uint64_t *p) nogil
    uint32_t sz_ld32(const uint32_t *p) nogil
    uint16_t sz_ld16(const uint16_t *p) nogil
    uint8_t sz_ld8(const uint8_t *p) nogil
    void sz_st8(uint8_t *p, uint8_t v) nogil
    void sz_add64(uint64_t *p, uint64_t v) nogil

# The heap's C entry points: under the lock the index allocates, frees and locks without a Python call, and a
# full heap answers 0 instead of raising (an eviction loop tries again after each victim).
cdef heap_api_t *HEAP = <heap_api_t *>PyCapsule_GetPointer(_pool_alloc.heap_api(), HEAP_API_NAME)

# Debug-build resource counters (SUTAZAI_HWOPT_DEBUG=1), per process.
cdef uint64_t dbg_views_made = 0
cdef uint64_t dbg_views_freed = 0
cdef uint64_t dbg_pins_set = 0
cdef uint64_t dbg_pins_cleared = 0


def debug_counters():
    """Views made/freed and pin bits set/cleared by this process (counted only in a debug build)."""
    return {"views_made": dbg_views_made, "views_freed": dbg_views_freed, "pins_set": dbg_pins_set,
            "pins_cleared": dbg_pins_cleared}


#: Processes that can hold zero-copy views at once (process slots in the pin bitmap).
MAX_PROCESSES = MAXPROC
#: Bytes of block header before the key.
BLOCK_HEADER = BLK_HDR
#: Default ``ShmIndex.copy_max``: a pinned get copies values up to this size lock-free, larger ones are pinned.
COPY_MAX = 65536
#: Block states (Python names of the C enum).
ST_WRITING = S_WRITING
ST_VALID = S_VALID
ST_LOADING = S_LOADING
ST_FAILED = S_FAILED
ST_DEAD = S_DEAD
STATES = {S_WRITING: "writing", S_VALID: "valid", S_LOADING: "loading", S_FAILED: "failed", S_DEAD: "dead"}




def layout_for(uint64_t nslots):
    """(meta bytes, nstripes) needed for an index of ``nslots`` slots (a power of two >= 64)."""
    cdef uint64_t nstripes = nslots if nslots < 65536 else 65536
    cdef uint64_t size = (IHDR_BYTES + nslots * sizeof(slot_t) + nstripes * 8 + MAXPROC * sizeof(proc_t)
                          + MAXPROC * PSTAT_WORDS * 8)
    return (size + 4095) // 4096 * 4096, nstripes


def format_index(object buffer, uint64_t meta_off, uint64_t meta_size, uint64_t nslots, uint64_t max_entries=0):
    """Write an empty index into the meta area ``[meta_off, meta_off + meta_size)`` of a formatted segment.

    ``max_entries`` caps the entries the index holds (what the tier was configured for); 0, or anything above
    the load-factor limit of 3/4 of ``nslots``, means that limit.

    Raises:
        InvalidArgumentError: ``nslots`` is not a power of two >= 64 or the meta area is too small.
    """
    cdef Py_buffer view
    cdef ihdr_t *ih
    if nslots < 64 or (nslots & (nslots - 1)):
        raise InvalidArgumentError(f"nslots must be a power of two >= 64, got {nslots}")
    need, nstripes = layout_for(nslots)
    if need > meta_size:
        raise InvalidArgumentError(f"meta area of {meta_size} bytes is smaller than the {need} needed")
    PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
    try:
        if meta_off + meta_size > <uint64_t>view.len:
            raise InvalidArgumentError("meta area lies outside the buffer")
        memset(<char *>view.buf + meta_off, 0, need)
        ih = <ihdr_t *>(<char *>view.buf + meta_off)
        ih.version = IDX_VERSION
        ih.nslots = nslots
        ih.slots_off = meta_off + IHDR_BYTES
        ih.nstripes = nstripes
        ih.stripes_off = ih.slots_off + nslots * sizeof(slot_t)
        ih.procs_off = ih.stripes_off + nstripes * 8
        ih.pstats_off = ih.procs_off + MAXPROC * sizeof(proc_t)
        ih.max_entries = nslots - nslots // 4
        if 0 < max_entries < ih.max_entries:
            ih.max_entries = max_entries
        ih.magic = IDX_MAGIC
    finally:
        PyBuffer_Release(&view)


cdef class BlockView:
    """A read-only, zero-copy export of one block's body; the block stays pinned while this object lives.

    ``memoryview(v)``, ``numpy.frombuffer(v, ...)`` and slices keep it alive through the buffer protocol, so the
    block is never reused under a live view.
    """

    cdef ShmIndex idx
    cdef uint64_t off
    cdef char *ptr
    cdef Py_ssize_t length

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("cache values are read-only")
        PyBuffer_FillInfo(buffer, self, self.ptr, self.length, 1, flags)

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __len__(self):
        return self.length

    @property
    def offset(self):
        """Offset of the pinned block in the segment."""
        return self.off

    def __dealloc__(self):
        if self.idx is not None:
            if HWOPT_DEBUG:
                global dbg_views_freed
                dbg_views_freed += 1
            self.idx.nviews -= 1
            self.idx._unpin_quiet(self.off)


cdef class ShmIndex:
    """The cache index of one segment, seen from this process (holds the segment's :class:`SegmentHeap`).

    Every method locks the pool's robust mutex itself (re-entrant per thread). Keys are bytes with their
    64-bit hash computed by the caller (XXH3); values are an opaque ``head`` (bytes) and ``body`` buffers.
    """

    cdef Py_buffer view
    cdef bint has_view
    cdef char *base
    cdef ihdr_t *ih
    cdef slot_t *slots
    cdef uint64_t *stripes
    cdef proc_t *procs
    cdef uint64_t *pstats
    cdef uint64_t mask
    cdef uint64_t nstripes
    cdef uint64_t lo          # the heap: every block offset a reader follows must lie in [lo, hi)
    cdef uint64_t hi
    cdef uint32_t opened[OPEN_MAX]
    cdef int nopen
    cdef bint open_all
    cdef uint64_t n_fast, n_retries, n_fallbacks
    cdef public uint64_t copy_max
    cdef readonly object heap
    cdef readonly int proc_slot
    cdef dict local_pins
    cdef list pending
    cdef Py_ssize_t nviews
    cdef int depth

    def __cinit__(self):
        self.has_view = False
        self.base = NULL
        self.proc_slot = -1
        self.local_pins = {}
        self.pending = []
        self.copy_max = COPY_MAX

    def __init__(self, object buffer, object heap):
        """Attach to the index in the meta area of ``heap`` (a SegmentHeap over the same ``buffer``).

        Raises:
            IncompatibleLayoutError: the meta area holds no index of this version.
        """
        cdef uint64_t moff, msize
        if type(heap) is not <object>HEAP.heap_type:
            raise InvalidArgumentError(f"heap must be a pool_alloc.SegmentHeap, got {type(heap).__name__}")
        moff = heap.meta_offset
        msize = heap.meta_size
        PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        self.base = <char *>self.view.buf
        self.heap = heap
        self.ih = <ihdr_t *>(self.base + moff)
        if msize < IHDR_BYTES or self.ih.magic != IDX_MAGIC:
            self.close()
            raise IncompatibleLayoutError("segment holds no cache index (bad magic)")
        if self.ih.version != IDX_VERSION:
            self.close()
            raise IncompatibleLayoutError(f"cache index version {self.ih.version} is not {IDX_VERSION}")
        need, nstripes = layout_for(self.ih.nslots)
        if (self.ih.nslots < 64 or self.ih.nslots & (self.ih.nslots - 1) or need > msize
                or self.ih.slots_off != moff + IHDR_BYTES or self.ih.nstripes != nstripes):
            self.close()
            raise IncompatibleLayoutError("cache index header is inconsistent with its segment")
        self.slots = <slot_t *>(self.base + self.ih.slots_off)
        self.stripes = <uint64_t *>(self.base + self.ih.stripes_off)
        self.procs = <proc_t *>(self.base + self.ih.procs_off)
        self.pstats = <uint64_t *>(self.base + self.ih.pstats_off)
        self.mask = self.ih.nslots - 1
        self.nstripes = self.ih.nstripes
        self.lo = heap.heap_offset
        self.hi = self.lo + <uint64_t>heap.heap_size
        if self.hi > <uint64_t>self.view.len:
            self.close()
            raise IncompatibleLayoutError("the pool heap lies outside its segment")

    def close(self):
        """Release this handle's buffer (views still alive keep their pins until they die). Idempotent."""
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        self.base = NULL

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)

    # ---- locking -------------------------------------------------------------------------------------------
    cdef int _lock(self, bint nowait=False) except -1:
        # Returns 1 with the lock held; with nowait, 0 (nothing held) when it is still busy after the spin.
        cdef int n = 0
        if self.base == NULL:
            raise StateError("the cache index handle is closed")
        if self.depth == 0:
            # Spin briefly while another process holds the lock (a hint read of the mutex word, never a
            # write) instead of going straight to a futex sleep: critical sections here are sub-microsecond.
            while n < SPIN_MAX and sz_mutex_busy(<const char *>&(<hdr_t *>self.base).mutex_space[0]):
                sz_pause()
                n += 1
        if nowait:
            if not HEAP.try_acquire(self.heap):
                return 0
        else:
            HEAP.acquire(self.heap)
        self.depth += 1
        if self.pending:
            try:
                self._drain_pending()
            except BaseException:
                self._unlock()
                raise
        return 1

    cdef int _unlock(self) except -1:
        self.depth -= 1
        if self.depth == 0 and (self.nopen or self.open_all):
            self._wclose()
        HEAP.release(self.heap)
        return 0

    # ---- writer side of the stripe sequence locks (under the lock) ------------------------------------------
    cdef inline void _wopen(self, uint64_t h) noexcept:
        # Make h's stripe odd before changing one of its entries. Under the lock an odd stripe is ours (a dead
        # writer's odd stripes were reset by the repair that ran when we took the lock), so odd = already open.
        cdef uint64_t k = h & (self.nstripes - 1)
        if self.stripes[k] & 1:
            return
        sz_seq_open(&self.stripes[k])
        if self.nopen < OPEN_MAX:
            self.opened[self.nopen] = <uint32_t>k
            self.nopen += 1
        else:
            self.open_all = True        # closed by a scan of every stripe

    cdef void _wopen_all(self) noexcept:
        cdef uint64_t k
        for k in range(self.nstripes):
            if not (self.stripes[k] & 1):
                sz_seq_open(&self.stripes[k])
        self.open_all = True

    cdef void _wclose(self) noexcept:
        # End the write: every stripe this operation opened becomes even (the index is consistent again).
        cdef uint64_t k
        cdef int j
        if self.open_all:
            for k in range(self.nstripes):
                if self.stripes[k] & 1:
                    sz_seq_close(&self.stripes[k])
        else:
            for j in range(self.nopen):
                if self.stripes[self.opened[j]] & 1:
                    sz_seq_close(&self.stripes[self.opened[j]])
        self.nopen = 0
        self.open_all = False

    cdef int _drain_pending(self) except -1:
        cdef list todo = self.pending
        self.pending = []
        for off in todo:
            self._unpin_locked(off)
        return 0

    # ---- process slots -------------------------------------------------------------------------------------
    def proc_table(self):
        """``[(slot, pid, start_time)]`` of the registered processes (pid 0 = free slot)."""
        self._lock()
        try:
            return [(i, self.procs[i].pid, self.procs[i].start) for i in range(MAXPROC)]
        finally:
            self._unlock()

    def claim_proc(self, int i, uint32_t pid, uint64_t start):
        """Take process slot ``i`` for (pid, start) after releasing what a previous owner left pinned."""
        if not 0 <= i < MAXPROC:
            raise InvalidArgumentError(f"process slot must be in 0..{MAXPROC - 1}, got {i}")
        self._lock()
        try:
            if self.procs[i].pid != 0:
                self._reclaim(i)
            self.procs[i].start = start
            self.procs[i].pid = pid
            self.proc_slot = i
        finally:
            self._unlock()

    def detach_proc(self):
        """Forget this handle's process slot without touching shared memory (a forked child's copy).

        Views inherited across ``fork`` then unpin nothing; the parent's pins stay the parent's.
        """
        self.proc_slot = -1
        self.local_pins = {}
        self.pending = []

    def reclaim_proc(self, int i):
        """Release every pin held by process slot ``i`` (its process is dead), free its zombies, clear it.

        Returns the number of pins released.
        """
        if not 0 <= i < MAXPROC:
            raise InvalidArgumentError(f"process slot must be in 0..{MAXPROC - 1}, got {i}")
        self._lock()
        try:
            n = self._reclaim(i)
            self.procs[i].pid = 0
            self.procs[i].start = 0
            return n
        finally:
            self._unlock()

    cdef int _reclaim(self, int i) except -1:
        cdef uint64_t word = <uint64_t>1 << (i & 63)
        cdef int w = i >> 6
        cdef blk_t *b
        cdef int n = 0
        # Fold the slot's counters into the shared ones before the slot changes hands.
        sz_add64(&self.ih.st_hits, self.pstats[i * PSTAT_WORDS])     # lock-free readers add to these too
        sz_add64(&self.ih.st_misses, self.pstats[i * PSTAT_WORDS + 1])
        self.pstats[i * PSTAT_WORDS] = 0
        self.pstats[i * PSTAT_WORDS + 1] = 0
        for off in self.heap.allocations().tolist():
            b = <blk_t *>(self.base + <uint64_t>off)
            if b.magic != BLK_MAGIC or not (b.pinmap[w] & word):
                continue
            b.pinmap[w] &= ~word
            b.pins -= 1
            n += 1
            if b.state == S_DEAD and b.pins == 0:
                self.ih.zombies -= 1
                self.ih.zombie_bytes -= b.size
                self._free_block(<uint64_t>off)
        self.ih.st_reclaims += n
        return n

    # ---- lookup --------------------------------------------------------------------------------------------
    cdef inline int64_t _find(self, const uint8_t *key, uint32_t klen, uint64_t h) noexcept:
        cdef uint64_t i = h & self.mask
        cdef slot_t *s
        while True:
            s = &self.slots[i]
            if s.off == 0:
                return -1
            if s.hash == h and s.klen == klen and memcmp(self.base + s.off + BLK_HDR, key, klen) == 0:
                return <int64_t>i
            i = (i + 1) & self.mask

    cdef int _insert_slot(self, uint64_t off, bint visited=False) except -1:
        cdef blk_t *b = <blk_t *>(self.base + off)
        cdef uint64_t i = b.hash & self.mask
        self._wopen(b.hash)
        while self.slots[i].off:
            i = (i + 1) & self.mask
        self.slots[i].hash = b.hash
        self.slots[i].klen = b.klen
        self.slots[i].prio = b.prio
        self.slots[i].ref = visited
        self.slots[i].off = off
        # SIEVE: a new entry goes to the head (newest end) of its priority's queue; its visited bit is the slot's.
        b.visited = 0
        b.qprev = self.ih.q_head[b.prio]
        b.qnext = 0
        if b.qprev:
            (<blk_t *>(self.base + b.qprev)).qnext = off
        else:
            self.ih.q_tail[b.prio] = off
        self.ih.q_head[b.prio] = off
        self.ih.count += 1
        self.ih.nbytes += b.size
        self.ih.prio_count[b.prio] += 1
        return 0

    cdef int _remove_slot(self, uint64_t i) except -1:
        # Backward-shift deletion (Knuth 6.4 Algorithm R): no tombstones.
        cdef uint64_t j, k
        cdef uint64_t off = self.slots[i].off
        cdef blk_t *b = <blk_t *>(self.base + off)
        cdef int p = b.prio
        self._wopen(self.slots[i].hash)
        if self.ih.q_hand[p] == off:
            self.ih.q_hand[p] = b.qnext
        if b.qprev:
            (<blk_t *>(self.base + b.qprev)).qnext = b.qnext
        else:
            self.ih.q_tail[p] = b.qnext
        if b.qnext:
            (<blk_t *>(self.base + b.qnext)).qprev = b.qprev
        else:
            self.ih.q_head[p] = b.qprev
        b.qprev = 0
        b.qnext = 0
        self.ih.count -= 1
        self.ih.nbytes -= b.size
        self.ih.prio_count[self.slots[i].prio] -= 1
        j = i
        while True:
            j = (j + 1) & self.mask
            if self.slots[j].off == 0:
                break
            k = self.slots[j].hash & self.mask
            if ((j - k) & self.mask) >= ((j - i) & self.mask):
                self._wopen(self.slots[j].hash)     # the shifted entry's readers must not miss it mid-move
                self.slots[i] = self.slots[j]
                i = j
        memset(&self.slots[i], 0, sizeof(slot_t))
        return 0

    cdef int _retire(self, uint64_t off, bint evicted) except -1:
        # A block left the index: free it now, or leave it DEAD until its last pin goes.
        cdef blk_t *b = <blk_t *>(self.base + off)
        self._wopen(b.hash)     # its memory may be reused before this operation ends
        if b.pins:
            b.state = S_DEAD
            self.ih.zombies += 1
            self.ih.zombie_bytes += b.size
            if evicted:
                self.ih.st_pinned_evictions += 1
        else:
            self._free_block(off)
        return 0

    cdef int _free_block(self, uint64_t off) except -1:
        (<blk_t *>(self.base + off)).magic = 0
        HEAP.free_locked(self.heap, off)
        return 0

    def epoch(self, uint64_t h):
        """The sequence word of ``h``'s stripe (read without the lock): it changes whenever an entry of the
        stripe changes (odd while a writer is changing one), so an unchanged epoch means an unchanged entry."""
        if self.base == NULL:
            raise StateError("the cache index handle is closed")
        return sz_seq_begin(&self.stripes[h & (self.nstripes - 1)])

    # ---- eviction ------------------------------------------------------------------------------------------
    cdef int64_t _victim(self) except -2:
        # SIEVE on the lowest non-empty priority queue; returns the victim's slot index, -1 when empty.
        cdef int p = 0
        cdef uint64_t off, steps = 0
        cdef blk_t *b
        cdef int64_t i
        if self.ih.count == 0:
            return -1
        while p < NPRIO and self.ih.prio_count[p] == 0:
            p += 1
        if p == NPRIO:
            raise CorruptionError("index count is positive but every priority level is empty")
        off = self.ih.q_hand[p] or self.ih.q_tail[p]
        while True:
            if off == 0:
                off = self.ih.q_tail[p]
                if off == 0:
                    raise CorruptionError(f"SIEVE queue {p} is empty but counts {self.ih.prio_count[p]} entries")
            b = <blk_t *>(self.base + off)
            i = self._find(<const uint8_t *>(self.base + off + BLK_HDR), b.klen, b.hash)
            if i < 0 or self.slots[i].off != off:
                raise CorruptionError(f"SIEVE queue {p} holds block {off}, which the table does not index")
            # The visited bit is the slot's (lock-free readers set it). They may set it again behind the hand,
            # so after two rounds the hand takes the entry it stands on whatever its bit.
            if sz_ld8(&self.slots[i].ref) and steps <= 2 * self.ih.prio_count[p]:
                sz_st8(&self.slots[i].ref, 0)
                off = b.qnext
                steps += 1
                continue
            self.ih.q_hand[p] = b.qnext
            return i

    cdef object _evict_one(self, bint keep):
        # Evict one entry; with keep, return a copy (key, kind, prio, head, body) for demotion.
        cdef int64_t i
        cdef uint64_t off
        cdef blk_t *b
        cdef object rec = None
        if self.nopen or self.open_all:
            self._wclose()      # between evictions the index is consistent: readers of earlier stripes go on
        i = self._victim()
        if i < 0:
            return False
        off = self.slots[i].off
        b = <blk_t *>(self.base + off)
        if keep and b.state == S_VALID:
            rec = self._record(off)
        self.ih.st_evictions += 1
        self.ih.st_evicted_bytes += b.size
        self._remove_slot(<uint64_t>i)
        self._retire(off, True)
        return rec if keep else True

    cdef tuple _record(self, uint64_t off):
        cdef blk_t *b = <blk_t *>(self.base + off)
        cdef char *k = self.base + off + BLK_HDR
        cdef char *hd = k + r64(b.klen)
        return (k[:b.klen], b.kind, b.prio, hd[:b.hlen], (hd + r64(b.hlen))[:b.vlen])

    cdef uint64_t _alloc(self, uint64_t n, list victims, bint keep) except 0:
        # Allocate n bytes, evicting SIEVE victims until the heap can serve it.
        cdef object r
        cdef uint64_t off
        while True:
            off = HEAP.try_alloc_locked(self.heap, n)
            if off:
                return off
            r = self._evict_one(keep)
            if r is False:
                raise PoolExhaustedError(f"no free range for {n} bytes even with every unpinned entry evicted "
                                         f"(heap {self.heap.heap_size} bytes)")
            if keep and r is not None and r is not True:
                victims.append(r)

    # ---- public operations ---------------------------------------------------------------------------------
    def put(self, const uint8_t[::1] key, uint64_t h, int kind, int prio, const uint8_t[::1] head,
            list body, int state=S_VALID, bint demote=False, uint32_t owner_pid=0, uint64_t owner_start=0,
            uint32_t gen=0, bint visited=False, bint nowait=False):
        """Store ``key`` -> (kind, head, concatenated ``body`` buffers), replacing any previous entry.

        ``nowait``: when another process still holds the tier's lock after the short spin (typically a holder
        the scheduler preempted), store nothing and return None instead of sleeping until it is released.

        Evicts SIEVE victims of the lowest priority as needed. ``visited`` inserts the entry as if it had
        been hit once (a prefetched entry then survives one pass of the hand before its first use). Returns the list of evicted records
        ``(key, kind, prio, head, body)`` when ``demote`` (for the next tier), else an empty list.

        Raises:
            InvalidArgumentError: bad priority/kind. PoolExhaustedError: the value cannot fit even in an
            emptied tier (nothing is changed then, apart from evictions already made).
        """
        cdef uint32_t klen = <uint32_t>key.shape[0]
        cdef uint32_t hlen = <uint32_t>head.shape[0]
        cdef uint64_t vlen = 0
        cdef uint64_t n, off, pos
        cdef int64_t i
        cdef blk_t *b
        cdef list victims = []
        cdef list views = []
        cdef const uint8_t[::1] mv
        cdef Py_ssize_t ln
        cdef const uint8_t *src
        cdef char *dst
        if not 0 <= prio < NPRIO:
            raise InvalidArgumentError(f"priority must be in 0..9, got {prio}")
        if not 0 <= kind < 65536:
            raise InvalidArgumentError(f"kind must be in 0..65535, got {kind}")
        if klen == 0:
            raise InvalidArgumentError("key must not be empty")
        if state not in (S_VALID, S_LOADING, S_FAILED):
            raise InvalidArgumentError(f"state must be valid, loading or failed, got {state}")
        for part in body:
            mv = memoryview(part).cast("B")
            views.append(mv)
            vlen += r64(<uint64_t>mv.shape[0])
        n = BLK_HDR + r64(klen) + r64(hlen) + vlen
        if not self._lock(nowait):
            return None
        try:
            if n > self.heap.heap_size:
                raise PoolExhaustedError(f"a value of {n} bytes (with headers) exceeds the tier's heap of "
                                         f"{self.heap.heap_size} bytes")
            while self.ih.count >= self.ih.max_entries:
                r = self._evict_one(demote)
                if demote and r is not None and r is not True:
                    victims.append(r)
            off = self._alloc(n, victims, demote)
            b = <blk_t *>(self.base + off)
            memset(b, 0, BLK_HDR)
            b.state = S_WRITING
            b.magic = BLK_MAGIC
            b.hash = h
            b.klen = klen
            b.hlen = hlen
            b.kind = <uint16_t>kind
            b.prio = <uint8_t>prio
            b.size = n
            b.owner_pid = owner_pid
            b.owner_start = owner_start
            b.gen = gen
            dst = self.base + off + BLK_HDR
            memcpy(dst, &key[0], klen)
            dst += r64(klen)
            if hlen:
                memcpy(dst, &head[0], hlen)
            dst += r64(hlen)
            pos = 0
            for mv in views:
                ln = mv.shape[0]
                if ln:
                    src = &mv[0]
                    if ln >= COPY_NOGIL:
                        with nogil:
                            memcpy(dst + pos, src, ln)
                    else:
                        memcpy(dst + pos, src, ln)
                pos += r64(<uint64_t>ln)
            b.vlen = pos if len(views) != 1 else <uint64_t>views[0].shape[0]
            # Commit: sequence number, state, then the index (repair keeps the highest committed seq).
            self.ih.seq += 1
            b.seq = self.ih.seq
            b.state = <uint32_t>state
            i = self._lookup_locked(key, h)
            if i >= 0:
                old = self.slots[i].off
                self._remove_slot(<uint64_t>i)
                self._retire(old, False)
                self.ih.st_updates += 1
            self._insert_slot(off, visited)
            self.ih.st_inserts += 1
            return victims
        finally:
            self._unlock()

    cdef int64_t _lookup_locked(self, const uint8_t[::1] key, uint64_t h) except -2:
        if key.shape[0] == 0:
            raise InvalidArgumentError("key must not be empty")
        return self._find(&key[0], <uint32_t>key.shape[0], h)

    cdef object _read_fast(self, const uint8_t *key, uint32_t klen, uint64_t h, uint64_t limit, int *status):
        # One optimistic attempt without the lock. status: 1 hit (returns the record), 0 miss, 2 the value is
        # longer than ``limit`` (validated; the caller pins it under the lock), -1 the stripe changed or was
        # odd, or something read was inconsistent (retry). Nothing read from shared memory is trusted before the
        # final sequence check: every offset and length is bounds-checked against the heap first.
        cdef uint64_t *sp = &self.stripes[h & (self.nstripes - 1)]
        cdef uint64_t s1, i, off, n = 0, hoff, vlen
        cdef uint32_t hlen
        cdef slot_t *s
        cdef blk_t *b
        cdef bytes head, body
        cdef int kind, prio
        status[0] = -1
        s1 = sz_seq_begin(sp)
        if s1 & 1:
            return None
        i = h & self.mask
        while True:
            s = &self.slots[i]
            off = sz_ld64(&s.off)
            if off == 0:
                if sz_seq_end(sp) == s1:
                    status[0] = 0
                return None
            if sz_ld64(&s.hash) == h and sz_ld32(&s.klen) == klen:
                if off & 63 or off < self.lo or off >= self.hi or self.hi - off < BLK_HDR + <uint64_t>klen:
                    return None     # blocks are 64-byte aligned inside the heap: anything else is not a block
                if memcmp(self.base + off + BLK_HDR, key, klen) == 0:
                    break
            n += 1
            if n > self.mask:
                return None
            i = (i + 1) & self.mask
        b = <blk_t *>(self.base + off)
        if sz_ld32(&b.magic) != BLK_MAGIC or sz_ld64(&b.hash) != h or sz_ld32(&b.klen) != klen:
            return None
        if sz_ld32(&b.state) != S_VALID:         # a loading marker or a failure reads as a miss
            if sz_seq_end(sp) == s1:
                status[0] = 0
            return None
        hlen = sz_ld32(&b.hlen)
        vlen = sz_ld64(&b.vlen)
        hoff = off + BLK_HDR + r64(klen)
        if vlen > self.hi or hoff + r64(hlen) > self.hi or self.hi - (hoff + r64(hlen)) < vlen:
            return None
        if vlen > limit:
            if sz_seq_end(sp) == s1:
                status[0] = 2
            return None
        kind = sz_ld16(&b.kind)
        prio = sz_ld8(&b.prio)
        head = PyBytes_FromStringAndSize(self.base + hoff, hlen)
        body = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>vlen)
        memcpy(PyBytes_AS_STRING(body), self.base + hoff + r64(hlen), vlen)
        if sz_seq_end(sp) != s1:
            return None
        if not sz_ld8(&s.ref):      # SIEVE visited bit; a slot shifted meanwhile only costs a policy hint
            sz_st8(&s.ref, 1)
        status[0] = 1
        return (kind, prio, head, body)

    def get(self, object key, uint64_t h, bint pin=True, bint count=True):
        """Look ``key`` up; on a hit set its visited bit and return ``(kind, prio, head, body)``.

        Lock-free first: the value is copied under the stripe's sequence lock (``body`` is ``bytes``) when
        ``pin`` is false, this process holds no process slot, or it is at most :attr:`copy_max` bytes. A
        larger value with ``pin`` is a pinned :class:`BlockView` (zero-copy), taken under the lock. After
        ``READ_TRIES`` attempts that saw a writer, the read takes the lock. Loading markers and failures read as
        misses. Returns None on a miss.
        """
        cdef int64_t i
        cdef blk_t *b
        cdef uint64_t off
        cdef char *hd
        cdef BlockView v = None
        cdef const uint8_t[::1] kv
        cdef const uint8_t *kp
        cdef uint32_t klen
        cdef uint64_t limit = self.copy_max if (pin and self.proc_slot >= 0) else <uint64_t>-1
        cdef int status = -1, k
        cdef object r
        if self.base == NULL:
            raise StateError("the cache index handle is closed")
        if type(key) is bytes:      # the common case, without a typed-memoryview acquisition
            kp = <const uint8_t *>PyBytes_AS_STRING(key)
            klen = <uint32_t>len(<bytes>key)
        else:
            kv = key
            klen = <uint32_t>kv.shape[0]
            kp = &kv[0] if klen else NULL
            key = kv
        if klen == 0:
            raise InvalidArgumentError("key must not be empty")
        for k in range(READ_TRIES):
            r = self._read_fast(kp, klen, h, limit, &status)
            if status == 1 or status == 0:
                self.n_fast += 1
                if count:
                    if self.proc_slot >= 0:    # this process's own line: exact (the GIL orders our threads)
                        self.pstats[self.proc_slot * PSTAT_WORDS + 1 - status] += 1
                    elif status:
                        sz_add64(&self.ih.st_hits, 1)
                    else:
                        sz_add64(&self.ih.st_misses, 1)
                return r
            if status == 2:
                break
            self.n_retries += 1
            sz_pause()
        else:
            self.n_fallbacks += 1
        # The locked path: a value to pin, or a stripe that kept changing (or stays odd: a dead writer, whose
        # stripes the repair run by this lock resets). Python objects are made outside the lock (the critical
        # section is only the lookup and the pin); the head is read after unlocking, from a block our pin keeps
        # alive.
        if pin and self.proc_slot >= 0:
            v = BlockView.__new__(BlockView)
        self._lock()
        try:
            i = self._lookup_locked(key, h)
            if i < 0 or (<blk_t *>(self.base + self.slots[i].off)).state != S_VALID:
                if count:
                    if self.proc_slot >= 0:
                        self.pstats[self.proc_slot * PSTAT_WORDS + 1] += 1
                    else:
                        sz_add64(&self.ih.st_misses, 1)
                return None
            off = self.slots[i].off
            b = <blk_t *>(self.base + off)
            if not self.slots[i].ref:   # a hot entry's slot line is not dirtied by every reader
                sz_st8(&self.slots[i].ref, 1)
            if count:
                if self.proc_slot >= 0:
                    self.pstats[self.proc_slot * PSTAT_WORDS] += 1
                else:
                    sz_add64(&self.ih.st_hits, 1)
            hd = self.base + off + BLK_HDR + r64(b.klen)
            if v is None or b.vlen <= limit:    # a value the fast path would have copied is copied here too
                return (b.kind, b.prio, hd[:b.hlen], (hd + r64(b.hlen))[:b.vlen])
            self._pin_into(off, v)
        finally:
            self._unlock()
        return (b.kind, b.prio, hd[:b.hlen], v)

    def read_counters(self):
        """This handle's lock-free reads: ``{"fast": answered without the lock, "retries": attempts that saw a
        writer, "fallbacks": reads that gave up and took the lock}`` (a read of a value pinned because it is
        larger than :attr:`copy_max` is none of these)."""
        return {"fast": self.n_fast, "retries": self.n_retries, "fallbacks": self.n_fallbacks}

    cdef int _pin_into(self, uint64_t off, BlockView v) except -1:
        # Under the lock. No GC-tracked object is allocated between reading and writing the local count (a
        # cyclic-GC run in between could dealloc views of this block and change it).
        cdef blk_t *b = <blk_t *>(self.base + off)
        cdef int p = self.proc_slot
        c = self.local_pins.get(off, 0)
        if c == 0:
            if b.pinmap[p >> 6] & (<uint64_t>1 << (p & 63)):
                raise CorruptionError(f"block {off} is already pinned by this process slot")
            b.pinmap[p >> 6] |= <uint64_t>1 << (p & 63)
            b.pins += 1
            if HWOPT_DEBUG:
                global dbg_pins_set
                dbg_pins_set += 1
        self.local_pins[off] = c + 1
        if HWOPT_DEBUG:
            global dbg_views_made
            dbg_views_made += 1
        v.idx = self
        self.nviews += 1
        v.off = off
        v.ptr = self.base + off + BLK_HDR + r64(b.klen) + r64(b.hlen)
        v.length = <Py_ssize_t>b.vlen
        return 0

    cdef void _unpin_quiet(self, uint64_t off) noexcept:
        # Called from BlockView.__dealloc__: never raise. A view of a block this process pins more than once
        # only decrements the local count. The last unpin is queued and applied at this process's next locked
        # operation (no extra lock round trip per get), or at once when PENDING_MAX unpins are queued.
        cdef object c
        try:
            if self.base == NULL:
                return
            c = self.local_pins.get(off, 0)
            if c > 1:
                self.local_pins[off] = c - 1
                return
            self.pending.append(off)
            if len(self.pending) >= PENDING_MAX and not self.heap.locked_here:
                self._lock()      # drains
                self._unlock()
        except BaseException:
            pass

    def flush_unpins(self):
        """Apply queued unpins now (released views whose blocks are still pinned)."""
        if self.pending:
            self._lock()
            self._unlock()

    cdef int _unpin_locked(self, uint64_t off) except -1:
        cdef blk_t *b = <blk_t *>(self.base + off)
        cdef int p = self.proc_slot
        c = self.local_pins.get(off, 0)
        if c > 1:
            self.local_pins[off] = c - 1
            return 0
        self.local_pins.pop(off, None)
        if c == 0 or p < 0 or b.magic != BLK_MAGIC or not (b.pinmap[p >> 6] & (<uint64_t>1 << (p & 63))):
            return 0   # our pins were reclaimed (we were taken for dead) — nothing to release
        b.pinmap[p >> 6] &= ~(<uint64_t>1 << (p & 63))
        b.pins -= 1
        if HWOPT_DEBUG:
            global dbg_pins_cleared
            dbg_pins_cleared += 1
        if b.state == S_DEAD and b.pins == 0:
            self.ih.zombies -= 1
            self.ih.zombie_bytes -= b.size
            self._free_block(off)
        return 0

    def contains(self, const uint8_t[::1] key, uint64_t h):
        """True when ``key`` has a committed value (no statistics, no reference bit)."""
        cdef int64_t i
        self._lock()
        try:
            i = self._lookup_locked(key, h)
            return i >= 0 and (<blk_t *>(self.base + self.slots[i].off)).state == S_VALID
        finally:
            self._unlock()

    def entry_state(self, const uint8_t[::1] key, uint64_t h):
        """``(state, owner_pid, owner_start, gen, head)`` of ``key``'s entry, or None (for get_or_load)."""
        cdef int64_t i
        cdef blk_t *b
        self._lock()
        try:
            i = self._lookup_locked(key, h)
            if i < 0:
                return None
            b = <blk_t *>(self.base + self.slots[i].off)
            hd = self.base + self.slots[i].off + BLK_HDR + r64(b.klen)
            return (b.state, b.owner_pid, b.owner_start, b.gen, hd[:b.hlen])
        finally:
            self._unlock()

    def begin_load(self, const uint8_t[::1] key, uint64_t h, uint32_t pid, uint64_t start,
                   uint32_t expect_gen=0):
        """Atomically claim the right to load ``key`` host-wide.

        Inserts a LOADING marker owned by (pid, start) when the key is absent, FAILED, or a LOADING marker of
        generation ``expect_gen`` (a dead owner being replaced). Returns ``(claimed, state, owner_pid,
        owner_start, gen)`` describing the entry after the call.
        """
        cdef int64_t i
        cdef blk_t *b
        cdef uint32_t gen
        self._lock()
        try:
            i = self._lookup_locked(key, h)
            if i >= 0:
                b = <blk_t *>(self.base + self.slots[i].off)
                if b.state == S_VALID or (b.state == S_LOADING and (expect_gen == 0 or b.gen != expect_gen)):
                    return (False, b.state, b.owner_pid, b.owner_start, b.gen)
            gen = <uint32_t>((self.ih.seq + 1) & 0xFFFFFFFF) or 1
            self.put(key, h, 0, 0, b"", [], S_LOADING, False, pid, start, gen)
            return (True, S_LOADING, pid, start, gen)
        finally:
            self._unlock()

    def end_load(self, const uint8_t[::1] key, uint64_t h, uint32_t gen, object failure=None):
        """Finish a load of generation ``gen``: drop the marker, or replace it by a FAILED record whose head
        is ``failure`` (bytes). Returns False when the marker is no longer ours (someone took over)."""
        cdef int64_t i
        cdef blk_t *b
        self._lock()
        try:
            i = self._lookup_locked(key, h)
            if i < 0:
                return False
            b = <blk_t *>(self.base + self.slots[i].off)
            if b.state != S_LOADING or b.gen != gen:
                return False
            if failure is None:
                off = self.slots[i].off
                self._remove_slot(<uint64_t>i)
                self._retire(off, False)
            else:
                self.put(key, h, 0, 0, failure, [], S_FAILED, False, b.owner_pid, b.owner_start, gen)
            return True
        finally:
            self._unlock()

    def delete(self, const uint8_t[::1] key, uint64_t h):
        """Remove ``key`` (any state); True when it was present."""
        cdef int64_t i
        cdef uint64_t off
        self._lock()
        try:
            i = self._lookup_locked(key, h)
            if i < 0:
                return False
            off = self.slots[i].off
            self._remove_slot(<uint64_t>i)
            self._retire(off, False)
            self.ih.st_deletes += 1
            return True
        finally:
            self._unlock()

    def clear(self):
        """Remove every entry (pinned blocks become zombies and are freed by their last reader)."""
        cdef uint64_t i, off
        self._lock()
        try:
            self._wopen_all()
            for i in range(self.ih.nslots):
                off = self.slots[i].off
                if off:
                    self.slots[i].off = 0
                    self._retire(off, False)
            memset(self.slots, 0, self.ih.nslots * sizeof(slot_t))
            self.ih.count = 0
            self.ih.nbytes = 0
            for i in range(NPRIO):
                self.ih.prio_count[i] = 0
                self.ih.q_head[i] = 0
                self.ih.q_tail[i] = 0
                self.ih.q_hand[i] = 0
        finally:
            self._unlock()

    def evict(self, int n=1):
        """Evict up to ``n`` entries by CLOCK; returns how many were evicted."""
        cdef int k = 0
        self._lock()
        try:
            while k < n and self._evict_one(False) is True:
                k += 1
            return k
        finally:
            self._unlock()

    def keys(self):
        """Every key in the index (any state), as bytes, in slot order."""
        cdef uint64_t i
        cdef list out = []
        self._lock()
        try:
            for i in range(self.ih.nslots):
                if self.slots[i].off:
                    out.append((self.base + self.slots[i].off + BLK_HDR)[:self.slots[i].klen])
            return out
        finally:
            self._unlock()

    def __len__(self):
        self._lock()
        try:
            return self.ih.count
        finally:
            self._unlock()

    @property
    def capacity(self):
        """Most entries the table holds (3/4 of its slots)."""
        return self.ih.max_entries

    def stats(self):
        """Shared counters and occupancy of this tier (host-wide, all processes)."""
        self._lock()
        try:
            return {
                "entries": self.ih.count, "bytes": self.ih.nbytes, "zombies": self.ih.zombies,
                "zombie_bytes": self.ih.zombie_bytes, "capacity_entries": self.ih.max_entries,
                "heap_bytes": self.heap.heap_size,
                "hits": self.ih.st_hits + sum(self.pstats[p * PSTAT_WORDS] for p in range(MAXPROC)),
                "misses": self.ih.st_misses + sum(self.pstats[p * PSTAT_WORDS + 1] for p in range(MAXPROC)),
                "inserts": self.ih.st_inserts, "updates": self.ih.st_updates,
                "evictions": self.ih.st_evictions, "evicted_bytes": self.ih.st_evicted_bytes,
                "pinned_evictions": self.ih.st_pinned_evictions, "deletes": self.ih.st_deletes,
                "repairs": self.ih.st_repairs, "reclaimed_pins": self.ih.st_reclaims,
                "by_priority": [self.ih.prio_count[p] for p in range(NPRIO)],
            }
        finally:
            self._unlock()

    @property
    def live_views(self):
        """BlockView objects of this handle still alive (also ones inherited across fork)."""
        return self.nviews

    def local_pin_count(self):
        """Blocks this process currently pins (distinct), after applying queued unpins."""
        self.flush_unpins()
        return len(self.local_pins)

    # ---- invariants and recovery (implemented in shmcache_check.pxi) ---------------------------------------
    def check(self):
        """Verify every invariant of the index against the heap; True, or CorruptionError naming the broken one.

        Slots: block magic, committed state, hash / key length / priority agree with the block, each entry is
        reachable from its home slot without crossing an empty slot, keys are unique. Counters: entries, bytes,
        per-priority counts, zombies. SIEVE queues: links, membership, priority, length, head and hand. Heap: every allocation is an indexed block or a pinned zombie; pin counts
        equal their bitmaps, which name registered process slots only.
        """
        return _index_check(self)

    def repair(self):
        """Rebuild the table and counters from the blocks (runs when a lock holder died).

        Frees uncommitted (WRITING) and damaged blocks and unpinned zombies; per key keeps the committed block
        with the highest sequence number; drops pins of unregistered process slots; bumps every epoch stripe.
        Returns the number of blocks freed.
        """
        return _index_repair(self)


include "shmcache_check.pxi"
include "shmcache_front.pxi"
