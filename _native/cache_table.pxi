# Included by cache_core.pyx (one module, not a separate one): the slot arrays, the hash table and the intrusive
# lists, as functions of the CacheCore they act on. Slots live in C arrays (kv: key, value, hash; ln: links and
# policy bits) grown by _grow; the table holds slot indices, open addressing with linear probing and
# backward-shift deletion; each list is doubly linked through ln[i].prv/nxt (LIRS's second list: lprv/lnxt).

cdef int _grow(CacheCore self, int32_t newcap) except -1:
    cdef int32_t i, old = self.cap
    cdef void* p
    if newcap <= old:
        return 0
    self.kv = <Slot*>_re(self.kv, newcap * sizeof(Slot))
    self.ln = <Link*>_re(self.ln, newcap * sizeof(Link))
    if self.wts != NULL:
        self.wts = <int64_t*>_re(self.wts, newcap * sizeof(int64_t))
    if self.expires != NULL:
        self.expires = <double*>_re(self.expires, newcap * sizeof(double))
        self.wprv = <int32_t*>_re(self.wprv, newcap * sizeof(int32_t))
        self.wnxt = <int32_t*>_re(self.wnxt, newcap * sizeof(int32_t))
    if self.kind == K_LIRS or self.lprv != NULL:
        self.lprv = <int32_t*>_re(self.lprv, newcap * sizeof(int32_t))
        self.lnxt = <int32_t*>_re(self.lnxt, newcap * sizeof(int32_t))
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
                _tinsert(self, i)
    return 0

cdef void* _re(void* p, size_t n) except NULL:
    cdef void* q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q

cdef int32_t _alloc(CacheCore self) except -1:
    cdef int32_t i
    cdef int32_t want
    if self.free_head < 0:
        want = max(16, 2 * self.cap)
        if self.cap < self.maxsize + 2 and want > self.maxsize + 2:
            want = self.maxsize + 2        # room for the residents first; ghosts may grow it later
        _grow(self, min(self.max_slots, want))
        if self.free_head < 0:
            raise MemoryError("cache slots exhausted")
    i = self.free_head
    self.free_head = self.ln[i].nxt
    self.nslots_used += 1
    return i

cdef inline void _free(CacheCore self, int32_t i) noexcept:
    self.ln[i].lst = -1
    self.ln[i].nxt = self.free_head
    self.free_head = i
    self.nslots_used -= 1

cdef inline uint64_t _home(CacheCore self, Py_hash_t h) noexcept:
    return (<uint64_t>h * <uint64_t>0x9E3779B97F4A7C15) >> (self.tshift + 0) & (self.tsize - 1)

cdef void _tinsert(CacheCore self, int32_t i) noexcept:
    cdef uint64_t pos = _home(self, self.kv[i].hash), mask = self.tsize - 1
    while self.table[pos] >= 0:
        pos = (pos + 1) & mask
    self.table[pos] = i

cdef void _tdelete(CacheCore self, int32_t i) noexcept:
    cdef uint64_t mask = self.tsize - 1
    cdef uint64_t pos = _home(self, self.kv[i].hash), j, home
    cdef int32_t e
    while self.table[pos] != i:
        pos = (pos + 1) & mask
    j = pos
    while True:
        j = (j + 1) & mask
        e = self.table[j]
        if e < 0:
            break
        home = _home(self, self.kv[e].hash)
        if ((j - home) & mask) >= ((j - pos) & mask):
            self.table[pos] = e
            pos = j
    self.table[pos] = -1
    self.version += 1

cdef inline int32_t _probe(CacheCore self, object key, Py_hash_t h) except -2:
    """Fast path of :meth:`_find` for a resident key found by identity or as an exact str (no Python code runs);
    any other candidate with the same hash defers to it."""
    cdef uint64_t mask = self.tsize - 1
    cdef uint64_t pos = _home(self, h)
    cdef int32_t i, g
    cdef PyObject* k
    cdef int eq
    while True:
        i = self.table[pos]
        if i < 0:
            return -1
        if self.kv[i].hash == h:
            k = self.kv[i].key
            if k == <PyObject*>key:
                return i
            if k != NULL:                    # (a ghost, k NULL, never matches)
                eq = _str_eq(k, <PyObject*>key)
                if eq > 0:
                    return i
                if eq < 0:
                    return _find(self, key, h, &g)
        pos = (pos + 1) & mask

cdef int32_t _find(CacheCore self, object key, Py_hash_t h, int32_t* ghost) except -2:
    """Resident slot of ``key`` or -1; ``ghost[0]`` gets a ghost slot with the same hash, or -1."""
    cdef uint64_t mask, pos
    cdef int32_t i
    cdef PyObject* k
    cdef uint64_t ver
    cdef int r
    while True:
        mask = self.tsize - 1
        pos = _home(self, h)
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
                    r = _str_eq(k, <PyObject*>key)
                    if r >= 0:
                        if r:
                            return i
                        pos = (pos + 1) & mask
                        continue
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

cdef inline void _push(CacheCore self, int32_t l, int32_t i) noexcept:
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

cdef inline void _unlink(CacheCore self, int32_t i) noexcept:
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

cdef inline void _move(CacheCore self, int32_t l, int32_t i) noexcept:
    """Make ``i`` the head of list ``l``. Within one list (every hit but ARC's T1 -> T2) only the links change:
    no count or list id is rewritten, and ``i`` is not the head, so it has a predecessor."""
    cdef int32_t h = self.lhead[l], p, n
    if h == i:
        return
    if self.ln[i].lst != l:
        _unlink(self, i)
        _push(self, l, i)
        return
    p = self.ln[i].prv
    n = self.ln[i].nxt
    self.ln[p].nxt = n
    if n >= 0:
        self.ln[n].prv = p
    else:
        self.ltail[l] = p
    self.ln[i].prv = -1
    self.ln[i].nxt = h
    self.ln[h].prv = i
    self.lhead[l] = i

# LIRS second intrusive list (queue Q of resident HIR blocks, or the FIFO of non-resident ones)
cdef inline void _qpush(CacheCore self, int32_t l, int32_t i) noexcept:
    cdef int32_t h = self.lhead[l]
    self.lprv[i] = -1
    self.lnxt[i] = h
    if h >= 0:
        self.lprv[h] = i
    else:
        self.ltail[l] = i
    self.lhead[l] = i
    self.lcnt[l] += 1

cdef inline void _qunlink(CacheCore self, int32_t l, int32_t i) noexcept:
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
