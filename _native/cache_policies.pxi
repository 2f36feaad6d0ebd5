# Included by cache_core.pyx: the TinyLFU frequency sketch, the policy dispatch and the eviction policies, as
# functions of the CacheCore they act on. Sources: see the header of cache_core.pyx.

# ------------------------------------------------------------------ TinyLFU frequency sketch
# Counters are bytes saturating at 15, grouped in 64-byte blocks (one cache line): an item's 4 counters
# (one per 16-byte row of its block) sit in the block its hash selects, as in Caffeine's sketch.
cdef inline void _sk_inc(CacheCore self, Py_hash_t h) noexcept:
    cdef uint64_t x = _mix(<uint64_t>h, SEED)
    cdef uint8_t* b = &self.sketch[(((x >> 32) * self.sk_blocks) >> 32) << 6]
    # unrolled and branch-free (saturating at 15): the hit path's largest cost after the lookup
    cdef uint8_t* c0 = &b[x & 15]
    cdef uint8_t* c1 = &b[16 + ((x >> 4) & 15)]
    cdef uint8_t* c2 = &b[32 + ((x >> 8) & 15)]
    cdef uint8_t* c3 = &b[48 + ((x >> 12) & 15)]
    c0[0] = c0[0] + (c0[0] < 15)
    c1[0] = c1[0] + (c1[0] < 15)
    c2[0] = c2[0] + (c2[0] < 15)
    c3[0] = c3[0] + (c3[0] < 15)
    self.sk_add += 1
    if self.sk_add >= self.sk_period:
        _sk_age(self)

cdef void _sk_age(CacheCore self) noexcept:
    cdef uint64_t j
    for j in range(self.sk_blocks << 6):
        self.sketch[j] >>= 1
    self.sk_add //= 2

cdef inline int _sk_est(CacheCore self, Py_hash_t h) noexcept:
    cdef uint64_t x = _mix(<uint64_t>h, SEED)
    cdef uint8_t* b = &self.sketch[(((x >> 32) * self.sk_blocks) >> 32) << 6]
    cdef int r, m = 15, v
    for r in range(4):
        v = b[(r << 4) + ((x >> (r << 2)) & 15)]
        if v < m:
            m = v
    return m

cdef void _set_window(CacheCore self, int64_t w) noexcept:
    self.win_max = w
    self.prot_max = <int64_t>(0.8 * (self.maxsize - w))

# ------------------------------------------------------------------ policy dispatch
cdef inline int _p_hit(CacheCore self, int32_t i) noexcept:
    cdef int k = self.kind
    cdef int32_t d
    if self.ln[i].prio:
        _move(self, L_PRIO + self.ln[i].prio - 1, i)
        return 0
    if k == K_WTLFU or self.adaptive:      # adaptive: kept warm for a switch to W-TinyLFU
        _sk_inc(self, self.kv[i].hash)
    if k == K_WTLFU:
        if self.ln[i].lst == L_PROB:
            _unlink(self, i)
            _push(self, L_MAIN, i)
            while self.lcnt[L_MAIN] > self.prot_max and self.lcnt[L_MAIN] > 0:
                d = self.ltail[L_MAIN]
                _unlink(self, d)
                _push(self, L_PROB, d)
        else:
            _move(self, self.ln[i].lst, i)
    elif k == K_LRU or k == K_ARC:
        _move(self, L_MAIN, i)
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

cdef int _p_insert(CacheCore self, int32_t i, int32_t g) except -1:
    """Give new resident ``i`` (priority 0) to the policy; ``g`` is a ghost with its hash, or -1."""
    cdef int k = self.kind
    if self.adaptive and k != K_WTLFU:
        _sk_inc(self, self.kv[i].hash)
    if k == K_WTLFU:
        _wt_insert(self, i)
    elif k == K_ARC:
        _arc_insert(self, i, g)
    elif k == K_S3:
        if g >= 0:                           # consumed before evicting, as libCacheSim does
            self._free_ghost(g)
        while self._over() and _p_evict_one(self):
            pass
        if g >= 0:
            _push(self, L_MAIN, i)
        elif not self.s3_evicted and self.lcnt[L_SMALL] >= self.small_max:
            _push(self, L_MAIN, i)            # warm-up: small is full, the cache is not
        else:
            _push(self, L_SMALL, i)
    elif k == K_LIRS:
        _lirs_insert(self, i, g)
    else:
        while self._over() and _p_evict_one(self):
            pass
        if k == K_LFU:
            _lfu_push(self, i)
        else:
            _push(self, L_MAIN, i)
    return 0

