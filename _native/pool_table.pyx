# cython: auto_pickle=False
"""Hot-path operations on a pool's shared tables, whose layout is defined once, in ``pool_table_layout.pxd``.

The pool manager keeps numpy views of the same memory for the vectorised, rare operations (check, reconcile,
stats, GC); the per-call operations — resolving a block id for an agent, allocating and retiring block
entries, per-holder reference counts, the dedup index — are here, as plain C over the mapped tables, because
element-wise numpy access costs 100-200 ns per field. :func:`struct_layouts` reports the structs as the C
compiler laid them out; ``sutazai_hwopt.memory.tables`` builds its numpy dtypes from it.

Hash tables: open addressing with linear probing, Fibonacci hashing (Knuth, TAOCP vol. 3 §6.4, multiplicative
hashing) and backward-shift deletion (Algorithm R of the same section), so no tombstones accumulate. Every
method must be called with the pool's lock held.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset

cimport cython

from pool_heap_api cimport HEAP_API_NAME, heap_api_t
from pool_table_layout cimport *

from sutazai_hwopt.errors import CorruptionError, InvalidArgumentError, PoolExhaustedError

cdef enum:
    R_BAD_SLOT = -1
    R_FREED = -2
    R_NO_ACCESS = -3
    R_GONE = -4
    R_AGENT_MISS = -5
    R_TABLE_FULL = -6
    C_SEG_SHIFT = 40

cdef uint64_t C_PUNCH_MIN = 1 << 20
cdef uint64_t C_MAX_SIZE = 1 << 44          # the manager's largest pool

#: resolve() results below zero.
BAD_SLOT = R_BAD_SLOT
FREED = R_FREED
NO_ACCESS = R_NO_ACCESS
#: alloc_block() / free_block() results below zero besides those: the caller takes its slow path, which
#: reports the exact error (or registers the agent) with the same state untouched.
GONE = R_GONE                # the pool was destroyed
AGENT_MISS = R_AGENT_MISS    # the cached agent index no longer names this agent
TABLE_FULL = R_TABLE_FULL    # no free block slot
#: Heap ranges at least this big, or in an extension segment (``segment << SEG_SHIFT | offset``), are freed
#: through the pool's ``release`` (page punching, segment lookup); others straight through the primary heap.
PUNCH_MIN = C_PUNCH_MIN
SEG_SHIFT = C_SEG_SHIFT

#: The tables' format (the meta header's magic and version) and the shared constants of the block table.
META_MAGIC = META_MAGIC_C
META_VERSION = META_VERSION_C
FREE = ST_FREE
WRITING = ST_WRITING
SEALED = ST_SEALED
ALIAS = ST_ALIAS
F_DEDUP = FL_DEDUP
F_INDEXED = FL_INDEXED
AGENT_BITS = HOLDER_AGENT_BITS


cdef tuple _field(str name, const void *base, const void *field, size_t size, str ctype):
    return (name, <Py_ssize_t>(<const char *>field - <const char *>base), size, ctype)


cdef tuple _struct(size_t size, list fields):
    # The listed fields must tile the struct exactly (sorted, no gap, no overlap, nothing after the last one), so a
    # field added to a struct in pool_table_layout.pxd but not listed here is caught at import.
    cdef Py_ssize_t end = 0
    for name, off, fsize, _ctype in fields:
        if off != end:
            raise ImportError(f"pool_table: field {name!r} at offset {off}, expected {end} (unlisted field or padding)")
        end = off + fsize
    if end != <Py_ssize_t>size:
        raise ImportError(f"pool_table: the listed fields cover {end} of the struct's {size} bytes")
    return (size, tuple(fields))


cdef dict _measure():
    cdef meta_hdr_t h
    cdef agent_t a
    cdef block_t b
    cdef slot_t s
    return {
        "meta_hdr": _struct(sizeof(meta_hdr_t), [
            _field("magic", &h, &h.magic, sizeof(h.magic), cython.typeof(h.magic)),
            _field("version", &h, &h.version, sizeof(h.version), cython.typeof(h.version)),
            _field("destroyed", &h, &h.destroyed, sizeof(h.destroyed), cython.typeof(h.destroyed)),
            _field("n_agents", &h, &h.n_agents, sizeof(h.n_agents), cython.typeof(h.n_agents)),
            _field("n_blocks", &h, &h.n_blocks, sizeof(h.n_blocks), cython.typeof(h.n_blocks)),
            _field("n_holders", &h, &h.n_holders, sizeof(h.n_holders), cython.typeof(h.n_holders)),
            _field("n_dedup", &h, &h.n_dedup, sizeof(h.n_dedup), cython.typeof(h.n_dedup)),
            _field("n_ext", &h, &h.n_ext, sizeof(h.n_ext), cython.typeof(h.n_ext)),
            _field("max_heap", &h, &h.max_heap, sizeof(h.max_heap), cython.typeof(h.max_heap)),
            _field("ext_size", &h, &h.ext_size, sizeof(h.ext_size), cython.typeof(h.ext_size)),
            _field("pad", &h, &h.pad, sizeof(h.pad), cython.typeof(h.pad)),
        ]),
        "agent": _struct(sizeof(agent_t), [
            _field("name", &a, &a.name, sizeof(a.name), cython.typeof(a.name)),
            _field("pid", &a, &a.pid, sizeof(a.pid), cython.typeof(a.pid)),
            _field("pad", &a, &a.pad, sizeof(a.pad), cython.typeof(a.pad)),
            _field("start", &a, &a.start, sizeof(a.start), cython.typeof(a.start)),
        ]),
        "block": _struct(sizeof(block_t), [
            _field("state", &b, &b.state, sizeof(b.state), cython.typeof(b.state)),
            _field("codec", &b, &b.codec, sizeof(b.codec), cython.typeof(b.codec)),
            _field("shuffle", &b, &b.shuffle, sizeof(b.shuffle), cython.typeof(b.shuffle)),
            _field("flags", &b, &b.flags, sizeof(b.flags), cython.typeof(b.flags)),
            _field("gen", &b, &b.gen, sizeof(b.gen), cython.typeof(b.gen)),
            _field("off", &b, &b.off, sizeof(b.off), cython.typeof(b.off)),
            _field("size", &b, &b.size, sizeof(b.size), cython.typeof(b.size)),
            _field("nbytes", &b, &b.nbytes, sizeof(b.nbytes), cython.typeof(b.nbytes)),
            _field("refs", &b, &b.refs, sizeof(b.refs), cython.typeof(b.refs)),
            _field("target", &b, &b.target, sizeof(b.target), cython.typeof(b.target)),
            _field("h_lo", &b, &b.h_lo, sizeof(b.h_lo), cython.typeof(b.h_lo)),
            _field("h_hi", &b, &b.h_hi, sizeof(b.h_hi), cython.typeof(b.h_hi)),
            _field("owner", &b, &b.owner, sizeof(b.owner), cython.typeof(b.owner)),
            _field("head", &b, &b.head, sizeof(b.head), cython.typeof(b.head)),
        ]),
        "slot": _struct(sizeof(slot_t), [
            _field("key", &s, &s.key, sizeof(s.key), cython.typeof(s.key)),
            _field("val", &s, &s.val, sizeof(s.val), cython.typeof(s.val)),
            _field("pad", &s, &s.pad, sizeof(s.pad), cython.typeof(s.pad)),
        ]),
    }


cdef dict _LAYOUTS = _measure()


def struct_layouts():
    """``{struct: (size, ((field, offset, size, C type), ...))}`` of the shared tables, as compiled.

    Structs: ``meta_hdr`` (the meta area's header), ``agent``, ``block`` and ``slot`` (holder table and dedup
    index entries), in the order they follow each other in the meta area. Offsets and sizes are the C compiler's
    (``offsetof`` / ``sizeof``), so the numpy views built from them cannot drift from the C code.
    """
    return dict(_LAYOUTS)


cdef int _parse_id(object block_id, Py_ssize_t *colon, uint64_t *slot, uint64_t *gen) except -1:
    # 1 if block_id is "pool:slot:generation" with ASCII-digit slot and generation (at most 18 digits each).
    cdef Py_ssize_t n, i, c1 = -1, c2 = -1
    cdef Py_UCS4 ch
    if type(block_id) is not str:
        return 0
    cdef str s = <str>block_id
    n = len(s)
    for i in range(n):
        ch = s[i]
        if ch == u':':
            if c1 < 0:
                c1 = i
            elif c2 < 0:
                c2 = i
            else:
                return 0
    if c2 < 0 or c2 == c1 + 1 or c2 == n - 1 or c2 - c1 > 19 or n - c2 > 19:
        return 0
    slot[0] = 0
    gen[0] = 0
    for i in range(c1 + 1, c2):
        ch = s[i]
        if ch < u'0' or ch > u'9':
            return 0
        slot[0] = slot[0] * 10 + (<uint64_t>ch - 48)
    for i in range(c2 + 1, n):
        ch = s[i]
        if ch < u'0' or ch > u'9':
            return 0
        gen[0] = gen[0] * 10 + (<uint64_t>ch - 48)
    colon[0] = c1
    return 1


def parse_block_id(object block_id):
    """``(pool_id, slot, generation)`` of a ``"pool:slot:generation"`` string (ASCII digits), or None."""
    cdef Py_ssize_t c1
    cdef uint64_t slot, gen
    if not _parse_id(block_id, &c1, &slot, &gen):
        return None
    return (<str>block_id)[:c1], slot, gen


def alloc_fast(dict pools, dict names, object agent_id, object pool_id, object size, object dedup):
    """``MemoryPoolManager.allocate_memory`` when everything is cached in this process, in one call.

    ``names`` maps agent ids that passed the manager's checks to their UTF-8; ``pools`` maps pool ids to
    attached pools whose ``agents`` dict caches this process's agent indexes. Anything not cached, or not of
    the exact expected type, returns a negative code (nothing changed) and the manager takes its checked path.
    """
    if type(agent_id) is not str or type(pool_id) is not str or type(size) is not int:
        return R_AGENT_MISS
    name = names.get(agent_id)
    pool = pools.get(pool_id)
    if name is None or pool is None or not 0 < size <= C_MAX_SIZE:
        return R_AGENT_MISS
    agent = pool.agents.get(agent_id)
    if agent is None:
        return R_AGENT_MISS
    return (<TableCore?>pool.core).alloc_block(pool, agent, name, pool_id, size, FL_DEDUP if dedup else 0)


def free_fast(dict pools, dict names, object agent_id, object block_id):
    """``MemoryPoolManager.free_memory`` when everything is cached in this process (see :func:`alloc_fast`)."""
    cdef Py_ssize_t c1
    cdef uint64_t slot, gen
    if type(agent_id) is not str or not _parse_id(block_id, &c1, &slot, &gen):
        return R_AGENT_MISS
    name = names.get(agent_id)
    pool = pools.get((<str>block_id)[:c1])
    if name is None or pool is None:
        return R_AGENT_MISS
    agent = pool.agents.get(agent_id)
    if agent is None:
        return R_AGENT_MISS
    return (<TableCore?>pool.core).free_block(pool, slot, gen, agent, name)


cdef class TableCore:
    """C access to one pool's block / holder / dedup tables inside the mapped segment.

    Args:
        buffer: the whole segment (writable).
        offset: where the agent table starts, right after the meta header (the block table, holders and
            dedup index follow).
        n_agents, n_blocks, n_holders, n_dedup: table capacities (hash tables: powers of two).
    """

    cdef Py_buffer view
    cdef bint has_view
    cdef meta_hdr_t *meta
    cdef agent_t *agents
    cdef block_t *blocks
    cdef slot_t *holders
    cdef slot_t *dedup
    cdef readonly uint64_t n_agents, n_blocks, n_holders, n_dedup
    cdef int h_shift, d_shift
    cdef uint64_t hint
    cdef uint32_t recent[64]         # slots this handle retired last (reused first: warm cache lines)
    cdef int n_recent
    cdef object heap
    cdef heap_api_t *api

    def __cinit__(self):
        self.has_view = False

    def __init__(self, object buffer, uint64_t offset, uint64_t n_agents, uint64_t n_blocks, uint64_t n_holders,
                 uint64_t n_dedup):
        for n in (n_holders, n_dedup):
            if n < 16 or n & (n - 1):
                raise InvalidArgumentError(f"hash table sizes must be powers of two >= 16, got {n}")
        PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE)
        self.has_view = True
        end = (offset + sizeof(agent_t) * n_agents + sizeof(block_t) * n_blocks
               + sizeof(slot_t) * (n_holders + n_dedup))
        if end > <uint64_t>self.view.len or offset % 8 or offset < sizeof(meta_hdr_t):
            self.close()
            raise InvalidArgumentError(f"tables at [{offset}, {end}) do not fit the {self.view.len}-byte buffer "
                                       f"after a {sizeof(meta_hdr_t)}-byte meta header")
        cdef char *p = <char *>self.view.buf + offset
        self.meta = <meta_hdr_t *>(p - sizeof(meta_hdr_t))     # the meta header just before the tables
        self.agents = <agent_t *>p
        self.blocks = <block_t *>(p + sizeof(agent_t) * n_agents)
        self.holders = <slot_t *>(p + sizeof(agent_t) * n_agents + sizeof(block_t) * n_blocks)
        self.dedup = self.holders + n_holders
        self.n_agents, self.n_blocks, self.n_holders, self.n_dedup = n_agents, n_blocks, n_holders, n_dedup
        self.h_shift = 64 - (n_holders.bit_length() - 1)
        self.d_shift = 64 - (n_dedup.bit_length() - 1)
        self.hint = 0
        self.n_recent = 0
        self.heap = None
        self.api = NULL

    def bind_heap(self, object heap, object api):
        """Remember the pool's primary ``SegmentHeap`` (its lock is the pool lock) and the allocator's C entry
        points (the capsule from ``pool_alloc.heap_api()``) for the hot paths."""
        if not PyCapsule_IsValid(api, HEAP_API_NAME):
            raise InvalidArgumentError(f"api must be the capsule from pool_alloc.heap_api(), got {api!r}")
        cdef heap_api_t *p = <heap_api_t *>PyCapsule_GetPointer(api, HEAP_API_NAME)
        if not isinstance(heap, <type>p.heap_type):
            raise InvalidArgumentError(f"heap must be a SegmentHeap, got {type(heap).__name__}")
        self.api = p
        self.heap = heap

    def close(self):
        """Release the buffer export (idempotent)."""
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
            self.blocks = NULL
        self.heap = None
        self.api = NULL

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)

    cdef inline int _ok(self) except -1:
        if not self.has_view:
            raise InvalidArgumentError("the TableCore is closed")
        return 0

    # ---- hash tables ----------------------------------------------------------------------------------------
    cdef long _find(self, slot_t *t, uint64_t n, int shift, uint64_t key) noexcept:
        cdef uint64_t i = (key * SZ_FIB) >> shift
        cdef uint64_t k, steps = 0
        while steps < n:
            k = t[i].key
            if k == key:
                return <long>i
            if k == 0:
                return -1
            i = (i + 1) & (n - 1)
            steps += 1
        return -1

    cdef int _insert(self, slot_t *t, uint64_t n, int shift, uint64_t key, uint32_t val) except -1:
        cdef uint64_t i = (key * SZ_FIB) >> shift
        cdef uint64_t k, steps = 0
        while steps < n:
            k = t[i].key
            if k == key or k == 0:
                t[i].val = val
                t[i].key = key           # the key store publishes a new entry
                return 0
            i = (i + 1) & (n - 1)
            steps += 1
        raise CorruptionError("a shared hash table is full (it is sized to stay at most half full)")

    cdef void _delete_at(self, slot_t *t, uint64_t n, int shift, uint64_t i) noexcept:
        cdef uint64_t j = i, k, h, mask = n - 1
        while True:
            t[i].key = 0
            while True:
                j = (j + 1) & mask
                k = t[j].key
                if k == 0:
                    return
                h = (k * SZ_FIB) >> shift
                if (i <= j and i < h and h <= j) or (i > j and (h > i or h <= j)):
                    continue
                break
            t[i].val = t[j].val
            t[i].key = k
            i = j

    cdef inline uint64_t _hkey(self, uint64_t slot, uint64_t agent) noexcept:
        return ((slot + 1) << HOLDER_AGENT_BITS) | agent

    def holder_count(self, uint64_t slot, uint64_t agent):
        """References ``agent`` holds on block ``slot``."""
        self._ok()
        cdef long i = self._find(self.holders, self.n_holders, self.h_shift, self._hkey(slot, agent))
        return self.holders[i].val if i >= 0 else 0

    def holder_add(self, uint64_t slot, uint64_t agent, long delta):
        """Change one holder's count by ``delta``; the entry goes away at 0. Returns the new count."""
        self._ok()
        return self._holder_add(slot, agent, delta)

    cdef long _holder_add(self, uint64_t slot, uint64_t agent, long delta) except -1:
        cdef uint64_t key = self._hkey(slot, agent)
        cdef long i = self._find(self.holders, self.n_holders, self.h_shift, key)
        cdef long count = (self.holders[i].val if i >= 0 else 0) + delta
        if count < 0:
            raise CorruptionError(f"holder count of block slot {slot}, agent {agent} would go negative")
        if count == 0:
            if i >= 0:
                self._delete_at(self.holders, self.n_holders, self.h_shift, <uint64_t>i)
        else:
            self._insert(self.holders, self.n_holders, self.h_shift, key, <uint32_t>count)
        return count

    def dedup_lookup(self, uint64_t h_lo):
        """Slot of the canonical sealed block for this hash word, or -1."""
        self._ok()
        cdef long i = self._find(self.dedup, self.n_dedup, self.d_shift, h_lo or 1)
        return <long>self.dedup[i].val if i >= 0 else -1

    def dedup_insert(self, uint64_t h_lo, uint32_t slot):
        self._ok()
        self._insert(self.dedup, self.n_dedup, self.d_shift, h_lo or 1, slot)

    def dedup_remove(self, uint64_t h_lo, uint32_t slot):
        self._ok()
        self._dedup_remove(h_lo, slot)

    cdef void _dedup_remove(self, uint64_t h_lo, uint32_t slot) noexcept:
        cdef long i = self._find(self.dedup, self.n_dedup, self.d_shift, h_lo or 1)
        if i >= 0 and self.dedup[i].val == slot:
            self._delete_at(self.dedup, self.n_dedup, self.d_shift, <uint64_t>i)

    # ---- blocks ---------------------------------------------------------------------------------------------
    def agent_is(self, uint64_t idx, bytes name):
        """True if agent entry ``idx`` holds ``name`` (a cheap check of a cached index)."""
        self._ok()
        return self._agent_is(idx, name)

    cdef bint _agent_is(self, uint64_t idx, bytes name) noexcept:
        cdef Py_ssize_t n = len(name)
        if idx >= self.n_agents or n > NAME_BYTES:
            return False
        if memcmp(self.agents[idx].name, <char *>name, n) != 0:
            return False
        return n == NAME_BYTES or self.agents[idx].name[n] == 0

    def resolve(self, uint64_t slot, uint64_t gen, uint64_t agent):
        """The block's state if ``agent`` may use id (slot, gen), else BAD_SLOT, FREED or NO_ACCESS."""
        self._ok()
        return self._resolve(slot, gen, agent)

    cdef int _resolve(self, uint64_t slot, uint64_t gen, uint64_t agent) noexcept:
        if slot >= self.n_blocks:
            return R_BAD_SLOT
        cdef block_t *b = &self.blocks[slot]
        if b.gen != gen or b.state == ST_FREE:
            return R_FREED
        if self._find(self.holders, self.n_holders, self.h_shift, self._hkey(slot, agent)) < 0:
            return R_NO_ACCESS
        return b.state

    def free_slot(self):
        """A FREE block slot or -1 (slots this handle retired last, else a scan from a moving hint)."""
        self._ok()
        return self._free_slot()

    cdef long _free_slot(self) except? -2:
        cdef uint64_t s, i
        while self.n_recent > 0:
            self.n_recent -= 1
            s = self.recent[self.n_recent]
            if s < self.n_blocks and self.blocks[s].state == ST_FREE:
                return <long>s
        for i in range(self.n_blocks):
            s = (self.hint + i) % self.n_blocks
            if self.blocks[s].state == ST_FREE:
                self.hint = s + 1
                return <long>s
        return -1

    def new_block(self, uint64_t slot, uint64_t state, uint64_t off, uint64_t size, uint64_t nbytes,
                  uint64_t codec, uint64_t shuffle, uint64_t flags, uint64_t agent, long target,
                  uint64_t h_lo=0, uint64_t h_hi=0, uint64_t head=0):
        """Fill a FREE entry, publish it with the state store, and give ``agent`` its first reference."""
        self._ok()
        return self._new_block(slot, state, off, size, nbytes, codec, shuffle, flags, agent, target, h_lo, h_hi,
                               head)

    cdef uint32_t _new_block(self, uint64_t slot, uint64_t state, uint64_t off, uint64_t size, uint64_t nbytes,
                             uint64_t codec, uint64_t shuffle, uint64_t flags, uint64_t agent, long target,
                             uint64_t h_lo, uint64_t h_hi, uint64_t head) except? 0xFFFFFFFF:
        if slot >= self.n_blocks or self.blocks[slot].state != ST_FREE:
            raise CorruptionError(f"block slot {slot} is not free")
        cdef block_t *b = &self.blocks[slot]
        b.off, b.size, b.nbytes = off, size, nbytes
        b.codec, b.shuffle, b.flags = <uint8_t>codec, <uint8_t>shuffle, <uint8_t>flags
        b.h_lo, b.h_hi, b.head = h_lo, h_hi, <uint32_t>head
        b.target, b.owner, b.refs = <int32_t>target, <uint32_t>agent, 1
        b.state = <uint8_t>state
        self._holder_add(slot, agent, 1)
        return b.gen

    def retire(self, uint64_t slot):
        """Mark FREE and bump the generation (old ids then fail); the state store is the commit."""
        self._ok()
        self._retire(slot)

    cdef int _retire(self, uint64_t slot) except -1:
        cdef block_t *b = &self.blocks[slot]
        b.state = ST_FREE
        b.gen += 1
        b.flags = 0
        b.refs = 0
        b.target = -1
        b.head = 0
        if self.n_recent < 64:
            self.recent[self.n_recent] = <uint32_t>slot
            self.n_recent += 1
        return 0

    def unref(self, uint64_t slot, uint64_t n):
        """Drop ``n`` references of ``slot``; release it (and an alias's target) when none remain.

        Returns the ``(offset, size)`` heap ranges the caller must free (under the same lock).
        """
        self._ok()
        return self._unref(slot, n)

    cdef list _unref(self, uint64_t slot, uint64_t n):
        cdef list out = []
        cdef block_t *b
        cdef long target
        while True:
            b = &self.blocks[slot]
            if b.refs <= n:
                b.refs = 0
            else:
                b.refs -= <uint32_t>n
                return out
            if b.state == ST_ALIAS:
                target = b.target
                self._retire(slot)
                if target < 0 or <uint64_t>target >= self.n_blocks:
                    raise CorruptionError(f"alias slot {slot} points at slot {target}")
                slot, n = <uint64_t>target, 1
                continue
            if b.flags & FL_INDEXED:
                self._dedup_remove(b.h_lo, <uint32_t>slot)
            out.append((b.off, b.size))
            self._retire(slot)
            return out

    def block(self, uint64_t slot):
        """(state, gen, off, size, nbytes, codec, shuffle, flags, target, h_lo, h_hi) of one entry."""
        self._ok()
        if slot >= self.n_blocks:
            raise InvalidArgumentError(f"slot {slot} is out of range (table holds {self.n_blocks})")
        cdef block_t *b = &self.blocks[slot]
        return (b.state, b.gen, b.off, b.size, b.nbytes, b.codec, b.shuffle, b.flags, b.target, b.h_lo, b.h_hi)

    def physical(self, uint64_t slot):
        """The slot that holds the bytes: an alias's target, else ``slot`` itself."""
        self._ok()
        return <uint64_t>self.blocks[slot].target if self.blocks[slot].state == ST_ALIAS else slot

    def seal(self, uint64_t slot, uint64_t h_lo, uint64_t h_hi, bint index):
        """Publish a WRITING block as SEALED (and make it the dedup index's copy of its hash)."""
        self._ok()
        cdef block_t *b = &self.blocks[slot]
        b.h_lo, b.h_hi = h_lo, h_hi
        if index:
            b.flags |= FL_INDEXED
            self.dedup_insert(h_lo, <uint32_t>slot)
        b.state = ST_SEALED

    def make_alias(self, uint64_t slot, uint64_t target, uint64_t h_lo, uint64_t h_hi):
        """Turn a WRITING block into an alias of ``target`` (which gains a reference). The caller frees the
        block's own heap range afterwards."""
        self._ok()
        cdef block_t *b = &self.blocks[slot]
        self.blocks[target].refs += 1
        b.h_lo, b.h_hi, b.target = h_lo, h_hi, <int32_t>target
        b.state = ST_ALIAS
        b.off = 0

    def destroyed(self):
        """True once the pool was destroyed (a flag in the shared meta header)."""
        self._ok()
        return self.meta.destroyed != 0

    def add_refs(self, uint64_t slot, long n):
        self._ok()
        self.blocks[slot].refs = <uint32_t>(<long>self.blocks[slot].refs + n)

    # ---- the manager's hot paths: one lock round trip each ---------------------------------------------------
    cpdef object alloc_block(self, object pool, uint64_t agent, bytes name, str pool_id, uint64_t size,
                    uint64_t flags):
        """``allocate_memory`` after argument checks, under one acquisition of ``heap``'s lock.

        Checks the pool is live and that the cached agent index still names ``name``, takes a block slot,
        allocates ``size`` bytes (the bound heap's ``alloc``, or ``pool.alloc``, which may use or grow
        extension segments, when the primary is full), fills the entry and gives the agent its reference.

        Returns:
            The block id ``"pool:slot:generation"``, or GONE / AGENT_MISS / TABLE_FULL (nothing changed).
        """
        cdef long slot
        cdef uint32_t gen
        cdef heap_api_t *api
        cdef uint64_t off
        self._ok()
        heap = self.heap
        if heap is None:
            raise InvalidArgumentError("no heap bound to this TableCore (call bind_heap first)")
        api = self.api
        api.acquire(heap)
        try:
            if self.meta.destroyed != 0:
                return R_GONE
            if not self._agent_is(agent, name):
                return R_AGENT_MISS
            slot = self._free_slot()
            if slot < 0:
                return R_TABLE_FULL
            try:
                off = api.alloc_locked(heap, size)
            except PoolExhaustedError:
                off = pool.alloc(size)
            gen = self._new_block(<uint64_t>slot, ST_WRITING, off, size, size, 0, 0, flags, agent, -1, 0, 0, 0)
            return f"{pool_id}:{slot}:{gen}"
        finally:
            api.release(heap)

    cpdef object free_block(self, object pool, uint64_t slot, uint64_t gen, uint64_t agent, bytes name):
        """``free_memory`` after argument checks, under one acquisition of ``heap``'s lock.

        Checks the pool, the cached agent index and the agent's access, drops one of its references, and frees
        the heap ranges of blocks nobody holds any more (big or extension-segment ranges through
        ``pool.release``).

        Returns:
            0, or GONE / AGENT_MISS / BAD_SLOT / FREED / NO_ACCESS (nothing changed).
        """
        cdef int state
        cdef uint64_t off, size
        cdef block_t *b
        cdef heap_api_t *api
        self._ok()
        heap = self.heap
        if heap is None:
            raise InvalidArgumentError("no heap bound to this TableCore (call bind_heap first)")
        api = self.api
        api.acquire(heap)
        try:
            if self.meta.destroyed != 0:
                return R_GONE
            if not self._agent_is(agent, name):
                return R_AGENT_MISS
            state = self._resolve(slot, gen, agent)
            if state < 0:
                return state
            self._holder_add(slot, agent, -1)
            b = &self.blocks[slot]
            if b.refs > 1:
                b.refs -= 1
                return 0
            if b.state == ST_ALIAS:
                for rng in self._unref(slot, 1):
                    off, size = rng
                    pool.release(off, size)
                return 0
            # The last reference of a block holding bytes: as _unref(), without building a list.
            b.refs = 0
            if b.flags & FL_INDEXED:
                self._dedup_remove(b.h_lo, <uint32_t>slot)
            off, size = b.off, b.size
            self._retire(slot)
            if size < C_PUNCH_MIN and off >> C_SEG_SHIFT == 0:
                api.free_locked(heap, off)
            else:
                pool.release(off, size)
            return 0
        finally:
            api.release(heap)
