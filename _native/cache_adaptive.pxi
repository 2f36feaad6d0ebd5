# Included by cache_core.pyx: the adaptive policy. Sampled keys also feed four shadow caches (one per policy of
# SELECTABLE); every selection period the decayed shadow hit counts are compared and the resident entries are
# migrated into the leader's structure when it leads by more than the margin. Sources: see cache_core.pyx.

cdef int _shadow(CacheCore self, Py_hash_t h, bint main_hit) except -1:
    """A sampled get: an access in every shadow. A shadow that misses a key the cache holds loads it (as the
    application would have); a key the cache misses reaches the shadows only if it is then put."""
    cdef int j
    cdef int32_t i
    cdef CacheCore sh
    cdef Py_hash_t sh_h = _int_hash(h)      # the shadows hold one shared key object, told apart by hash
    self.sh_count += 1
    for j in range(4):
        sh = <CacheCore>self.shadows[j]
        i = _probe(sh, _SHADOW_KEY, sh_h)    # shadows have no TTLs: a probe is the whole lookup
        if i >= 0:
            sh._count(True, 0)
            _p_hit(sh, i)
            self.sh_hits[j] += 1
        else:
            sh._count(False, 0)
            if main_hit:
                sh._put_h(_SHADOW_KEY, sh_h, None, 1, -1.0, 0)
    return 0

cdef int _shadow_put(CacheCore self, Py_hash_t h) except -1:
    """A sampled insert of a new key: the shadows store it too."""
    cdef int j
    cdef Py_hash_t sh_h = _int_hash(h)
    for j in range(4):
        (<CacheCore>self.shadows[j])._put_h(_SHADOW_KEY, sh_h, None, 1, -1.0, 0)
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
    cdef int32_t* order = <int32_t*>_re(NULL, (self.lvl_cnt[0] + 1) * sizeof(int32_t))
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
            _tdelete(self, i)
            _free(self, i)
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
            _tdelete(self, i)
            _free(self, i)
            i = nx
    for j in range(L_PRIO):
        self.lhead[j] = -1
        self.ltail[j] = -1
        self.lcnt[j] = 0
    self.kind = newkind
    self.switches += 1
    self.s3_evicted = True
    if newkind == K_LIRS and self.lprv == NULL:
        self.lprv = <int32_t*>_re(NULL, self.cap * sizeof(int32_t))
        self.lnxt = <int32_t*>_re(NULL, self.cap * sizeof(int32_t))
    for j in range(n - 1, -1, -1):
        i = order[j]
        self.ln[i].lst = -1
        self.ln[i].freq = 0
        if newkind == K_LRU or newkind == K_S3:
            _push(self, L_MAIN, i)
        elif newkind == K_WTLFU:
            _push(self, L_SMALL, i)
            while self.lcnt[L_SMALL] > self.win_max:
                nx = self.ltail[L_SMALL]
                _unlink(self, nx)
                _push(self, L_PROB, nx)
        elif self.lcnt[L_PROB] < self.lir_max:
            self.ln[i].freq = F_LIR
            self.lcnt[L_PROB] += 1
            _push(self, L_MAIN, i)
        else:
            self.ln[i].freq = F_INQ
            _push(self, L_MAIN, i)
            _qpush(self, L_SMALL, i)
    PyMem_Free(order)
    self.version += 1
    return 0