cdef int _p_remove(CacheCore self, int32_t i) except -1:
    """Unlink resident ``i`` from its policy or priority list (explicit delete or expiry)."""
    if self.ln[i].prio:
        _unlink(self, i)
    elif self.kind == K_SIEVE:
        if self.hand == i:
            self.hand = self.ln[i].prv
        _unlink(self, i)
    elif self.kind == K_LFU:
        _lfu_unlink(self, i)
    elif self.kind == K_LIRS:
        _lirs_remove(self, i)
    else:
        _unlink(self, i)
    return 0

cdef bint _p_evict_one(CacheCore self) except -1:
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
    _unlink(self, v)
    self._drop(v, 1, -1)
    return True

cdef bint _p_pop_one(CacheCore self) except -1:
    """popitem's victim: as :func:`_p_evict_one`, also when no bound is exceeded (ARC checks one)."""
    if self.kind == K_ARC:
        return _arc_evict(self, False)
    return _p_evict_one(self)

cdef bint _evict_prio(CacheCore self, int pmax) except -1:
    """Evict the LRU entry of the lowest non-empty priority level in 1..pmax."""
    cdef int p
    cdef int32_t v
    for p in range(1, pmax + 1):
        v = self.ltail[L_PRIO + p - 1]
        if v >= 0:
            _unlink(self, v)
            self._drop(v, 1, -1)
            return True
    return False

# --- W-TinyLFU
cdef int _wt_insert(CacheCore self, int32_t i) except -1:
    cdef int32_t c, v
    _sk_inc(self, self.kv[i].hash)
    _push(self, L_SMALL, i)
    while self.lcnt[L_SMALL] > self.win_max:
        c = self.ltail[L_SMALL]
        _unlink(self, c)
        if self._over():
            v = self.ltail[L_PROB]
            if v < 0:
                v = self.ltail[L_MAIN]
            if v < 0:
                _push(self, L_PROB, c)
                break
            if _sk_est(self, self.kv[c].hash) > _sk_est(self, self.kv[v].hash):
                _unlink(self, v)
                self._drop(v, 1, -1)
                _push(self, L_PROB, c)
            else:
                self._drop(c, 1, -1)
        else:
            _push(self, L_PROB, c)
    while self._over() and _p_evict_one(self):
        pass
    return 0

# --- SIEVE
cdef bint _sieve_evict(CacheCore self) except -1:
    cdef int32_t o = self.hand if self.hand >= 0 else self.ltail[L_MAIN]
    if o < 0:
        return False
    while self.ln[o].freq:
        self.ln[o].freq = 0
        o = self.ln[o].prv
        if o < 0:
            o = self.ltail[L_MAIN]
    self.hand = self.ln[o].prv
    _unlink(self, o)
    self._drop(o, 1, -1)
    return True

# --- S3-FIFO
# Eviction order as in libCacheSim's S3FIFO.c: evict from main when it is over its share (or small is
# empty), else walk small: objects seen twice move to main, the first other one is ghosted.
cdef bint _s3_evict(CacheCore self) except -1:
    cdef int32_t t
    self.s3_evicted = True
    while self.lcnt[L_SMALL] or self.lcnt[L_MAIN]:
        if self.lcnt[L_MAIN] > self.maxsize - self.small_max or self.lcnt[L_SMALL] == 0:
            if _s3_evict_main(self):
                return True
            continue
        while self.lcnt[L_SMALL]:
            t = self.ltail[L_SMALL]
            _unlink(self, t)
            if self.ln[t].freq > 1:
                self.ln[t].freq = 0
                _push(self, L_MAIN, t)
            else:
                self._drop(t, 1, L_G1)
                if self.lcnt[L_G1] > self.ghost_max:
                    self._free_ghost(self.ltail[L_G1])
                return True
    return False

cdef bint _s3_evict_main(CacheCore self) except -1:
    cdef int32_t t
    while self.lcnt[L_MAIN]:
        t = self.ltail[L_MAIN]
        _unlink(self, t)
        if self.ln[t].freq > 0:
            self.ln[t].freq -= 1
            _push(self, L_MAIN, t)
        else:
            self._drop(t, 1, -1)
            return True
    return False

# --- ARC (Megiddo & Modha 2003, Fig. 4); T1 = L_SMALL, T2 = L_MAIN, B1 = L_G1, B2 = L_G2
cdef bint _arc_replace(CacheCore self, bint in_b2) except -1:
    if not self._over():
        return False
    return _arc_evict(self, in_b2)

