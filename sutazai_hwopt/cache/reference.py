"""Plain-Python reference model of the compiled cache core, policy for policy.

It implements the same algorithms with the same tie-breaking as ``_native/cache_core.pyx``, written for
clarity (queues are Python lists, head first; O(n) operations are fine). The hypothesis state machines in
``tests/cache`` drive both with the same operations and compare every result, every counter and the full
policy state (list orders, ghosts, ARC's target, the LFU buckets, the LIRS stack and queue), so the model is
an executable specification of the core. Ghost entries remember only the key's hash, as in the core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

from .policies import POLICIES, SELECTABLE

__all__ = ["POLICIES", "SELECTABLE", "ReferenceCache"]

M64 = (1 << 64) - 1
SEED = 0x243F6A8885A308D3
SEED2 = 0x13198A2E03707344
_MISS = object()
MAIN, SMALL, PROB, G1, G2 = 0, 1, 2, 3, 4
PRIO = 10  # list id of priority p is PRIO + p - 1


def _mix(h: int, seed: int = SEED) -> int:
    x = (((h & M64) ^ seed) * 0x9E3779B97F4A7C15) & M64
    return x ^ (x >> 29)


class _Entry:
    __slots__ = ("exp", "freq", "hash", "key", "lir", "prio", "value", "weight")

    def __init__(self, key: Hashable, value: Any, weight: int, prio: int) -> None:
        self.key, self.value, self.weight, self.prio = key, value, weight, prio
        self.hash = hash(key)
        self.freq = 0
        self.lir = False
        self.exp = math.inf


class ReferenceCache:
    """Reference model: ``get``/``put``/``delete``/``contains``/``expire`` with the core's semantics."""

    def __init__(self, maxsize: int, policy: str = "adaptive", max_weight: int | None = None,
                 clock: Callable[[], float] | None = None, ttl: float | None = None,
                 window: float = 0.01, climb_period: int = 0) -> None:
        self.maxsize = maxsize
        self.adaptive = policy == "adaptive"
        if self.adaptive:
            policy = "wtinylfu"
        self.kind = policy
        self.max_weight = max_weight if max_weight is not None else 1 << 62
        self.clock = clock
        self.default_ttl = ttl or 0.0
        self.entries: dict[Hashable, _Entry] = {}
        self.lists: dict[int, list[Any]] = {i: [] for i in range(20)}
        self.counters = {"hits": 0, "misses": 0, "evictions": 0, "evicted_weight": 0, "expirations": 0,
                         "rejections": 0}
        self.weight = 0
        self.arc_p = 0.0
        self.hand: Any = None
        self.buckets: list[tuple[int, list[_Entry]]] = []   # LFU: ascending frequency
        self.queue: list[Any] = []        # LIRS Q (resident HIR), head first
        self.nonres: list[Any] = []       # LIRS non-resident FIFO, head first
        self.win_max = self.prot_max = 0
        if policy == "s3fifo" or self.adaptive:
            self.small_max = max(1, int(0.1 * maxsize))
            self.ghost_max = max(1, int(0.9 * maxsize))
        if policy == "lirs" or self.adaptive:
            self.lir_max = max(1, int(0.99 * maxsize)) if maxsize > 1 else 1
            if self.lir_max >= maxsize > 1:
                self.lir_max = maxsize - 1
            self.nonres_max = 2 * maxsize
        if policy == "wtinylfu":
            self._set_window(max(1, int(window * maxsize)) if maxsize > 1 else 0)
            self.sk_blocks = max(1, (3 * min(maxsize, 1 << 17) + 31) // 32)
            self.sketch = bytearray(self.sk_blocks << 6)
            self.sk_add = 0
            self.sk_period = 10 * maxsize
        self.switches = 0
        if self.adaptive:
            r = min(64, max(1, maxsize // 128))
            self.sh_thresh = (1 << 32) // r
            self.shadows = [ReferenceCache(max(1, maxsize // r), p) for p in SELECTABLE]
            self.sel_period = climb_period if climb_period > 0 else max(1024, 4 * maxsize)
            self.sh_hits = [0, 0, 0, 0]
            self.sh_score = [0.0, 0.0, 0.0, 0.0]
            self.sh_n = 0.0
            self.sh_count = self.sel_count = 0
        self.tick = min(max(self.default_ttl / 32.0, 0.001), 60.0) if self.default_ttl > 0 else 1.0

    # ---------------------------------------------------------------- helpers
    def _now(self) -> float:
        assert self.clock is not None
        return float(self.clock())

    def _over(self) -> bool:
        return len(self.entries) > self.maxsize or self.weight > self.max_weight

    def _lst(self, e: Any) -> int:
        for lid, items in self.lists.items():
            if any(x is e for x in items):
                return lid
        return -1

    def _unlink(self, e: Any) -> None:
        lid = self._lst(e)
        self.lists[lid][:] = [x for x in self.lists[lid] if x is not e]

    def _push(self, lid: int, e: Any) -> None:
        self.lists[lid].insert(0, e)

    def _tail(self, lid: int) -> Any:
        return self.lists[lid][-1] if self.lists[lid] else None

    def _ghost(self, h: int) -> Any:
        for lid in (G1, G2, MAIN):
            for x in self.lists[lid]:
                if isinstance(x, tuple) and x[1] == h:
                    return x
        return None

    def _drop(self, e: _Entry, cause: int) -> None:
        del self.entries[e.key]
        self.weight -= e.weight
        if cause == 1:
            self.counters["evictions"] += 1
            self.counters["evicted_weight"] += e.weight
        elif cause == 2:
            self.counters["expirations"] += 1

    def _make_ghost(self, e: _Entry) -> tuple[str, int, int]:
        return ("ghost", e.hash, id(e))

    # ---------------------------------------------------------------- sketch and policy selection
    def _sk_slots(self, h: int) -> list[int]:
        x = _mix(h)
        base = (((x >> 32) * self.sk_blocks) >> 32) << 6
        return [base + (r << 4) + ((x >> (r << 2)) & 15) for r in range(4)]

    def _sk_inc(self, h: int) -> None:
        for s in self._sk_slots(h):
            if self.sketch[s] < 15:
                self.sketch[s] += 1
        self.sk_add += 1
        if self.sk_add >= self.sk_period:
            for j in range(len(self.sketch)):
                self.sketch[j] >>= 1
            self.sk_add //= 2

    def _sk_est(self, h: int) -> int:
        return min(self.sketch[s] for s in self._sk_slots(h))

    def _set_window(self, w: int) -> None:
        self.win_max = w
        self.prot_max = int(0.8 * (self.maxsize - w))

    def _count(self, hit: bool, h: int) -> None:
        self.counters["hits" if hit else "misses"] += 1
        if self.adaptive:
            if (_mix(h, SEED2) >> 32) < self.sh_thresh:
                self.sh_count += 1
                for j, sh in enumerate(self.shadows):
                    if sh.get(h, _MISS) is not _MISS:
                        self.sh_hits[j] += 1
                    elif hit:
                        sh.put(h, None)
            self.sel_count += 1
            if self.sel_count >= self.sel_period:
                self._select()

    def access(self, key: Hashable) -> bool:
        """get-then-put-on-miss (value None), as the core's shadows and ``_simulate`` do."""
        if self.get(key, _MISS) is _MISS:
            self.put(key, None)
            return False
        return True

    def _select(self) -> None:
        names = SELECTABLE
        cur = names.index(self.kind)
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
        if best != cur and self.sh_score[best] - self.sh_score[cur] > 0.01 * self.sh_n:
            self._switch(names[best])

    def _switch(self, new: str) -> None:
        if self.kind == "lru":
            order = list(self.lists[MAIN])
        elif self.kind in ("wtinylfu", "s3fifo"):
            order = self.lists[SMALL] + self.lists[MAIN] + self.lists[PROB]
        else:
            order = [x for x in self.lists[MAIN] if isinstance(x, _Entry)]
            order += [x for x in self.queue if not self._in_s(x)]
        for j in range(PRIO):
            self.lists[j] = []
        self.queue, self.nonres, self.lir_n = [], [], 0
        self.kind = new
        self.switches += 1
        self.s3_evicted = True
        for e in reversed(order):
            e.freq, e.lir = 0, False
            if new in ("lru", "s3fifo"):
                self._push(MAIN, e)
            elif new == "wtinylfu":
                self._push(SMALL, e)
                while len(self.lists[SMALL]) > self.win_max:
                    self._push(PROB, self.lists[SMALL].pop())
            elif self.lir_n < self.lir_max:
                e.lir = True
                self.lir_n += 1
                self._push(MAIN, e)
            else:
                self._push(MAIN, e)
                self.queue.insert(0, e)

    # ---------------------------------------------------------------- policies
    def _p_hit(self, e: _Entry) -> None:
        k = self.kind
        if e.prio:
            self._unlink(e)
            self._push(PRIO + e.prio - 1, e)
            return
        if self.adaptive and k != "wtinylfu":
            self._sk_inc(e.hash)
        if k == "wtinylfu":
            self._sk_inc(e.hash)
            lid = self._lst(e)
            self._unlink(e)
            if lid == PROB:
                self._push(MAIN, e)
                while len(self.lists[MAIN]) > self.prot_max and self.lists[MAIN]:
                    d = self.lists[MAIN].pop()
                    self._push(PROB, d)
            else:
                self._push(lid, e)
        elif k in ("lru", "arc"):
            self._unlink(e)
            self._push(MAIN, e)
        elif k == "sieve":
            e.freq = 1
        elif k == "s3fifo":
            e.freq = min(e.freq + 1, 3)
        elif k == "lfu":
            self._lfu_hit(e)
        else:
            self._lirs_hit(e)

    def _p_insert(self, e: _Entry, g: Any) -> None:
        k = self.kind
        if self.adaptive and k != "wtinylfu":
            self._sk_inc(e.hash)
        if k == "wtinylfu":
            self._wt_insert(e)
        elif k == "arc":
            self._arc_insert(e, g)
        elif k == "s3fifo":
            if g is not None:
                self._unlink(g)
            while self._over() and self._p_evict_one():
                pass
            if g is not None or (not self.s3_evicted and len(self.lists[SMALL]) >= self.small_max):
                self._push(MAIN, e)
            else:
                self._push(SMALL, e)
        elif k == "lirs":
            self._lirs_insert(e, g)
        else:
            while self._over() and self._p_evict_one():
                pass
            if k == "lfu":
                if not self.buckets or self.buckets[0][0] != 1:
                    self.buckets.insert(0, (1, []))
                self.buckets[0][1].insert(0, e)
            else:
                self._push(MAIN, e)

    def _p_remove(self, e: _Entry) -> None:
        if e.prio:
            self._unlink(e)
        elif self.kind == "sieve":
            if self.hand is e:
                q = self.lists[MAIN]
                idx = next(j for j, x in enumerate(q) if x is e)
                self.hand = q[idx - 1] if idx > 0 else None
            self._unlink(e)
        elif self.kind == "lfu":
            self._lfu_unlink(e)
        elif self.kind == "lirs":
            self._lirs_remove(e)
        else:
            self._unlink(e)

    def _p_evict_one(self) -> bool:
        k = self.kind
        if k == "lru":
            v = self._tail(MAIN)
        elif k == "wtinylfu":
            v = self._tail(PROB) or self._tail(MAIN) or self._tail(SMALL)
        elif k == "sieve":
            return self._sieve_evict()
        elif k == "s3fifo":
            return self._s3_evict()
        elif k == "arc":
            return self._arc_replace(False)
        elif k == "lfu":
            return self._lfu_evict()
        else:
            return self._lirs_evict()
        if v is None:
            return False
        self._unlink(v)
        self._drop(v, 1)
        return True

    def _evict_prio(self, pmax: int) -> bool:
        for p in range(1, pmax + 1):
            v = self._tail(PRIO + p - 1)
            if v is not None:
                self._unlink(v)
                self._drop(v, 1)
                return True
        return False

    def _wt_insert(self, e: _Entry) -> None:
        self._sk_inc(e.hash)
        self._push(SMALL, e)
        while len(self.lists[SMALL]) > self.win_max:
            c = self.lists[SMALL].pop()
            if self._over():
                v = self._tail(PROB) or self._tail(MAIN)
                if v is None:
                    self._push(PROB, c)
                    break
                if self._sk_est(c.hash) > self._sk_est(v.hash):
                    self._unlink(v)
                    self._drop(v, 1)
                    self._push(PROB, c)
                else:
                    self._drop(c, 1)
            else:
                self._push(PROB, c)
        while self._over() and self._p_evict_one():
            pass

    def _sieve_evict(self) -> bool:
        q = self.lists[MAIN]
        o = self.hand if self.hand is not None else (q[-1] if q else None)
        if o is None:
            return False
        idx = next(j for j, x in enumerate(q) if x is o)
        while q[idx].freq:
            q[idx].freq = 0
            idx = idx - 1 if idx > 0 else len(q) - 1
        o = q[idx]
        self.hand = q[idx - 1] if idx > 0 else None
        del q[idx]
        self._drop(o, 1)
        return True

    s3_evicted = False

    def _s3_evict(self) -> bool:
        self.s3_evicted = True
        S, M = self.lists[SMALL], self.lists[MAIN]
        while S or M:
            if len(M) > self.maxsize - self.small_max or not S:
                if self._s3_evict_main():
                    return True
                continue
            while S:
                t = S.pop()
                if t.freq > 1:
                    t.freq = 0
                    M.insert(0, t)
                else:
                    self._drop(t, 1)
                    self._push(G1, self._make_ghost(t))
                    if len(self.lists[G1]) > self.ghost_max:
                        self.lists[G1].pop()
                    return True
        return False

    def _s3_evict_main(self) -> bool:
        M = self.lists[MAIN]
        while M:
            t = M.pop()
            if t.freq > 0:
                t.freq -= 1
                M.insert(0, t)
            else:
                self._drop(t, 1)
                return True
        return False

    def _arc_replace(self, in_b2: bool) -> bool:
        t1 = len(self.lists[SMALL])
        if not self._over():
            return False
        if t1 >= 1 and ((in_b2 and t1 == self.arc_p) or t1 > self.arc_p):
            v = self.lists[SMALL].pop()
            self._drop(v, 1)
            self._push(G1, self._make_ghost(v))
        elif self.lists[MAIN]:
            v = self.lists[MAIN].pop()
            self._drop(v, 1)
            self._push(G2, self._make_ghost(v))
        elif t1 >= 1:
            v = self.lists[SMALL].pop()
            self._drop(v, 1)
            self._push(G1, self._make_ghost(v))
        else:
            return False
        return True

    def _arc_insert(self, e: _Entry, g: Any) -> None:
        c = self.maxsize
        b1, b2 = len(self.lists[G1]), len(self.lists[G2])
        where = self._lst(g) if g is not None else -1
        if where == G1:
            self.arc_p = min(self.arc_p + (1.0 if b1 >= b2 else b2 / b1), float(c))
            self._arc_replace(False)
            self._unlink(g)
            self._push(MAIN, e)
        elif where == G2:
            self.arc_p = max(self.arc_p - (1.0 if b2 >= b1 else b1 / b2), 0.0)
            self._arc_replace(True)
            self._unlink(g)
            self._push(MAIN, e)
        else:
            l1 = len(self.lists[SMALL]) + b1
            if l1 >= c:
                if len(self.lists[SMALL]) < c:
                    self.lists[G1].pop()
                    self._arc_replace(False)
                else:
                    v = self.lists[SMALL].pop()
                    self._drop(v, 1)
            else:
                total = l1 + len(self.lists[MAIN]) + b2
                if total >= c:
                    if total >= 2 * c and b2 > 0:
                        self.lists[G2].pop()
                    self._arc_replace(False)
            self._push(SMALL, e)
        while self._over() and self._arc_replace(False):
            pass

    # LFU
    def _lfu_find(self, e: _Entry) -> int:
        return next(j for j, (_, items) in enumerate(self.buckets) if any(x is e for x in items))

    def _lfu_hit(self, e: _Entry) -> None:
        j = self._lfu_find(e)
        f, items = self.buckets[j]
        if j + 1 >= len(self.buckets) or self.buckets[j + 1][0] != f + 1:
            self.buckets.insert(j + 1, (f + 1, []))
        items[:] = [x for x in items if x is not e]
        self.buckets[j + 1][1].insert(0, e)
        if not items:
            del self.buckets[j]

    def _lfu_unlink(self, e: _Entry) -> None:
        j = self._lfu_find(e)
        items = self.buckets[j][1]
        items[:] = [x for x in items if x is not e]
        if not items:
            del self.buckets[j]

    def _lfu_evict(self) -> bool:
        if not self.buckets:
            return False
        v = self.buckets[0][1][-1]
        self._lfu_unlink(v)
        self._drop(v, 1)
        return True

    # LIRS: stack S = lists[MAIN] (entries and ghost tuples), queue Q = self.queue
    def _in_s(self, e: Any) -> bool:
        return any(x is e for x in self.lists[MAIN])

    def _lirs_prune(self) -> None:
        S = self.lists[MAIN]
        while S and not (isinstance(S[-1], _Entry) and S[-1].lir):
            b = S.pop()
            if isinstance(b, tuple):
                self.nonres[:] = [x for x in self.nonres if x is not b]

    def _lirs_demote_bottom(self) -> None:
        self._lirs_prune()
        S = self.lists[MAIN]
        if not S:
            return
        b = S.pop()
        b.lir = False
        self.lir_n -= 1
        self.queue.insert(0, b)
        self._lirs_prune()

    lir_n = 0

    def _lirs_hit(self, e: _Entry) -> None:
        S = self.lists[MAIN]
        if e.lir:
            bottom = S[-1] is e
            self._unlink(e)
            self._push(MAIN, e)
            if bottom:
                self._lirs_prune()
        elif self._in_s(e):
            self.queue[:] = [x for x in self.queue if x is not e]
            e.lir = True
            self.lir_n += 1
            self._unlink(e)
            self._push(MAIN, e)
            if self.lir_n > self.lir_max:
                self._lirs_demote_bottom()
        elif self.lir_n < self.lir_max:   # not in S while the LIR set is short (entries were deleted): LIR
            self.queue[:] = [x for x in self.queue if x is not e]
            e.lir = True
            self.lir_n += 1
            self._push(MAIN, e)
        else:
            self._push(MAIN, e)
            self.queue[:] = [x for x in self.queue if x is not e]
            self.queue.insert(0, e)

    def _lirs_evict(self) -> bool:
        S = self.lists[MAIN]
        if self.queue:
            v = self.queue.pop()
            if self._in_s(v):
                self._drop(v, 1)
                g = self._make_ghost(v)
                S[:] = [g if x is v else x for x in S]
                self.nonres.insert(0, g)
                if len(self.nonres) > self.nonres_max:
                    old = self.nonres.pop()
                    S[:] = [x for x in S if x is not old]
                    self._lirs_prune()
            else:
                self._drop(v, 1)
            return True
        if not S:
            return False
        v = S.pop()
        self.lir_n -= 1
        self._drop(v, 1)
        self._lirs_prune()
        return True

    def _lirs_insert(self, e: _Entry, g: Any) -> None:
        while self._over() and self._lirs_evict():
            pass
        if g is not None and not any(x is g for x in self.lists[MAIN]):
            g = None
        if g is not None:
            self.nonres[:] = [x for x in self.nonres if x is not g]
            self.lists[MAIN][:] = [x for x in self.lists[MAIN] if x is not g]
            e.lir = True
            self.lir_n += 1
            self._push(MAIN, e)
            if self.lir_n > self.lir_max:
                self._lirs_demote_bottom()
        elif self.lir_n < self.lir_max:
            e.lir = True
            self.lir_n += 1
            self._push(MAIN, e)
        else:
            self._push(MAIN, e)
            self.queue.insert(0, e)

    def _lirs_remove(self, e: _Entry) -> None:
        if e.lir:
            self._unlink(e)
            self.lir_n -= 1
            self._lirs_prune()
        else:
            self.queue[:] = [x for x in self.queue if x is not e]
            if self._in_s(e):
                self._unlink(e)
                self._lirs_prune()

    # ---------------------------------------------------------------- operations
    def _remove(self, e: _Entry, cause: int) -> None:
        self._p_remove(e)
        self._drop(e, cause)

    def _expire(self, now: float) -> None:
        for e in [e for e in self.entries.values() if e.exp <= now]:
            if e.key in self.entries:
                self._remove(e, 2)

    def _lookup(self, key: Hashable) -> _Entry | None:
        e = self.entries.get(key)
        if e is not None and e.exp != math.inf and e.exp <= self._now():
            self._remove(e, 2)
            return None
        return e

    def get(self, key: Hashable, default: Any = None) -> Any:
        e = self._lookup(key)
        if e is not None:
            self._count(True, e.hash)
            self._p_hit(e)
            return e.value
        self._count(False, hash(key))
        return default

    def contains(self, key: Hashable) -> bool:
        return self._lookup(key) is not None

    def delete(self, key: Hashable) -> bool:
        e = self._lookup(key)
        if e is None:
            return False
        self._remove(e, 0)
        return True

    def put(self, key: Hashable, value: Any, weight: int = 1, ttl: float | None = None,
            priority: int = 0) -> bool:
        p = priority
        if ttl is None and self.default_ttl > 0:
            ttl = self.default_ttl
        has_ttl = any(e.exp != math.inf for e in self.entries.values())
        now = 0.0
        if ttl or has_ttl:
            now = self._now()
            if has_ttl:
                self._expire(now)
        e = self.entries.get(key)
        g = self._ghost(hash(key)) if e is None else None
        if e is not None:
            if e.weight == weight and e.prio == p:
                e.value = value
                e.exp = now + ttl if ttl else math.inf
                self._p_hit(e)
                return True
            self._remove(e, 0)
            g = self._ghost(hash(key))
        n_le = sum(1 for x in self.entries.values() if x.prio <= p)
        w_le = sum(x.weight for x in self.entries.values() if x.prio <= p)
        if len(self.entries) - n_le + 1 > self.maxsize or self.weight - w_le + weight > self.max_weight:
            self.counters["rejections"] += 1
            return False
        if self.adaptive and (_mix(hash(key), SEED2) >> 32) < self.sh_thresh:
            for sh in self.shadows:
                sh.put(hash(key), None)
        e = _Entry(key, value, weight, p)
        if ttl:
            e.exp = now + ttl
        self.entries[key] = e
        self.weight += weight
        if p == 0:
            self._p_insert(e, g)
        else:
            while self._over() and self._p_evict_one():
                pass
            while self._over() and self._evict_prio(p):
                pass
            self._push(PRIO + p - 1, e)
        return key in self.entries

    def clear(self) -> None:
        self.entries.clear()
        self.lists = {i: [] for i in range(20)}
        self.buckets = []
        self.queue = []
        self.nonres = []
        self.lir_n = 0
        self.weight = 0
        self.hand = None
        self.arc_p = 0.0
        self.s3_evicted = False

    # ---------------------------------------------------------------- comparison
    def policy_state(self) -> dict[str, Any]:
        """The same view as ``CacheCore._policy_state()``."""

        def name(x: Any) -> Any:
            return ("ghost", x[1]) if isinstance(x, tuple) else x.key

        d: dict[str, Any] = {"lists": [[name(x) for x in self.lists[i]] for i in range(20)],
                             "arc_p": self.arc_p, "window": self.win_max, "protected_max": self.prot_max,
                             "hand": None if self.hand is None else name(self.hand),
                             "kind": self.kind, "switches": self.switches}
        if self.kind == "lfu":
            d["buckets"] = [(f, [x.key for x in items]) for f, items in self.buckets]
        if self.kind == "lirs":
            d["lists"][SMALL] = []
            d["lists"][G1] = []
            d["queue"] = [x.key for x in self.queue]
            d["nonresident"] = [name(x) for x in self.nonres]
            d["lir"] = sorted((x.key for x in self.lists[MAIN] if isinstance(x, _Entry) and x.lir), key=repr)
        return d

    def all_counters(self) -> dict[str, int]:
        return {**self.counters, "currsize": len(self.entries), "weight": self.weight}


#: The model's former name (reference models are named ``Reference<Name>`` project-wide); kept for old imports.
RefCache = ReferenceCache
