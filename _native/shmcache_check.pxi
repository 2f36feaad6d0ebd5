# Included at the end of shmcache_index.pyx: the index invariant check and the crash repair.
# (Split out only to keep each source file short; it is not a separate module.)

cdef object _index_check(ShmIndex self):
    cdef uint64_t i, j, off, nbytes = 0, count = 0, zb = 0, nz = 0
    cdef uint64_t pc[10]
    cdef blk_t *b
    cdef int p, pins
    self._lock()
    try:
        for p in range(NPRIO):
            pc[p] = 0
        indexed = set()
        keys = set()
        for i in range(self.ih.nslots):
            off = self.slots[i].off
            if not off:
                continue
            b = <blk_t *>(self.base + off)
            if b.magic != BLK_MAGIC:
                raise CorruptionError(f"slot {i} points at {off}, which is not a cache block")
            if b.state not in (S_VALID, S_LOADING, S_FAILED):
                raise CorruptionError(f"slot {i}: indexed block {off} is in state {b.state}")
            if b.hash != self.slots[i].hash or b.klen != self.slots[i].klen or b.prio != self.slots[i].prio:
                raise CorruptionError(f"slot {i} disagrees with its block {off} (hash/klen/prio)")
            j = b.hash & self.mask
            while j != i:
                if not self.slots[j].off:
                    raise CorruptionError(f"slot {i} is not reachable from its home slot {b.hash & self.mask}")
                j = (j + 1) & self.mask
            k = (self.base + off + BLK_HDR)[:b.klen]
            if k in keys:
                raise CorruptionError(f"key {k!r} is indexed twice")
            keys.add(k)
            indexed.add(off)
            count += 1
            nbytes += b.size
            pc[b.prio] += 1
        if count != self.ih.count or nbytes != self.ih.nbytes:
            raise CorruptionError(f"index counters say {self.ih.count} entries / {self.ih.nbytes} bytes, "
                                  f"the slots hold {count} / {nbytes}")
        for p in range(NPRIO):
            if pc[p] != self.ih.prio_count[p]:
                raise CorruptionError(f"priority {p} count is {self.ih.prio_count[p]}, slots hold {pc[p]}")
        for p in range(NPRIO):
            n = 0
            prev = 0
            off = self.ih.q_tail[p]
            hand_seen = self.ih.q_hand[p] == 0
            while off:
                if off not in indexed:
                    raise CorruptionError(f"SIEVE queue {p} holds {off}, which is not indexed")
                b = <blk_t *>(self.base + off)
                if b.prio != p or b.qprev != prev:
                    raise CorruptionError(f"SIEVE queue {p}: block {off} has priority {b.prio} or a bad link")
                hand_seen = hand_seen or off == self.ih.q_hand[p]
                n += 1
                if n > count:
                    raise CorruptionError(f"SIEVE queue {p} has a cycle")
                prev = off
                off = b.qnext
            if prev != self.ih.q_head[p] or n != pc[p] or not hand_seen:
                raise CorruptionError(f"SIEVE queue {p}: {n} linked entries for {pc[p]} indexed, or its "
                                      f"head/hand is wrong")
        for off_obj in self.heap.allocations().tolist():
            off = <uint64_t>off_obj
            b = <blk_t *>(self.base + off)
            if b.magic != BLK_MAGIC:
                raise CorruptionError(f"heap block {off} is not a cache block (leaked allocation)")
            pins = 0
            for p in range(4):
                pins += __builtin_popcountll(b.pinmap[p])
            if pins != <int>b.pins:
                raise CorruptionError(f"block {off} counts {b.pins} pins, its bitmap {pins}")
            for p in range(MAXPROC):
                if (b.pinmap[p >> 6] >> (p & 63)) & 1 and self.procs[p].pid == 0:
                    raise CorruptionError(f"block {off} is pinned by unregistered process slot {p}")
            if off in indexed:
                continue
            if b.state != S_DEAD or b.pins == 0:
                raise CorruptionError(f"block {off} (state {b.state}, {b.pins} pins) is neither indexed "
                                      f"nor a pinned zombie")
            nz += 1
            zb += b.size
        if len(indexed) != count:
            raise CorruptionError("an indexed block is not a live heap allocation")
        if nz != self.ih.zombies or zb != self.ih.zombie_bytes:
            raise CorruptionError(f"zombie counters say {self.ih.zombies} / {self.ih.zombie_bytes} bytes, "
                                  f"the heap holds {nz} / {zb}")
        return True
    finally:
        self._unlock()



cdef object _index_repair(ShmIndex self):
    cdef uint64_t off, i
    cdef blk_t *b
    cdef blk_t *o
    cdef int p, freed = 0
    self._lock()
    try:
        # Every stripe odd for the rebuild (a dead writer's are already odd); the unlock makes them all even.
        self._wopen_all()
        best = {}
        for off_obj in self.heap.allocations().tolist():
            off = <uint64_t>off_obj
            b = <blk_t *>(self.base + off)
            usable = self.heap.usable_size(off_obj)
            if (b.magic != BLK_MAGIC or b.size > <uint64_t>usable
                    or BLK_HDR + r64(b.klen) + r64(b.hlen) + b.vlen > b.size or b.prio >= NPRIO
                    or b.state < S_WRITING or b.state > S_DEAD):
                b.magic = 0
                self.heap.free(off_obj)
                freed += 1
                continue
            for p in range(MAXPROC):
                if (b.pinmap[p >> 6] >> (p & 63)) & 1 and self.procs[p].pid == 0:
                    b.pinmap[p >> 6] &= ~(<uint64_t>1 << (p & 63))
            b.pins = 0
            for p in range(4):
                b.pins += __builtin_popcountll(b.pinmap[p])
            if b.state == S_WRITING or (b.state == S_DEAD and b.pins == 0):
                self._free_block(off)
                freed += 1
                continue
            if b.state == S_DEAD:
                continue
            k = (self.base + off + BLK_HDR)[:b.klen]
            prev = best.get(k)
            if prev is not None:
                o = <blk_t *>(self.base + <uint64_t>prev)
                if o.seq > b.seq:
                    prev, off_obj = off_obj, prev
                o = <blk_t *>(self.base + <uint64_t>prev)
                if o.pins:
                    o.state = S_DEAD
                else:
                    self._free_block(<uint64_t>prev)
                    freed += 1
            best[k] = off_obj
        memset(self.slots, 0, self.ih.nslots * sizeof(slot_t))
        self.ih.count = 0
        self.ih.nbytes = 0
        self.ih.hand = 0
        for p in range(NPRIO):
            self.ih.prio_count[p] = 0
            self.ih.q_head[p] = 0
            self.ih.q_tail[p] = 0
            self.ih.q_hand[p] = 0
        order = sorted(best.values(), key=lambda o: (<blk_t *>(self.base + <uint64_t>o)).seq)
        for off_obj in order:
            self._insert_slot(<uint64_t>off_obj)
        self.ih.zombies = 0
        self.ih.zombie_bytes = 0
        for off_obj in self.heap.allocations().tolist():
            b = <blk_t *>(self.base + <uint64_t>off_obj)
            if b.state == S_DEAD:
                self.ih.zombies += 1
                self.ih.zombie_bytes += b.size
        self.ih.st_repairs += 1
        return freed
    finally:
        self._unlock()