cdef bint _arc_evict(CacheCore self, bint in_b2) except -1:
    """ARC's REPLACE: move T1's or T2's LRU entry to its ghost list."""
    cdef int64_t t1 = self.lcnt[L_SMALL]
    cdef int32_t v
    if t1 >= 1 and ((in_b2 and t1 == self.arc_p) or t1 > self.arc_p):
        v = self.ltail[L_SMALL]
        _unlink(self, v)
        self._drop(v, 1, L_G1)
    elif self.lcnt[L_MAIN] > 0:
        v = self.ltail[L_MAIN]
        _unlink(self, v)
        self._drop(v, 1, L_G2)
    elif t1 >= 1:
        v = self.ltail[L_SMALL]
        _unlink(self, v)
        self._drop(v, 1, L_G1)
    else:
        return False
    return True

cdef int _arc_insert(CacheCore self, int32_t i, int32_t g) except -1:
    cdef int64_t c = self.maxsize, b1 = self.lcnt[L_G1], b2 = self.lcnt[L_G2], l1, total
    cdef int32_t v
    if g >= 0 and self.ln[g].lst == L_G1:
        self.arc_p = min(self.arc_p + (1.0 if b1 >= b2 else <double>b2 / b1), <double>c)
        _arc_replace(self, False)
        self._free_ghost(g)
        _push(self, L_MAIN, i)
    elif g >= 0 and self.ln[g].lst == L_G2:
        self.arc_p = max(self.arc_p - (1.0 if b2 >= b1 else <double>b1 / b2), 0.0)
        _arc_replace(self, True)
        self._free_ghost(g)
        _push(self, L_MAIN, i)
    else:
        l1 = self.lcnt[L_SMALL] + b1
        if l1 >= c:
            if self.lcnt[L_SMALL] < c:
                self._free_ghost(self.ltail[L_G1])
                _arc_replace(self, False)
            else:
                v = self.ltail[L_SMALL]
                _unlink(self, v)
                self._drop(v, 1, -1)
        else:
            total = l1 + self.lcnt[L_MAIN] + b2
            if total >= c:
                if total >= 2 * c and b2 > 0:
                    self._free_ghost(self.ltail[L_G2])
                _arc_replace(self, False)
        _push(self, L_SMALL, i)
    while self._over() and _arc_replace(self, False):
        pass
    return 0

# --- LFU with O(1) frequency buckets; bucket lists ordered by frequency from self.bmin
cdef int32_t _bnew(CacheCore self, int64_t f, int32_t after) noexcept:
    cdef int32_t b = self.bfree, n
    self.bfree = self.bnxt[b]
    self.bfreq[b] = f
    self.lhead[b] = -1
    self.ltail[b] = -1
    self.lcnt[b] = 0
    if after < 0:
        self.bprv[b] = -1
        self.bnxt[b] = self.bmin
        if self.bmin >= 0:
            self.bprv[self.bmin] = b
        self.bmin = b
    else:
        n = self.bnxt[after]
        self.bprv[b] = after
        self.bnxt[b] = n
        self.bnxt[after] = b
        if n >= 0:
            self.bprv[n] = b
    return b

cdef void _bdel(CacheCore self, int32_t b) noexcept:
    cdef int32_t p = self.bprv[b], n = self.bnxt[b]
    if p >= 0:
        self.bnxt[p] = n
    else:
        self.bmin = n
    if n >= 0:
        self.bprv[n] = p
    self.bnxt[b] = self.bfree
    self.bfree = b

cdef void _lfu_push(CacheCore self, int32_t i) noexcept:
    cdef int32_t b = self.bmin
    if b < 0 or self.bfreq[b] != 1:
        b = _bnew(self, 1, -1)
    _push(self, b, i)

cdef void _lfu_hit(CacheCore self, int32_t i) noexcept:
    cdef int32_t b = self.ln[i].lst, nb = self.bnxt[b]
    if nb < 0 or self.bfreq[nb] != self.bfreq[b] + 1:
        nb = _bnew(self, self.bfreq[b] + 1, b)
    _unlink(self, i)
    _push(self, nb, i)
    if self.lcnt[b] == 0:
        _bdel(self, b)

cdef void _lfu_unlink(CacheCore self, int32_t i) noexcept:
    cdef int32_t b = self.ln[i].lst
    _unlink(self, i)
    if self.lcnt[b] == 0:
        _bdel(self, b)

cdef bint _lfu_evict(CacheCore self) except -1:
    cdef int32_t b = self.bmin, v
    if b < 0:
        return False
    v = self.ltail[b]
    _lfu_unlink(self, v)
    self._drop(v, 1, -1)
    return True

