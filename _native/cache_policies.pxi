# Included at the end of cache_core.pyx: the eviction policies and the adaptive selector, as functions of
# the CacheCore they act on. (Split out only to keep each source file short; it is not a separate module.)
# Sources: see the header of cache_core.pyx.

# --- W-TinyLFU
cdef int _wt_insert(CacheCore self, int32_t i) except -1:
    cdef int32_t c, v
    self._sk_inc(self.kv[i].hash)
    self._push(L_SMALL, i)
    while self.lcnt[L_SMALL] > self.win_max:
        c = self.ltail[L_SMALL]
        self._unlink(c)
        if self._over():
            v = self.ltail[L_PROB]
            if v < 0:
                v = self.ltail[L_MAIN]
            if v < 0:
                self._push(L_PROB, c)
                break
            if self._sk_est(self.kv[c].hash) > self._sk_est(self.kv[v].hash):
                self._unlink(v)
                self._drop(v, 1, -1)
                self._push(L_PROB, c)
            else:
                self._drop(c, 1, -1)
        else:
            self._push(L_PROB, c)
    while self._over() and self._p_evict_one():
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
    self._unlink(o)
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
            self._unlink(t)
            if self.ln[t].freq > 1:
                self.ln[t].freq = 0
                self._push(L_MAIN, t)
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
        self._unlink(t)
        if self.ln[t].freq > 0:
            self.ln[t].freq -= 1
            self._push(L_MAIN, t)
        else:
            self._drop(t, 1, -1)
            return True
    return False

# --- ARC (Megiddo & Modha 2003, Fig. 4); T1 = L_SMALL, T2 = L_MAIN, B1 = L_G1, B2 = L_G2
cdef bint _arc_replace(CacheCore self, bint in_b2) except -1:
    cdef int64_t t1 = self.lcnt[L_SMALL]
    cdef int32_t v
    if not self._over():
        return False
    if t1 >= 1 and ((in_b2 and t1 == self.arc_p) or t1 > self.arc_p):
        v = self.ltail[L_SMALL]
        self._unlink(v)
        self._drop(v, 1, L_G1)
    elif self.lcnt[L_MAIN] > 0:
        v = self.ltail[L_MAIN]
        self._unlink(v)
        self._drop(v, 1, L_G2)
    elif t1 >= 1:
        v = self.ltail[L_SMALL]
        self._unlink(v)
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
        self._push(L_MAIN, i)
    elif g >= 0 and self.ln[g].lst == L_G2:
        self.arc_p = max(self.arc_p - (1.0 if b2 >= b1 else <double>b1 / b2), 0.0)
        _arc_replace(self, True)
        self._free_ghost(g)
        self._push(L_MAIN, i)
    else:
        l1 = self.lcnt[L_SMALL] + b1
        if l1 >= c:
            if self.lcnt[L_SMALL] < c:
                self._free_ghost(self.ltail[L_G1])
                _arc_replace(self, False)
            else:
                v = self.ltail[L_SMALL]
                self._unlink(v)
                self._drop(v, 1, -1)
        else:
            total = l1 + self.lcnt[L_MAIN] + b2
            if total >= c:
                if total >= 2 * c and b2 > 0:
                    self._free_ghost(self.ltail[L_G2])
                _arc_replace(self, False)
        self._push(L_SMALL, i)
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
    self._push(b, i)

cdef void _lfu_hit(CacheCore self, int32_t i) noexcept:
    cdef int32_t b = self.ln[i].lst, nb = self.bnxt[b]
    if nb < 0 or self.bfreq[nb] != self.bfreq[b] + 1:
        nb = _bnew(self, self.bfreq[b] + 1, b)
    self._unlink(i)
    self._push(nb, i)
    if self.lcnt[b] == 0:
        _bdel(self, b)

cdef void _lfu_unlink(CacheCore self, int32_t i) noexcept:
    cdef int32_t b = self.ln[i].lst
    self._unlink(i)
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
        self._unlink(b)
        if self.kv[b].key == NULL:
            self._qunlink(L_G1, b)
            self._tdelete(b)
            self._free(b)
        b = self.ltail[L_MAIN]

