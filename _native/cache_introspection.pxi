# Included by cache_core.pyx: what the class's def methods report (counters, the policy state the reference
# model is compared with, the memory footprint, the invariant check); nothing here is on an access path.

cdef _counters_of(CacheCore self):
    """Raw counters as a dict (the API layer adds loads and load time)."""
    return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            "evicted_weight": self.evicted_weight, "expirations": self.expirations,
            "rejections": self.rejections, "currsize": self.n_res, "weight": self.weight}

cdef _state_of(CacheCore self):
    """Test hook: the internal policy state, compared with the reference model's."""
    d = {"lists": [_list(self, l) for l in range(L_BUCKET)], "arc_p": self.arc_p,
         "window": self.win_max, "protected_max": self.prot_max, "hand": _key_of(self, self.hand),
         "kind": POLICIES[self.kind], "switches": self.switches}
    if self.kind == K_LFU:
        b = self.bmin
        buckets = []
        while b >= 0:
            buckets.append((self.bfreq[b], _list(self, b)))
            b = self.bnxt[b]
        d["buckets"] = buckets
    if self.kind == K_LIRS:
        d["lists"][L_SMALL] = []
        d["lists"][L_G1] = []
        d["queue"] = _qlist(self, L_SMALL)
        d["nonresident"] = _qlist(self, L_G1)
        d["lir"] = sorted((_key_of(self, i) for i in range(self.cap)
                           if self.ln[i].lst == L_MAIN and self.ln[i].freq & F_LIR), key=repr)
    return d

cdef object _key_of(CacheCore self, int32_t i):
    if i < 0:
        return None
    return <object>self.kv[i].key if self.kv[i].key != NULL else ("ghost", self.kv[i].hash)

cdef list _list(CacheCore self, int32_t l):
    cdef int32_t i = self.lhead[l]
    out = []
    while i >= 0:
        out.append(_key_of(self, i))
        i = self.ln[i].nxt
    return out

cdef list _qlist(CacheCore self, int32_t l):
    cdef int32_t i = self.lhead[l]
    out = []
    while i >= 0:
        out.append(_key_of(self, i))
        i = self.lnxt[i]
    return out

cdef _sizeof_of(CacheCore self):
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

cdef _check(CacheCore self):
    """Verify the internal invariants (counts, lists, table); raise CorruptionError if one fails."""
    from sutazai_hwopt.errors import CorruptionError
    cdef int32_t i, n = 0, found
    cdef int64_t wsum = 0
    cdef int32_t g
    for i in range(self.cap):
        if self.kv[i].key != NULL:
            n += 1
            wsum += self._w(i)
            found = _find(self, <object>self.kv[i].key, self.kv[i].hash, &g)
            if found != i:
                raise CorruptionError(f"slot {i} is not reachable through the table")
    if n != self.n_res or wsum != self.weight:
        raise CorruptionError(f"counts: {n} resident / weight {wsum}, recorded {self.n_res} / {self.weight}")
    if self._over():
        raise CorruptionError("a bound is exceeded")
    if self.kind == K_LIRS:
        _check_lirs(self)
    return True


cdef _check_lirs(CacheCore self):
    """LIRS: S's bottom is a LIR block, Q holds only resident HIR blocks, the LIR count is exact and bounded."""
    from sutazai_hwopt.errors import CorruptionError
    cdef int32_t i, b = self.ltail[L_MAIN], lir = 0
    if b >= 0 and not (self.ln[b].freq & F_LIR):
        raise CorruptionError(f"LIRS: the bottom of S (slot {b}) is not a LIR block")
    i = self.lhead[L_SMALL]
    while i >= 0:
        if self.kv[i].key == NULL or (self.ln[i].freq & F_LIR):
            raise CorruptionError(f"LIRS: slot {i} in Q is not a resident HIR block")
        i = self.lnxt[i]
    for i in range(self.cap):
        if self.kv[i].key != NULL and (self.ln[i].freq & F_LIR):
            lir += 1
    if lir != self.lcnt[L_PROB] or lir > self.lir_max:
        raise CorruptionError(f"LIRS: {lir} LIR blocks, recorded {self.lcnt[L_PROB]}, at most {self.lir_max}")
