# Included by cache_core.pyx: TTLs. Entries with a deadline sit in a hashed timer wheel of WHEEL buckets of
# `tick` seconds (linked through wprv/wnxt); a put or a lookup of an expiring cache reads the clock once and
# removes what expired in the buckets passed since the last call.

cdef double _now(CacheCore self) except? -1.0:
    if self.clock is None:
        return _mono()
    return float(self.clock())

cdef double _check_ttl(CacheCore self, object ttl) except -1.0:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (0 < ttl < math.inf):
        raise InvalidArgumentError(f"ttl must be a finite number of seconds > 0 or None, got {ttl!r}")
    return float(ttl)

cdef int _ensure_ttl(CacheCore self) except -1:
    cdef int32_t i
    if self.expires != NULL:
        return 0
    self.expires = <double*>_re(NULL, self.cap * sizeof(double))
    self.wprv = <int32_t*>_re(NULL, self.cap * sizeof(int32_t))
    self.wnxt = <int32_t*>_re(NULL, self.cap * sizeof(int32_t))
    for i in range(self.cap):
        self.expires[i] = INFINITY
        self.wprv[i] = W_NONE
    return 0

cdef void _wheel_link(CacheCore self, int32_t i, double now, double exp) noexcept:
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

cdef void _wheel_unlink(CacheCore self, int32_t i) noexcept:
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

cdef int _expire(CacheCore self, double now) except -1:
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