cdef void _lirs_demote_bottom(CacheCore self) noexcept:
    """The LIR block at the bottom of S becomes resident HIR at the end of Q."""
    cdef int32_t b = self.ltail[L_MAIN]
    if b < 0:
        return
    self._unlink(b)
    self.ln[b].freq = F_INQ
    self.lcnt[L_PROB] -= 1
    self._qpush(L_SMALL, b)
    _lirs_prune(self)

cdef void _lirs_hit(CacheCore self, int32_t i) noexcept:
    cdef bint bottom
    if self.ln[i].freq & F_LIR:
        bottom = self.ltail[L_MAIN] == i
        self._move(L_MAIN, i)
        if bottom:
            _lirs_prune(self)
    elif self.ln[i].lst == L_MAIN:       # resident HIR in S: becomes LIR
        self._qunlink(L_SMALL, i)
        self.ln[i].freq = F_LIR
        self.lcnt[L_PROB] += 1
        self._move(L_MAIN, i)
        if self.lcnt[L_PROB] > self.lir_max:
            _lirs_demote_bottom(self)
    else:                              # resident HIR not in S
        self._push(L_MAIN, i)
        self._qunlink(L_SMALL, i)
        self._qpush(L_SMALL, i)

cdef bint _lirs_evict(CacheCore self) except -1:
    cdef int32_t v = self.ltail[L_SMALL]
    if v >= 0:
        self._qunlink(L_SMALL, v)
        if self.ln[v].lst == L_MAIN:
            self._drop(v, 1, -3)
            self.ln[v].freq = 0
            self._qpush(L_G1, v)
            if self.lcnt[L_G1] > self.nonres_max:
                v = self.ltail[L_G1]
                self._qunlink(L_G1, v)
                self._unlink(v)
                self._tdelete(v)
                self._free(v)
                _lirs_prune(self)
        else:
            self._drop(v, 1, -1)
        return True
    v = self.ltail[L_MAIN]
    if v < 0:
        return False
    self._unlink(v)
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
        self._qunlink(L_G1, g)
        self._unlink(g)
        self._tdelete(g)
        self._free(g)
        self.ln[i].freq = F_LIR
        self.lcnt[L_PROB] += 1
        self._push(L_MAIN, i)
        if self.lcnt[L_PROB] > self.lir_max:
            _lirs_demote_bottom(self)
    elif self.lcnt[L_PROB] < self.lir_max:   # warm-up: LIR set not full
        self.ln[i].freq = F_LIR
        self.lcnt[L_PROB] += 1
        self._push(L_MAIN, i)
    else:
        self.ln[i].freq = F_INQ
        self._push(L_MAIN, i)
        self._qpush(L_SMALL, i)
    return 0

cdef void _lirs_remove(CacheCore self, int32_t i) noexcept:
    if self.ln[i].freq & F_LIR:
        self._unlink(i)
        self.lcnt[L_PROB] -= 1
        _lirs_prune(self)
    else:
        self._qunlink(L_SMALL, i)
        if self.ln[i].lst == L_MAIN:
            self._unlink(i)
            _lirs_prune(self)

cdef int _shadow(CacheCore self, Py_hash_t h, bint main_hit) except -1:
    """A sampled get: an access in every shadow. A shadow that misses a key the cache holds loads it (as the
    application would have); a key the cache misses reaches the shadows only if it is then put."""
    cdef int j
    cdef int32_t i
    cdef CacheCore sh
    key = h
    self.sh_count += 1
    for j in range(4):
        sh = <CacheCore>self.shadows[j]
        i = sh._lookup(key, sh._hash(key))
        if i >= 0:
            sh._count(True, 0)
            sh._p_hit(i)
            self.sh_hits[j] += 1
        else:
            sh._count(False, 0)
            if main_hit:
                sh._put(key, None, 1, -1.0, 0)
    return 0


