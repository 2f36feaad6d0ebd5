# cython: auto_pickle=False
"""A crash-safe allocator that lives inside one shared-memory segment and works on offsets.

Algorithms:

* Large blocks: segregated, coalescing free lists with boundary tags (Knuth, TAOCP vol. 1 §2.5, "boundary tag"
  method) and a one-level bin bitmap as in TLSF (Masmano et al., "TLSF: a new dynamic memory allocator for
  real-time systems", ECRTS 2004) so a fitting bin is found with one count-trailing-zeros.
* Small blocks (<= 2 KiB): size-class slabs (Bonwick, "The Slab Allocator", USENIX 1994): a slab is one 64 KiB
  window of the heap, aligned to the window grid, with a slot bitmap; a window bitmap in the header tells
  ``free(offset)`` whether an offset lies in a slab.
* Every user offset is 64-byte aligned (numpy / AVX-512 friendly).
* Crash consistency: the only authoritative facts are each chunk's ``word`` (size | state, one 8-byte store) and
  the slabs' slot bitmaps; every multi-step change writes the new chunk headers first and commits with a single
  ``word`` store, so the heap is walkable at every instant. Free lists, slab lists, counters, the window bitmap
  and ``prev_size`` are derived and rebuilt by :meth:`SegmentHeap.repair` from one walk.
* Locking: a process-shared, robust, error-checking pthread mutex in the header. When a holder dies, the next
  locker gets ``EOWNERDEAD``, runs ``repair()`` (and the owner's ``on_recover`` hook), verifies with ``check()``,
  then calls ``pthread_mutex_consistent``; if the check still fails the segment is fenced (every later call
  raises :class:`~sutazai_hwopt.errors.CorruptionError`) instead of handing out damaged memory.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.pycapsule cimport PyCapsule_New
from cpython.pythread cimport PyThread_get_thread_ident
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset
from posix.mman cimport MADV_REMOVE, madvise
from posix.unistd cimport _SC_PAGESIZE, sysconf

from debug cimport HWOPT_DEBUG
from pool_heap_api cimport HEAP_API_NAME, heap_api_t
from pool_layout cimport *

import numpy as np

from sutazai_hwopt.errors import (
    CorruptionError,
    IncompatibleLayoutError,
    InvalidArgumentError,
    PoolExhaustedError,
    StateError,
)

#: Layout version written into every header; attaching to another version raises IncompatibleLayoutError.
LAYOUT_VERSION = POOL_VERSION
#: Alignment of every offset handed out.
ALIGNMENT = ALIGN
#: Largest request served from a slab.
SMALL_LIMIT = SMALL_MAX
#: Bytes of the fixed header before the slab-window bitmap.
HEADER_FIXED = HDR_FIXED
#: Size of a slab window.
SLAB_BYTES = SLAB_SPAN

cdef uint64_t CLASS_SIZE[N_CLASSES]
# Powers of two, with 768 and 1536 between the largest: a cache entry of a 512-byte value and its headers
# (704 bytes) takes a 768-byte slot, not a 1 KiB one.
CLASS_SIZE[:] = [64, 128, 256, 512, 768, 1024, 1536, 2048]

# Debug build (SUTAZAI_HWOPT_DEBUG=1): count allocations and frees through this process, and run the full
# invariant check after every alloc() and free().
cdef uint64_t dbg_allocs = 0
cdef uint64_t dbg_frees = 0


def debug_counters():
    """Allocations and frees made by this process (counted only in a debug build; zeros otherwise)."""
    return {"allocs": dbg_allocs, "frees": dbg_frees}


cdef inline uint64_t round_up(uint64_t n, uint64_t a) nogil:
    return (n + a - 1) & ~(a - 1)


cdef inline int floor_log2(uint64_t n) nogil:
    return 63 - __builtin_clzll(n)


cdef extern from "<errno.h>":
    enum:
        EBUSY
        EDEADLK
        ENOTRECOVERABLE
        EOWNERDEAD
        ETIMEDOUT


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil
    int __builtin_ctzll(unsigned long long) nogil
    int __builtin_popcountll(unsigned long long) nogil


cdef inline int class_of(uint64_t size) nogil:
    cdef int c = 0
    while CLASS_SIZE[c] < size:
        c += 1
    return c


def header_bytes_for(uint64_t heap_size):
    """Header size (a multiple of 4 KiB) needed for a heap of ``heap_size`` bytes."""
    cdef uint64_t nwin = heap_size // SLAB_SPAN
    return round_up(HDR_FIXED + (nwin + 7) // 8, 4096)


def format_segment(object buffer, uint64_t meta_size):
    """Write a fresh header, an empty heap and an initialised robust mutex into ``buffer``.

    The layout is ``[header | meta area of meta_size bytes | heap]``; the meta area belongs to the caller (the
    pool manager puts its block/agent tables there). Only the creator calls this, before anyone attaches.

    Raises:
        InvalidArgumentError: the buffer is too small, not writable, or its size not a multiple of 4 KiB.
    """
    cdef Py_buffer view
    cdef hdr_t *h
    cdef chunk_t *c
    cdef pthread_mutexattr_t attr
    cdef uint64_t size, hsize, heap_off, heap_size
    if sizeof(pthread_mutex_t) > 128:
        raise InvalidArgumentError("pthread_mutex_t is larger than the 128 bytes reserved for it")
    PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
    try:
        size = <uint64_t>view.len
        if size % 4096 or size < 2 * 4096 + SLAB_SPAN:
            raise InvalidArgumentError(
                f"buffer size must be a multiple of 4096 and >= {2 * 4096 + SLAB_SPAN}, got {size}")
        meta_size = round_up(meta_size, 4096)
        # The header size depends on the heap size: iterate once (the bitmap is tiny).
        hsize = header_bytes_for(size)
        heap_off = hsize + meta_size
        if heap_off + SLAB_SPAN > size:
            raise InvalidArgumentError(
                f"meta_size {meta_size} leaves no room for a heap in a {size}-byte buffer")
        heap_size = (size - heap_off) // ALIGN * ALIGN
        memset(view.buf, 0, hsize)
        h = <hdr_t *>view.buf
        h.magic = POOL_MAGIC
        h.version = POOL_VERSION
        h.header_size = <uint32_t>hsize
        h.segment_size = size
        h.meta_off = hsize
        h.meta_size = meta_size
        h.heap_off = heap_off
        h.heap_size = heap_size
        h.nwin = heap_size // SLAB_SPAN
        h.mutex_size = sizeof(pthread_mutex_t)
        h.geom_check = geometry_check(h)
        if pthread_mutexattr_init(&attr) != 0:
            raise OSError("pthread_mutexattr_init failed")
        try:
            if (pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) != 0
                    or pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST) != 0
                    or pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK) != 0
                    or pthread_mutex_init(<pthread_mutex_t *>&h.mutex_space[0], &attr) != 0):
                raise OSError("cannot initialise a process-shared robust mutex")
        finally:
            pthread_mutexattr_destroy(&attr)
        # One free chunk spanning the heap.
        c = <chunk_t *>(<char *>view.buf + heap_off)
        memset(c, 0, CHUNK_HDR)
        c.tag = CHUNK_TAG ^ <uint32_t>(heap_off >> 6)
        c.word = heap_size | ST_FREE
        _bin_push(<char *>view.buf, h, heap_off)
    finally:
        PyBuffer_Release(&view)


cdef inline void _bin_push(char *base, hdr_t *h, uint64_t off) noexcept nogil:
    cdef chunk_t *c = <chunk_t *>(base + off)
    cdef int b = floor_log2(c.word & ~(<uint64_t>STATE_MASK))
    c.prev = 0
    c.next = h.bin_head[b]
    if c.next:
        (<chunk_t *>(base + c.next)).prev = off
    h.bin_head[b] = off
    h.bin_bitmap |= (<uint64_t>1) << b


cdef inline void _bin_remove(char *base, hdr_t *h, uint64_t off) noexcept nogil:
    cdef chunk_t *c = <chunk_t *>(base + off)
    cdef int b = floor_log2(c.word & ~(<uint64_t>STATE_MASK))
    if c.prev:
        (<chunk_t *>(base + c.prev)).next = c.next
    else:
        h.bin_head[b] = c.next
    if c.next:
        (<chunk_t *>(base + c.next)).prev = c.prev
    if h.bin_head[b] == 0:
        h.bin_bitmap &= ~((<uint64_t>1) << b)
    c.next = 0
    c.prev = 0


cdef uint64_t _as_offset(object offset) except? 0:
    if not isinstance(offset, int) or isinstance(offset, bool) or offset <= 0 or offset >= (1 << 63):
        raise InvalidArgumentError(f"offset must be a positive integer returned by alloc(), got {offset!r}")
    return <uint64_t>offset


cdef enum:
    RECHECK_NS = 100000000     # a waiter re-reads the lock word at least every 100 ms


cdef int _lock_rechecking(pthread_mutex_t *m) noexcept nogil:
    """Lock ``m``, waking at least every 100 ms to look at the lock word again.

    A robust non-PI futex can lose a wake-up: the unlocker wakes one waiter, another process takes the free
    lock before it (without the WAITERS bit), and the woken waiter is killed before it runs; the kernel then
    wakes nobody (the word names a live owner) and the barger's unlock sees no waiter to wake. The remaining
    waiters would sleep forever on a free lock. A bounded wait turns that into a delay of at most
    RECHECK_NS; uncontended and ordinary contended locking are unchanged (and keep barging, which a PI
    mutex's strict hand-off would forbid: a convoy behind preempted waiters on an oversubscribed host).
    """
    cdef timespec ts
    cdef int rc = ETIMEDOUT
    while rc == ETIMEDOUT:
        clock_gettime(CLOCK_REALTIME, &ts)
        ts.tv_nsec += RECHECK_NS
        if ts.tv_nsec >= 1000000000:
            ts.tv_sec += 1
            ts.tv_nsec -= 1000000000
        rc = pthread_mutex_timedlock(m, &ts)
    return rc


cdef class SegmentHeap:
    """The allocator and robust lock of one formatted segment, seen from this process.

    Offsets are relative to the start of the buffer, so every process that maps the segment can use them.
    Calls lock internally (the lock is re-entrant per handle and thread), so a caller that needs several
    operations to be atomic wraps them in ``with heap:``.

    Example:
        >>> buf = bytearray(1 << 20)
        >>> format_segment(buf, 0)
        >>> heap = SegmentHeap(buf)
        >>> off = heap.alloc(100)
        >>> off % 64
        0
        >>> heap.free(off)
        >>> heap.check()
        True
    """

    cdef Py_buffer view
    cdef bint has_view
    cdef char *base
    cdef hdr_t *h
    cdef pthread_mutex_t *mutex
    cdef unsigned long owner
    cdef int depth
    cdef public object on_recover
    cdef readonly bint recovered

    def __cinit__(self):
        self.has_view = False
        self.base = NULL

    def __init__(self, object buffer, object on_recover=None):
        """Attach to a segment formatted by :func:`format_segment`.

        Raises:
            IncompatibleLayoutError: the header is not a pool header, is damaged, or has another version.
        """
        PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        try:
            self._validate_header()
        except BaseException:
            self.close()
            raise
        self.base = <char *>self.view.buf
        self.h = <hdr_t *>self.base
        self.mutex = <pthread_mutex_t *>&self.h.mutex_space[0]
        self.on_recover = on_recover
        self.recovered = False

    cdef _validate_header(self):
        cdef uint64_t size = <uint64_t>self.view.len
        cdef hdr_t *h = <hdr_t *>self.view.buf
        if size < HDR_FIXED:
            raise IncompatibleLayoutError(f"segment of {size} bytes is too small to hold a pool header")
        if h.magic != POOL_MAGIC:
            raise IncompatibleLayoutError(f"not a pool segment: magic {h.magic:#x}, expected {POOL_MAGIC:#x}")
        if h.version != POOL_VERSION:
            raise IncompatibleLayoutError(
                f"pool layout version {h.version} is not supported; this build reads version {POOL_VERSION}")
        if h.geom_check != geometry_check(h):
            raise IncompatibleLayoutError("pool header is damaged: geometry check value does not match")
        if (h.segment_size != size or h.header_size < HDR_FIXED + (h.nwin + 7) // 8
                or h.meta_off != h.header_size or h.heap_off != h.meta_off + h.meta_size
                or h.heap_off % ALIGN or h.heap_size % ALIGN or h.heap_off + h.heap_size > size
                or h.nwin != h.heap_size // SLAB_SPAN or h.mutex_size != sizeof(pthread_mutex_t)):
            raise IncompatibleLayoutError(
                f"pool header geometry is inconsistent with a {size}-byte segment")

    def close(self):
        """Release this handle's buffer export (the segment itself is untouched). Idempotent."""
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        self.base = NULL

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)

    cdef inline int _ready(self) except -1:
        if self.base == NULL:
            raise StateError("the SegmentHeap handle is closed")
        if self.h.flags & FLAG_FENCED:
            raise CorruptionError("pool segment is fenced: a recovery found damage it could not repair")
        return 0

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def meta_offset(self):
        """Offset of the owner's meta area."""
        self._ready()
        return self.h.meta_off

    @property
    def meta_size(self):
        """Size of the owner's meta area."""
        self._ready()
        return self.h.meta_size

    @property
    def heap_offset(self):
        """Offset of the first heap byte."""
        self._ready()
        return self.h.heap_off

    @property
    def heap_size(self):
        """Bytes of heap (the pool's capacity, headers included)."""
        self._ready()
        return self.h.heap_size

    @property
    def recoveries(self):
        """How many times a locker found a dead holder and recovered."""
        self._ready()
        return self.h.recoveries

    @property
    def fenced(self):
        """True when a recovery failed and the segment refuses service."""
        return self.base != NULL and bool(self.h.flags & FLAG_FENCED)

    # ---- locking --------------------------------------------------------------------------------------------
    cdef int _acquire(self, bint nowait=False) except -1:
        # Returns 1 with the lock held; with nowait, 0 (nothing held) when another thread or process holds it.
        cdef unsigned long me = PyThread_get_thread_ident()
        cdef int rc
        self._ready()
        if self.depth > 0 and self.owner == me:
            self.depth += 1
            return 1
        rc = pthread_mutex_trylock(self.mutex)
        if rc == EBUSY:
            if nowait:
                return 0
            with nogil:
                rc = _lock_rechecking(self.mutex)
        if rc == EOWNERDEAD:
            self.owner = me
            self.depth = 1
            self._recover_locked()
            return 1
        if rc == EDEADLK:
            raise StateError("this thread already holds the pool lock through another SegmentHeap handle")
        if rc == ENOTRECOVERABLE:
            raise CorruptionError("pool lock is not recoverable (a recovery was abandoned)")
        if rc != 0:
            raise OSError(rc, "pthread_mutex_lock failed")
        self.owner = me
        self.depth = 1
        return 1

    cdef int _recover_locked(self) except -1:
        # We hold the mutex in the "inconsistent" state: repair, let the owner reconcile its tables, verify,
        # then mark consistent. If anything fails, fence rather than hand out damaged memory.
        self.h.recoveries += 1
        self.recovered = True
        ok = False
        try:
            _heap_repair(self)
            if self.on_recover is not None:
                self.on_recover()
            _heap_check(self)
            ok = True
        finally:
            if not ok:
                self.h.flags |= FLAG_FENCED
            pthread_mutex_consistent(self.mutex)
            if not ok:
                self.depth = 0
                pthread_mutex_unlock(self.mutex)
        return 0

    cdef int _release(self) except -1:
        if self.depth <= 0 or self.owner != PyThread_get_thread_ident():
            raise StateError("release() without a matching acquire() in this thread")
        self.depth -= 1
        if self.depth == 0:
            self.owner = 0
            pthread_mutex_unlock(self.mutex)
        return 0

    def acquire(self):
        """Take the segment's robust lock (re-entrant for this handle and thread); recovers a dead holder."""
        self._acquire()

    def release(self):
        """Release one level of the lock."""
        self._release()

    def __enter__(self):
        self._acquire()
        return self

    def __exit__(self, *exc):
        self._release()
        return False

    @property
    def locked_here(self):
        """True when this thread holds the lock through this handle."""
        return self.depth > 0 and self.owner == PyThread_get_thread_ident()

    # ---- allocation -----------------------------------------------------------------------------------------
    def alloc(self, size):
        """Allocate ``size`` bytes and return the 64-byte-aligned offset of the block.

        Raises:
            InvalidArgumentError: ``size`` is not a positive integer.
            PoolExhaustedError: no free range is large enough (the heap is unchanged).
        """
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidArgumentError(f"size must be a positive integer, got {size!r}")
        self._acquire()
        try:
            if size > self.h.heap_size:
                raise PoolExhaustedError(
                    f"size {size} exceeds the pool's heap of {self.h.heap_size} bytes")
            return self._alloc_locked(<uint64_t>size)
        finally:
            self._release()

    cdef uint64_t _alloc_locked(self, uint64_t n) except? 0:
        # alloc() with the lock held and n >= 1 checked.
        cdef uint64_t off
        if n > self.h.heap_size:
            raise PoolExhaustedError(f"size {n} exceeds the pool's heap of {self.h.heap_size} bytes")
        off = self._try_alloc_locked(n)
        if off == 0:
            raise PoolExhaustedError(
                f"no free range for {n} bytes (heap {self.h.heap_size} bytes; see stats())")
        return off

    cdef uint64_t _try_alloc_locked(self, uint64_t n) except? 0:
        # As _alloc_locked, but 0 without an exception when no free range is large enough: a cache evicting
        # until a block fits tries many times under the lock, and building an exception costs ~3 us each time.
        cdef uint64_t off
        if n > self.h.heap_size:
            return 0
        if n <= SMALL_MAX:
            off = self._alloc_small(class_of(n))
        else:
            off = self._alloc_large(n)
        if off and HWOPT_DEBUG:
            global dbg_allocs
            dbg_allocs += 1
            _heap_check(self)
        return off

    cdef uint64_t _find_free(self, uint64_t need) except? 0:
        # First fit among a few chunks of the request's own bin, else the head of the next non-empty larger
        # bin (every chunk there fits), else the rest of the own bin.
        cdef int b = floor_log2(need)
        cdef uint64_t off = self.h.bin_head[b]
        cdef uint64_t mask
        cdef chunk_t *c
        cdef int steps = 0
        while off and steps < 16:
            self._check_link(off)
            c = <chunk_t *>(self.base + off)
            if (c.word & ~(<uint64_t>STATE_MASK)) >= need:
                return off
            off = c.next
            steps += 1
        if b + 1 < N_BINS:
            mask = self.h.bin_bitmap & ~(((<uint64_t>1) << (b + 1)) - 1)
            if mask:
                off = self.h.bin_head[__builtin_ctzll(mask)]
                self._check_link(off)
                return off
        while off:
            self._check_link(off)
            c = <chunk_t *>(self.base + off)
            if (c.word & ~(<uint64_t>STATE_MASK)) >= need:
                return off
            off = c.next
        return 0

    cdef int _check_link(self, uint64_t off) except -1:
        if off < self.h.heap_off or off >= self.h.heap_off + self.h.heap_size or off % ALIGN:
            raise CorruptionError(f"free-list link {off} points outside the heap")
        return 0

    cdef inline void _set_word(self, uint64_t off, uint64_t size, uint64_t state) noexcept nogil:
        (<chunk_t *>(self.base + off)).word = size | state

    cdef inline void _fix_prev_size(self, uint64_t off) noexcept nogil:
        # The chunk after `off` learns its predecessor's size (derived field).
        cdef uint64_t size = (<chunk_t *>(self.base + off)).word & ~(<uint64_t>STATE_MASK)
        cdef uint64_t nxt = off + size
        if nxt < self.h.heap_off + self.h.heap_size:
            (<chunk_t *>(self.base + nxt)).prev_size = size

    cdef inline void _new_header(self, uint64_t off, uint64_t prev_size) noexcept nogil:
        # Every field but `word`: when `off` is a live header, `word` is the commit point and stays valid.
        cdef chunk_t *c = <chunk_t *>(self.base + off)
        c.prev_size = prev_size
        c.next = 0
        c.prev = 0
        c.req = 0
        c.nfree = 0
        c.pad[0] = 0
        c.pad[1] = 0
        c.tag = CHUNK_TAG ^ <uint32_t>(off >> 6)

    cdef uint64_t _alloc_large(self, uint64_t n) except? 0:
        cdef uint64_t need = round_up(n, ALIGN) + CHUNK_HDR
        cdef uint64_t off = self._find_free(need)
        cdef uint64_t size, rest
        cdef chunk_t *c
        if off == 0:
            return 0
        c = <chunk_t *>(self.base + off)
        size = c.word & ~(<uint64_t>STATE_MASK)
        _bin_remove(self.base, self.h, off)
        rest = size - need
        if rest >= CHUNK_HDR:
            # Write the remainder's header first, then commit the split with one store.
            self._new_header(off + need, need)
            self._set_word(off + need, rest, ST_FREE)
            c.req = n
            c.word = need | ST_USED
            self._fix_prev_size(off + need)
            _bin_push(self.base, self.h, off + need)
        else:
            c.req = n
            c.word = size | ST_USED
            need = size
        self.h.n_large += 1
        self.h.large_bytes += need
        return off + CHUNK_HDR

    cdef uint64_t _carve_slab(self, int cls) except? 0:
        # Find a free chunk that contains a whole 64 KiB window of the grid and cut the window out of it.
        cdef int b
        cdef uint64_t off, size, end, win, mask
        cdef uint64_t hoff = self.h.heap_off
        cdef chunk_t *c
        mask = self.h.bin_bitmap & ~(((<uint64_t>1) << floor_log2(SLAB_SPAN)) - 1)
        while mask:
            b = __builtin_ctzll(mask)
            mask &= mask - 1
            off = self.h.bin_head[b]
            while off:
                self._check_link(off)
                c = <chunk_t *>(self.base + off)
                size = c.word & ~(<uint64_t>STATE_MASK)
                end = off + size
                win = hoff + round_up(off - hoff, SLAB_SPAN)
                if win + SLAB_SPAN <= end:
                    return self._split_for_slab(off, size, win, cls)
                off = c.next
        return 0

    cdef uint64_t _split_for_slab(self, uint64_t off, uint64_t size, uint64_t win, int cls) except? 0:
        # New headers (back remainder, slab with a zeroed bitmap) are written inside the free chunk first;
        # one `word` store then commits: the slab's own when it starts the chunk, else the front's shrink.
        cdef uint64_t end = off + size
        cdef uint64_t back = end - (win + SLAB_SPAN)
        cdef chunk_t *s
        _bin_remove(self.base, self.h, off)
        if back:
            self._new_header(win + SLAB_SPAN, SLAB_SPAN)
            self._set_word(win + SLAB_SPAN, back, ST_FREE)
        if win > off:
            self._new_header(win, win - off)
        else:
            self._new_header(win, (<chunk_t *>(self.base + off)).prev_size)
        s = <chunk_t *>(self.base + win)
        memset(self.base + win + CHUNK_HDR, 0, SLAB_SLOTS_OFF - CHUNK_HDR)
        s.req = <uint64_t>cls
        s.nfree = <uint32_t>((SLAB_SPAN - SLAB_SLOTS_OFF) // CLASS_SIZE[cls])
        s.word = SLAB_SPAN | ST_SLAB
        if win > off:
            self._set_word(off, win - off, ST_FREE)
            _bin_push(self.base, self.h, off)
        if back:
            self._fix_prev_size(win)
            _bin_push(self.base, self.h, win + SLAB_SPAN)
        self._fix_prev_size(win + SLAB_SPAN if back else win)
        return win

    cdef uint64_t _alloc_small(self, int cls) except? 0:
        cdef uint64_t slab = self.h.partial[cls]
        cdef uint64_t *bits
        cdef chunk_t *s
        cdef uint64_t nslots, w, word
        cdef int i, bit
        if slab == 0:
            slab = self._carve_slab(cls)
            if slab == 0:
                return 0
            self._slabmap_set(slab, True)
            self._partial_push(cls, slab)
            self.h.n_slabs += 1
        s = <chunk_t *>(self.base + slab)
        if s.req != <uint64_t>cls or s.nfree == 0 or (s.word & STATE_MASK) != ST_SLAB:
            raise CorruptionError(f"partial-slab list of class {CLASS_SIZE[cls]} holds a bad slab at {slab}")
        bits = <uint64_t *>(self.base + slab + CHUNK_HDR)
        nslots = (SLAB_SPAN - SLAB_SLOTS_OFF) // CLASS_SIZE[cls]
        for i in range(SLAB_BITMAP_WORDS):
            word = ~bits[i]
            if word:
                bit = __builtin_ctzll(word)
                w = <uint64_t>(i * 64 + bit)
                if w >= nslots:
                    break
                bits[i] |= (<uint64_t>1) << bit
                s.nfree -= 1
                if s.nfree == 0:
                    self._partial_remove(cls, slab)
                self.h.n_small += 1
                self.h.small_bytes += CLASS_SIZE[cls]
                return slab + SLAB_SLOTS_OFF + w * CLASS_SIZE[cls]
        raise CorruptionError(f"slab at {slab} claims {s.nfree} free slots but its bitmap is full")

    cdef inline void _slabmap_set(self, uint64_t slab, bint on) noexcept nogil:
        cdef uint64_t w = (slab - self.h.heap_off) // SLAB_SPAN
        cdef uint8_t *m = <uint8_t *>(self.base + HDR_FIXED)
        if on:
            m[w >> 3] |= <uint8_t>(1 << (w & 7))
        else:
            m[w >> 3] &= <uint8_t>~(1 << (w & 7))

    cdef inline bint _slabmap_get(self, uint64_t w) noexcept nogil:
        return ((<uint8_t *>(self.base + HDR_FIXED))[w >> 3] >> (w & 7)) & 1

    cdef void _partial_push(self, int cls, uint64_t slab) noexcept nogil:
        cdef chunk_t *s = <chunk_t *>(self.base + slab)
        s.prev = 0
        s.next = self.h.partial[cls]
        if s.next:
            (<chunk_t *>(self.base + s.next)).prev = slab
        self.h.partial[cls] = slab

    cdef void _partial_remove(self, int cls, uint64_t slab) noexcept nogil:
        cdef chunk_t *s = <chunk_t *>(self.base + slab)
        if s.prev:
            (<chunk_t *>(self.base + s.prev)).next = s.next
        else:
            self.h.partial[cls] = s.next
        if s.next:
            (<chunk_t *>(self.base + s.next)).prev = s.prev
        s.next = 0
        s.prev = 0

    def free(self, offset):
        """Return the block at ``offset`` (as returned by :meth:`alloc`) to the heap.

        Raises:
            InvalidArgumentError: ``offset`` is not a live block of this heap (double free, foreign offset).
        """
        cdef uint64_t off = _as_offset(offset)
        self._acquire()
        try:
            self._free_locked(off)
        finally:
            self._release()

    cdef int _free_locked(self, uint64_t off) except -1:
        if off == 0 or off >= (<uint64_t>1 << 63):
            raise InvalidArgumentError(f"offset must be a positive integer returned by alloc(), got {off}")
        self._free(off)
        if HWOPT_DEBUG:
            global dbg_frees
            dbg_frees += 1
            _heap_check(self)
        return 0

    cdef int _slab_of(self, uint64_t offset, uint64_t *slab) except -1:
        # 1 if offset lies in a slab window (slab set), else 0.
        cdef uint64_t w
        if offset < self.h.heap_off or offset >= self.h.heap_off + self.h.heap_size:
            raise InvalidArgumentError(f"offset {offset} is outside the heap")
        w = (offset - self.h.heap_off) // SLAB_SPAN
        if w < self.h.nwin and self._slabmap_get(w):
            slab[0] = self.h.heap_off + w * SLAB_SPAN
            return 1
        return 0

    cdef int _free(self, uint64_t offset) except -1:
        cdef uint64_t slab, rel, slot, cls, off
        cdef chunk_t *s
        cdef chunk_t *c
        cdef uint64_t *bits
        if offset % ALIGN:
            raise InvalidArgumentError(f"offset {offset} is not {ALIGN}-byte aligned, so not a block")
        if self._slab_of(offset, &slab):
            s = <chunk_t *>(self.base + slab)
            cls = s.req
            rel = offset - slab
            if cls >= N_CLASSES or rel < SLAB_SLOTS_OFF or (rel - SLAB_SLOTS_OFF) % CLASS_SIZE[cls]:
                raise InvalidArgumentError(f"offset {offset} is not the start of a slab slot")
            slot = (rel - SLAB_SLOTS_OFF) // CLASS_SIZE[cls]
            bits = <uint64_t *>(self.base + slab + CHUNK_HDR)
            if not (bits[slot >> 6] >> (slot & 63)) & 1:
                raise InvalidArgumentError(f"offset {offset} is not allocated (double free?)")
            bits[slot >> 6] &= ~((<uint64_t>1) << (slot & 63))
            self.h.n_small -= 1
            self.h.small_bytes -= CLASS_SIZE[cls]
            s.nfree += 1
            if s.nfree == 1:
                self._partial_push(<int>cls, slab)
            elif s.nfree == (SLAB_SPAN - SLAB_SLOTS_OFF) // CLASS_SIZE[cls] and (s.next or s.prev):
                # Empty and not the only slab of its class: give the window back to the large heap.
                self._partial_remove(<int>cls, slab)
                self._slabmap_set(slab, False)
                self.h.n_slabs -= 1
                self._release_chunk(slab)
            return 0
        off = offset - CHUNK_HDR
        if off < self.h.heap_off:
            raise InvalidArgumentError(f"offset {offset} is not a block of this heap")
        c = <chunk_t *>(self.base + off)
        if c.tag != (CHUNK_TAG ^ <uint32_t>(off >> 6)) or (c.word & STATE_MASK) != ST_USED:
            raise InvalidArgumentError(f"offset {offset} is not an allocated block (double free or foreign)")
        self.h.n_large -= 1
        self.h.large_bytes -= c.word & ~(<uint64_t>STATE_MASK)
        self._release_chunk(off)
        return 0

    cdef void _release_chunk(self, uint64_t off) noexcept:
        # Mark free, then merge with free neighbours; each merge is committed by one `word` store.
        cdef chunk_t *c = <chunk_t *>(self.base + off)
        cdef uint64_t size = c.word & ~(<uint64_t>STATE_MASK)
        cdef uint64_t end = self.h.heap_off + self.h.heap_size
        cdef uint64_t nxt, prv
        cdef chunk_t *n
        cdef chunk_t *p
        c.word = size | ST_FREE
        nxt = off + size
        if nxt < end:
            n = <chunk_t *>(self.base + nxt)
            if (n.word & STATE_MASK) == ST_FREE:
                _bin_remove(self.base, self.h, nxt)
                size += n.word & ~(<uint64_t>STATE_MASK)
                c.word = size | ST_FREE
        if off > self.h.heap_off and c.prev_size:
            prv = off - c.prev_size
            p = <chunk_t *>(self.base + prv)
            if (p.word & STATE_MASK) == ST_FREE:
                _bin_remove(self.base, self.h, prv)
                size += p.word & ~(<uint64_t>STATE_MASK)
                p.word = size | ST_FREE
                off = prv
        self._fix_prev_size(off)
        _bin_push(self.base, self.h, off)

    def usable_size(self, offset):
        """Bytes usable at ``offset`` (the size class for a slab slot; the rounded request for a large block).

        Raises:
            InvalidArgumentError: ``offset`` is not a live block.
        """
        cdef uint64_t slab, bit
        cdef uint64_t off = _as_offset(offset)
        cdef chunk_t *c
        self._acquire()
        try:
            if self._slab_of(off, &slab):
                c = <chunk_t *>(self.base + slab)
                bit = off - slab - SLAB_SLOTS_OFF
                if c.req < N_CLASSES and off >= slab + SLAB_SLOTS_OFF and bit % CLASS_SIZE[c.req] == 0:
                    bit //= CLASS_SIZE[c.req]
                    if (((<uint64_t *>(self.base + slab + CHUNK_HDR))[bit >> 6] >> (bit & 63)) & 1):
                        return CLASS_SIZE[c.req]
                raise InvalidArgumentError(f"offset {offset} is not an allocated block")
            c = <chunk_t *>(self.base + off - CHUNK_HDR)
            if off % ALIGN or off < self.h.heap_off + CHUNK_HDR \
                    or c.tag != (CHUNK_TAG ^ <uint32_t>((off - CHUNK_HDR) >> 6)) \
                    or (c.word & STATE_MASK) != ST_USED:
                raise InvalidArgumentError(f"offset {offset} is not an allocated block")
            return (c.word & ~(<uint64_t>STATE_MASK)) - CHUNK_HDR
        finally:
            self._release()

    # ---- invariants and recovery (implemented in pool_alloc_check.pxi) ---------------------------------------
    def check(self):
        """Verify every invariant of the heap; return True or raise CorruptionError naming the broken one.

        Walks every chunk (sizes, alignment, bounds, boundary tags, no two adjacent free chunks, the walk ends
        exactly at the heap's end, so no overlap and no gap), every slab (window alignment, class, bitmap vs
        free count), the window bitmap, every free list and partial-slab list (links, bins, membership, no
        cycles) and the counters.
        """
        self._acquire()
        try:
            _heap_check(self)
            return True
        finally:
            self._release()

    def repair(self):
        """Rebuild every derived structure from one walk of the heap (called automatically on EOWNERDEAD).

        Raises:
            CorruptionError: an authoritative field (a chunk size or state) is damaged; nothing was changed.
        """
        self._acquire()
        try:
            _heap_repair(self)
        finally:
            self._release()

    def allocations(self):
        """Offsets of every live block (large blocks and slab slots), as a sorted int64 numpy array."""
        self._acquire()
        try:
            return _heap_allocations(self)
        finally:
            self._release()

    def trim(self):
        """Return the pages inside free chunks to the kernel (``madvise(MADV_REMOVE)``); returns the bytes.

        Only a free chunk's 64-byte header is state, so its other whole pages can go: on a shared tmpfs
        segment they stop counting as memory in use for every process, and read back as zeros when the
        chunk is allocated again. Nothing is released on a mapping that does not support it.
        """
        self._acquire()
        try:
            return _heap_trim(self)
        finally:
            self._release()

    def stats(self):
        """Capacity and occupancy of the heap from one walk (a dict of ints and one float).

        ``fragmentation`` is ``1 - largest_free / free_bytes`` (0 when the free space is one range).
        """
        self._acquire()
        try:
            return _heap_stats(self)
        finally:
            self._release()


def bytes_equal(a, b):
    """Byte-for-byte equality of two buffers (``memcmp`` without the GIL)."""
    cdef Py_buffer va, vb
    cdef int rc = 1
    PyObject_GetBuffer(a, &va, 0)
    try:
        PyObject_GetBuffer(b, &vb, 0)
        try:
            if va.len != vb.len:
                return False
            with nogil:
                rc = memcmp(va.buf, vb.buf, <size_t>va.len)
            return rc == 0
        finally:
            PyBuffer_Release(&vb)
    finally:
        PyBuffer_Release(&va)


# ---- C entry points for other compiled cores (see pool_heap_api.pxd) ----------------------------------------------
cdef int _api_acquire(object heap) except -1:
    return (<SegmentHeap>heap)._acquire()


cdef int _api_try_acquire(object heap) except -1:
    return (<SegmentHeap>heap)._acquire(True)


cdef int _api_release(object heap) except -1:
    return (<SegmentHeap>heap)._release()


cdef SegmentHeap _held(object heap, str call):
    # The heap of an entry point that needs the lock: usable, and locked by this thread.
    cdef SegmentHeap h = <SegmentHeap>heap
    h._ready()
    if h.depth <= 0 or h.owner != PyThread_get_thread_ident():
        raise StateError(f"{call}() needs the pool lock held by this thread")
    return h


cdef uint64_t _api_alloc_locked(object heap, uint64_t n) except? 0:
    if n == 0:
        raise InvalidArgumentError("size must be a positive integer, got 0")
    return _held(heap, "alloc_locked")._alloc_locked(n)


cdef uint64_t _api_try_alloc_locked(object heap, uint64_t n) except? 0:
    if n == 0:
        raise InvalidArgumentError("size must be a positive integer, got 0")
    return _held(heap, "try_alloc_locked")._try_alloc_locked(n)


cdef int _api_free_locked(object heap, uint64_t offset) except -1:
    return _held(heap, "free_locked")._free_locked(offset)


cdef heap_api_t _HEAP_API
_HEAP_API.heap_type = <void *>SegmentHeap
_HEAP_API.acquire = _api_acquire
_HEAP_API.release = _api_release
_HEAP_API.alloc_locked = _api_alloc_locked
_HEAP_API.free_locked = _api_free_locked
_HEAP_API.try_alloc_locked = _api_try_alloc_locked
_HEAP_API.try_acquire = _api_try_acquire


def heap_api():
    """A capsule with C entry points into :class:`SegmentHeap` (lock, and alloc / free under the lock) for
    other compiled cores, which cannot cimport the class in this build layout."""
    return PyCapsule_New(&_HEAP_API, HEAP_API_NAME, NULL)


include "pool_alloc_check.pxi"
