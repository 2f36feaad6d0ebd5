# Included at the end of pool_alloc.pyx: invariant check, crash repair, walks and stats.
# (Split out only to keep each source file short; it is not a separate module.)

cdef int _heap_check(SegmentHeap self) except -1:
    cdef uint64_t hoff = self.h.heap_off
    cdef uint64_t end = hoff + self.h.heap_size
    cdef uint64_t off = hoff, size, st, prev_size = 0, nslots, pop, w, cls, node, prevnode, steps
    cdef uint64_t n_free = 0, n_large = 0, large_bytes = 0, n_small = 0, small_bytes = 0, n_slabs = 0
    cdef uint64_t n_partial = 0
    cdef bint prev_free = False
    cdef chunk_t *c
    cdef uint64_t *bits
    cdef int i, b
    marks = np.zeros(self.h.heap_size // ALIGN, dtype=np.uint8)   # 1: free chunk start, 2: partial slab
    cdef uint8_t[::1] mk = marks
    while off < end:
        c = <chunk_t *>(self.base + off)
        size = c.word & ~(<uint64_t>STATE_MASK)
        st = c.word & STATE_MASK
        if size < CHUNK_HDR or off + size > end:
            raise CorruptionError(f"chunk at offset {off} has size {size}, outside [64, {end - off}]")
        if c.tag != (CHUNK_TAG ^ <uint32_t>(off >> 6)):
            raise CorruptionError(f"chunk at offset {off} has a wrong boundary tag {c.tag:#x}")
        if c.prev_size != prev_size:
            raise CorruptionError(f"chunk at offset {off} records prev_size {c.prev_size}, "
                                  f"but the chunk before it has size {prev_size}")
        if st == ST_FREE:
            if prev_free:
                raise CorruptionError(f"free chunk at offset {off} follows a free chunk (not coalesced)")
            n_free += 1
            mk[(off - hoff) // ALIGN] = 1
        elif st == ST_USED:
            if size < 2 * CHUNK_HDR or c.req == 0 or c.req > size - CHUNK_HDR:
                raise CorruptionError(f"used chunk at offset {off}: size {size}, request {c.req}")
            n_large += 1
            large_bytes += size
        elif st == ST_SLAB:
            cls = c.req
            if size != SLAB_SPAN or (off - hoff) % SLAB_SPAN or cls >= N_CLASSES:
                raise CorruptionError(f"slab at offset {off}: size {size}, class {cls}, not window-aligned")
            w = (off - hoff) // SLAB_SPAN
            if not self._slabmap_get(w):
                raise CorruptionError(f"slab at offset {off} is missing from the window bitmap")
            nslots = (SLAB_SPAN - SLAB_SLOTS_OFF) // CLASS_SIZE[cls]
            bits = <uint64_t *>(self.base + off + CHUNK_HDR)
            pop = 0
            for i in range(SLAB_BITMAP_WORDS):
                pop += __builtin_popcountll(bits[i])
                if <uint64_t>(i * 64 + 64) > nslots:
                    if <uint64_t>(i * 64) >= nslots:
                        if bits[i]:
                            raise CorruptionError(f"slab at offset {off} marks slots beyond its {nslots}")
                    elif bits[i] >> (nslots - <uint64_t>(i * 64)):
                        raise CorruptionError(f"slab at offset {off} marks slots beyond its {nslots}")
            if c.nfree != nslots - pop:
                raise CorruptionError(f"slab at offset {off} counts {c.nfree} free slots, bitmap says "
                                      f"{nslots - pop}")
            n_small += pop
            small_bytes += pop * CLASS_SIZE[cls]
            n_slabs += 1
            if c.nfree:
                n_partial += 1
                mk[(off - hoff) // ALIGN] = 2
        else:
            raise CorruptionError(f"chunk at offset {off} has unknown state {st}")
        prev_free = st == ST_FREE
        prev_size = size
        off += size
    if off != end:
        raise CorruptionError(f"heap walk ended at {off}, not at the heap's end {end}")
    pop = 0
    for w in range(self.h.nwin):
        pop += self._slabmap_get(w)
    if pop != n_slabs:
        raise CorruptionError(f"window bitmap marks {pop} slabs, the heap holds {n_slabs}")
    steps = 0
    for b in range(N_BINS):
        node = self.h.bin_head[b]
        if bool(node) != bool((self.h.bin_bitmap >> b) & 1):
            raise CorruptionError(f"bin bitmap bit {b} disagrees with bin head {node}")
        prevnode = 0
        while node:
            if node < hoff or node >= end or (node - hoff) % ALIGN or mk[(node - hoff) // ALIGN] != 1:
                raise CorruptionError(f"free list {b} links to {node}, which is not a free chunk "
                                      f"(or is listed twice)")
            mk[(node - hoff) // ALIGN] = 0
            c = <chunk_t *>(self.base + node)
            if floor_log2(c.word & ~(<uint64_t>STATE_MASK)) != b or c.prev != prevnode:
                raise CorruptionError(f"free chunk {node} is in bin {b} with a wrong size or back link")
            steps += 1
            prevnode = node
            node = c.next
    if steps != n_free:
        raise CorruptionError(f"free lists hold {steps} chunks, the heap has {n_free} free chunks")
    steps = 0
    for b in range(N_CLASSES):
        node = self.h.partial[b]
        prevnode = 0
        while node:
            if node < hoff or node >= end or (node - hoff) % ALIGN or mk[(node - hoff) // ALIGN] != 2:
                raise CorruptionError(f"partial-slab list {b} links to {node}, which is not a partial slab "
                                      f"(or is listed twice)")
            mk[(node - hoff) // ALIGN] = 0
            c = <chunk_t *>(self.base + node)
            if c.req != <uint64_t>b or c.prev != prevnode:
                raise CorruptionError(f"slab {node} is in class list {b} with a wrong class or back link")
            steps += 1
            prevnode = node
            node = c.next
    if steps != n_partial:
        raise CorruptionError(f"partial-slab lists hold {steps} slabs, the heap has {n_partial}")
    for b in range(N_CLASSES, 8):
        if self.h.partial[b]:
            raise CorruptionError(f"partial-slab list {b} is not a size class but is not empty")
    if (self.h.n_large != n_large or self.h.large_bytes != large_bytes or self.h.n_small != n_small
            or self.h.small_bytes != small_bytes or self.h.n_slabs != n_slabs):
        raise CorruptionError("allocation counters disagree with the heap walk")
    return 0

cdef int _heap_repair(SegmentHeap self) except -1:
    cdef uint64_t hoff = self.h.heap_off
    cdef uint64_t end = hoff + self.h.heap_size
    cdef uint64_t off = hoff, size, st, cls, nslots, pop, run = 0, prev_size = 0
    cdef chunk_t *c
    cdef uint64_t *bits
    cdef int i
    # Pass 1: validate the authoritative words (read only).
    while off < end:
        c = <chunk_t *>(self.base + off)
        size = c.word & ~(<uint64_t>STATE_MASK)
        st = c.word & STATE_MASK
        if size < CHUNK_HDR or off + size > end or st < ST_FREE or st > ST_SLAB:
            raise CorruptionError(f"cannot repair: chunk at offset {off} has size {size}, state {st}")
        if st == ST_USED and size < 2 * CHUNK_HDR:
            raise CorruptionError(f"cannot repair: used chunk at offset {off} has size {size}")
        if st == ST_SLAB and (size != SLAB_SPAN or (off - hoff) % SLAB_SPAN or c.req >= N_CLASSES):
            raise CorruptionError(f"cannot repair: slab at offset {off} has size {size}, class {c.req}")
        off += size
    if off != end:
        raise CorruptionError(f"cannot repair: heap walk ended at {off}, not at {end}")
    # Pass 2: coalesce free runs (each merge one store), then rebuild the derived state.
    off = hoff
    while off < end:
        c = <chunk_t *>(self.base + off)
        size = c.word & ~(<uint64_t>STATE_MASK)
        if (c.word & STATE_MASK) == ST_FREE:
            if run:
                (<chunk_t *>(self.base + run)).word = \
                    ((<chunk_t *>(self.base + run)).word & ~(<uint64_t>STATE_MASK)) + size | ST_FREE
            else:
                run = off
        else:
            run = 0
        off += size
    for i in range(N_BINS):
        self.h.bin_head[i] = 0
    for i in range(8):
        self.h.partial[i] = 0
    self.h.bin_bitmap = 0
    self.h.n_large = self.h.large_bytes = self.h.n_small = self.h.small_bytes = self.h.n_slabs = 0
    memset(self.base + HDR_FIXED, 0, (self.h.nwin + 7) // 8)
    off = hoff
    while off < end:
        c = <chunk_t *>(self.base + off)
        size = c.word & ~(<uint64_t>STATE_MASK)
        st = c.word & STATE_MASK
        c.prev_size = prev_size
        c.tag = CHUNK_TAG ^ <uint32_t>(off >> 6)
        c.next = 0
        c.prev = 0
        if st == ST_FREE:
            _bin_push(self.base, self.h, off)
        elif st == ST_USED:
            if c.req == 0 or c.req > size - CHUNK_HDR:
                c.req = size - CHUNK_HDR
            self.h.n_large += 1
            self.h.large_bytes += size
        else:
            cls = c.req
            nslots = (SLAB_SPAN - SLAB_SLOTS_OFF) // CLASS_SIZE[cls]
            bits = <uint64_t *>(self.base + off + CHUNK_HDR)
            pop = 0
            for i in range(SLAB_BITMAP_WORDS):
                if <uint64_t>(i * 64) >= nslots:
                    bits[i] = 0
                elif <uint64_t>(i * 64 + 64) > nslots:
                    bits[i] &= ((<uint64_t>1) << (nslots - <uint64_t>(i * 64))) - 1
                pop += __builtin_popcountll(bits[i])
            c.nfree = <uint32_t>(nslots - pop)
            self._slabmap_set(off, True)
            self.h.n_slabs += 1
            self.h.n_small += pop
            self.h.small_bytes += pop * CLASS_SIZE[cls]
            if c.nfree:
                self._partial_push(<int>cls, off)
        prev_size = size
        off += size
    return 0

cdef object _heap_allocations(SegmentHeap self):
    cdef uint64_t hoff, end, off, size, st, cls, nslots, k
    cdef chunk_t *c
    cdef uint64_t *bits
    out = []
    self._acquire()
    try:
        hoff = self.h.heap_off
        end = hoff + self.h.heap_size
        off = hoff
        while off < end:
            c = <chunk_t *>(self.base + off)
            size = c.word & ~(<uint64_t>STATE_MASK)
            st = c.word & STATE_MASK
            if size < CHUNK_HDR:
                raise CorruptionError(f"chunk at offset {off} has size {size}")
            if st == ST_USED:
                out.append(off + CHUNK_HDR)
            elif st == ST_SLAB:
                cls = c.req
                nslots = (SLAB_SPAN - SLAB_SLOTS_OFF) // CLASS_SIZE[cls]
                bits = <uint64_t *>(self.base + off + CHUNK_HDR)
                for k in range(nslots):
                    if (bits[k >> 6] >> (k & 63)) & 1:
                        out.append(off + SLAB_SLOTS_OFF + k * CLASS_SIZE[cls])
            off += size
    finally:
        self._release()
    return np.array(out, dtype=np.int64)

cdef uint64_t _heap_trim(SegmentHeap self) except? 0:
    """The walk of :meth:`SegmentHeap.trim` (under the lock)."""
    cdef uint64_t hoff = self.h.heap_off, end = self.h.heap_off + self.h.heap_size, off, size, lo, hi, done = 0
    cdef uint64_t page = <uint64_t>sysconf(_SC_PAGESIZE)
    cdef uint64_t base = <uint64_t><size_t>self.base
    cdef chunk_t *c
    off = hoff
    while off < end:
        c = <chunk_t *>(self.base + off)
        size = c.word & ~(<uint64_t>STATE_MASK)
        if size < CHUNK_HDR:
            raise CorruptionError(f"chunk at offset {off} has size {size}")
        if (c.word & STATE_MASK) == ST_FREE:
            lo = (base + off + CHUNK_HDR + page - 1) // page * page
            hi = (base + off + size) // page * page
            if hi > lo and madvise(<void *><size_t>lo, <size_t>(hi - lo), MADV_REMOVE) == 0:
                done += hi - lo
        off += size
    return done


cdef object _heap_stats(SegmentHeap self):
    cdef uint64_t hoff, end, off, size, free_bytes = 0, largest = 0, n_free = 0
    cdef chunk_t *c
    self._acquire()
    try:
        hoff = self.h.heap_off
        end = hoff + self.h.heap_size
        off = hoff
        while off < end:
            c = <chunk_t *>(self.base + off)
            size = c.word & ~(<uint64_t>STATE_MASK)
            if size < CHUNK_HDR:
                raise CorruptionError(f"chunk at offset {off} has size {size}")
            if (c.word & STATE_MASK) == ST_FREE:
                free_bytes += size
                n_free += 1
                if size > largest:
                    largest = size
            off += size
        largest_usable = largest - CHUNK_HDR if largest > CHUNK_HDR else 0
        return {
            "heap_size": self.h.heap_size,
            "free_bytes": free_bytes,
            "largest_free": largest_usable,
            "free_chunks": n_free,
            "fragmentation": (1.0 - largest / free_bytes) if free_bytes else 0.0,
            "n_large": self.h.n_large,
            "large_bytes": self.h.large_bytes,
            "n_small": self.h.n_small,
            "small_bytes": self.h.small_bytes,
            "n_slabs": self.h.n_slabs,
            "slab_bytes": self.h.n_slabs * SLAB_SPAN,
            "recoveries": self.h.recoveries,
        }
    finally:
        self._release()