cdef int _shadow_put(CacheCore self, Py_hash_t h) except -1:
    """A sampled insert of a new key: the shadows store it too."""
    cdef int j
    key = h
    for j in range(4):
        (<CacheCore>self.shadows[j])._put(key, None, 1, -1.0, 0)
    return 0

cdef int _select(CacheCore self) except -1:
    """End of a selection period: decay the scores, switch if another policy led by > 1 point."""
    cdef int j, best, cur = SELECTABLE.index(POLICIES[self.kind])
    for j in range(4):
        self.sh_score[j] = 0.5 * self.sh_score[j] + self.sh_hits[j]
        self.sh_hits[j] = 0
    self.sh_n = 0.5 * self.sh_n + self.sh_count
    self.sh_count = 0
    self.sel_count = 0
    best = cur
    for j in range(4):
        if self.sh_score[j] > self.sh_score[best]:
            best = j
    if best != cur and self.sh_score[best] - self.sh_score[cur] > self.sh_margin * self.sh_n:
        _switch(self, _KIND_OF[SELECTABLE[best]])
    return 0

cdef int _switch(CacheCore self, int newkind) except -1:
    """Move the priority-0 entries into ``newkind``'s structure, most recently used kept warmest."""
    cdef int32_t* order = <int32_t*>self._re(NULL, (self.lvl_cnt[0] + 1) * sizeof(int32_t))
    cdef int64_t n = 0, j
    cdef int32_t i, nx, l
    if self.kind == K_LRU:
        i = self.lhead[L_MAIN]
        while i >= 0:
            order[n] = i; n += 1; i = self.ln[i].nxt
    elif self.kind == K_WTLFU or self.kind == K_S3:
        for l in (L_SMALL, L_MAIN, L_PROB):
            i = self.lhead[l]
            while i >= 0:
                order[n] = i; n += 1; i = self.ln[i].nxt
        i = self.lhead[L_G1]             # S3-FIFO ghosts: forgotten
        while i >= 0:
            nx = self.ln[i].nxt
            self._tdelete(i)
            self._free(i)
            i = nx
    else:
        i = self.lhead[L_MAIN]
        while i >= 0:
            if self.kv[i].key != NULL:
                order[n] = i; n += 1
            i = self.ln[i].nxt
        i = self.lhead[L_SMALL]
        while i >= 0:
            if self.ln[i].lst != L_MAIN:
                order[n] = i; n += 1
            i = self.lnxt[i]
        i = self.lhead[L_G1]             # non-resident LIRS blocks: forgotten
        while i >= 0:
            nx = self.lnxt[i]
            self._tdelete(i)
            self._free(i)
            i = nx
    for j in range(L_PRIO):
        self.lhead[j] = -1
        self.ltail[j] = -1
        self.lcnt[j] = 0
    self.kind = newkind
    self.switches += 1
    self.s3_evicted = True
    if newkind == K_LIRS and self.lprv == NULL:
        self.lprv = <int32_t*>self._re(NULL, self.cap * sizeof(int32_t))
        self.lnxt = <int32_t*>self._re(NULL, self.cap * sizeof(int32_t))
    for j in range(n - 1, -1, -1):
        i = order[j]
        self.ln[i].lst = -1
        self.ln[i].freq = 0
        if newkind == K_LRU or newkind == K_S3:
            self._push(L_MAIN, i)
        elif newkind == K_WTLFU:
            self._push(L_SMALL, i)
            while self.lcnt[L_SMALL] > self.win_max:
                nx = self.ltail[L_SMALL]
                self._unlink(nx)
                self._push(L_PROB, nx)
        elif self.lcnt[L_PROB] < self.lir_max:
            self.ln[i].freq = F_LIR
            self.lcnt[L_PROB] += 1
            self._push(L_MAIN, i)
        else:
            self.ln[i].freq = F_INQ
            self._push(L_MAIN, i)
            self._qpush(L_SMALL, i)
    PyMem_Free(order)
    self.version += 1
    return 0