# --- LIRS (Jiang & Zhang 2002). Stack S = L_MAIN (lst/prv/nxt), queue Q = L_SMALL on lprv/lnxt (resident
# HIR), non-resident HIR blocks: keys NULL, still in S, and in the FIFO L_G1 on lprv/lnxt (bounded).
cdef void _lirs_prune(CacheCore self) noexcept:
    cdef int32_t b = self.ltail[L_MAIN]
    while b >= 0 and not (self.ln[b].freq & F_LIR):
        _unlink(self, b)
        if self.kv[b].key == NULL:
            _qunlink(self, L_G1, b)
            _tdelete(self, b)
            _free(self, b)
        b = self.ltail[L_MAIN]

cdef void _lirs_demote_bottom(CacheCore self) noexcept:
    """The LIR block at the bottom of S becomes resident HIR at the end of Q."""
    cdef int32_t b
    _lirs_prune(self)                  # the bottom of S is a LIR block (an invariant; check() verifies it)
    b = self.ltail[L_MAIN]
    if b < 0:
        return
    _unlink(self, b)
    self.ln[b].freq = F_INQ
    self.lcnt[L_PROB] -= 1
    _qpush(self, L_SMALL, b)
    _lirs_prune(self)

cdef void _lirs_hit(CacheCore self, int32_t i) noexcept:
    cdef bint bottom
    if self.ln[i].freq & F_LIR:
        bottom = self.ltail[L_MAIN] == i
        _move(self, L_MAIN, i)
        if bottom:
            _lirs_prune(self)
    elif self.ln[i].lst == L_MAIN:       # resident HIR in S: becomes LIR
        _qunlink(self, L_SMALL, i)
        self.ln[i].freq = F_LIR
        self.lcnt[L_PROB] += 1
        _move(self, L_MAIN, i)
        if self.lcnt[L_PROB] > self.lir_max:
            _lirs_demote_bottom(self)
    elif self.lcnt[L_PROB] < self.lir_max:   # resident HIR not in S while the LIR set is short (entries were
        _qunlink(self, L_SMALL, i)           # deleted): becomes LIR, as a new block would in warm-up, so S never
        self.ln[i].freq = F_LIR              # holds a non-LIR block below every LIR one
        self.lcnt[L_PROB] += 1
        _push(self, L_MAIN, i)
    else:                              # resident HIR not in S
        _push(self, L_MAIN, i)
        _qunlink(self, L_SMALL, i)
        _qpush(self, L_SMALL, i)

cdef bint _lirs_evict(CacheCore self) except -1:
    cdef int32_t v = self.ltail[L_SMALL]
    if v >= 0:
        _qunlink(self, L_SMALL, v)
        if self.ln[v].lst == L_MAIN:
            self._drop(v, 1, -3)
            self.ln[v].freq = 0
            _qpush(self, L_G1, v)
            if self.lcnt[L_G1] > self.nonres_max:
                v = self.ltail[L_G1]
                _qunlink(self, L_G1, v)
                _unlink(self, v)
                _tdelete(self, v)
                _free(self, v)
                _lirs_prune(self)
        else:
            self._drop(v, 1, -1)
        return True
    v = self.ltail[L_MAIN]
    if v < 0:
        return False
    _unlink(self, v)
    self.lcnt[L_PROB] -= 1
    self._drop(v, 1, -1)
    _lirs_prune(self)
    return True

cdef int _lirs_insert(CacheCore self, int32_t i, int32_t g) except -1:
    while self._over() and _lirs_evict(self):
        pass
    if g >= 0 and self.ln[g].lst != L_MAIN:
        g = -1
    if g >= 0:                           # non-resident HIR still in S: becomes LIR
        _qunlink(self, L_G1, g)
        _unlink(self, g)
        _tdelete(self, g)
        _free(self, g)
        self.ln[i].freq = F_LIR
        self.lcnt[L_PROB] += 1
        _push(self, L_MAIN, i)
        if self.lcnt[L_PROB] > self.lir_max:
            _lirs_demote_bottom(self)
    elif self.lcnt[L_PROB] < self.lir_max:   # warm-up: LIR set not full
        self.ln[i].freq = F_LIR
        self.lcnt[L_PROB] += 1
        _push(self, L_MAIN, i)
    else:
        self.ln[i].freq = F_INQ
        _push(self, L_MAIN, i)
        _qpush(self, L_SMALL, i)
    return 0

cdef void _lirs_remove(CacheCore self, int32_t i) noexcept:
    if self.ln[i].freq & F_LIR:
        _unlink(self, i)
        self.lcnt[L_PROB] -= 1
        _lirs_prune(self)
    else:
        _qunlink(self, L_SMALL, i)
        if self.ln[i].lst == L_MAIN:
            _unlink(self, i)
            _lirs_prune(self)
