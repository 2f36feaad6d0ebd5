"""IntelligentCacheSystem: the multi-level cache every agent process of a host shares.

Levels (see docs/cache_system.md for the full rules):

* **L1** — per process, the compiled engine :class:`sutazai_hwopt.cache.Cache`, bounded by ``l1_size`` bytes.
  Holds Python objects (what this process put, and objects it decoded from a shared tier). Each L1 entry
  remembers the L2 epoch stripe of its key; an L1 hit whose stripe moved (another process put or deleted a key of
  that stripe) is dropped and re-read, so L1 never serves a value overwritten elsewhere.
* **L2** — shared memory for the whole namespace (:class:`~sutazai_hwopt.cache.shared_index.SharedTier`);
  bytes and numpy values are read zero-copy as read-only views that pin their block.
* **L3** — compressed shared memory, optionally mirrored to a directory (:mod:`sutazai_hwopt.cache.l3`).
* **remote** — optional Redis (:mod:`sutazai_hwopt.cache.remote`).

Promotion and demotion: ``put`` writes L1 and L2 (write-through, so other processes see it at once) and the
remote tier. A hit in L2 promotes decoded objects (pickled objects, str) into L1 — not bytes/arrays or objects
with out-of-band pickle buffers, whose zero-copy views are already as fast and would pin shared memory from a
private cache. A hit in L3 or remote
promotes to L2 (then L1 as above). L2's eviction victims are demoted to L3 (compressed); L3's victims and L1's
are dropped (L1 always has a copy in L2 or below). Priority (0-9) travels with the value through every tier;
every tier evicts from the lowest priority level present first.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._native.shmcache_index import AgentStats, TieredFront
from .._validate import check_agent_id as _check_agent
from ..config import CacheSection, section_of
from ..errors import InvalidArgumentError, LoaderError, StateError, WeightError
from ..logs import get_logger
from ..procid import process_start_time
from ..shm import sharing_of, validate_name
from .codec import KIND_PICKLE, KIND_STR, decode, encode, key_bytes, key_from_bytes, key_hash, value_size
from .write_behind import MISSING as WRITE_PENDING_MISSING
from .write_behind import WriteBehind

if TYPE_CHECKING:
    from .engine import Cache
    from .l3 import L3Tier
    from .prefetch import PrefetchGovernor
    from .remote import RemoteTier
    from .shared_index import SharedTier
    from .tiers import Demoted, Tier

__all__ = ["IntelligentCacheSystem"]

log = get_logger("cache")
_MISS = object()
_UNREAD = object()      # _lookup's "L1 not consulted yet" (the compiled front passes what L1 returned)
LEVELS = ("L1", "L2", "L3", "remote")
ST_VALID, ST_LOADING, ST_FAILED = 2, 3, 4


def _section(config: Any, overrides: dict[str, Any]) -> CacheSection:
    section = section_of(config, CacheSection)
    return CacheSection.from_mapping(overrides, base=section) if overrides else section


def _check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidArgumentError(f"priority must be an integer in 0..9, got {priority!r}")
    return priority


class IntelligentCacheSystem:
    """A multi-level cache shared by every process that uses the same ``namespace``.

    Example:
        >>> from sutazai_hwopt.testing import throwaway_namespace
        >>> with throwaway_namespace() as ns:
        ...     cache = IntelligentCacheSystem({"namespace": ns, "l1_size": 1 << 20, "l2_size": 8 << 20,
        ...                                     "l3_size": 0, "enable_prefetch": False})
        ...     cache.put("prompt:1", {"tokens": [1, 2, 3]}, "agent_001", priority=9)
        ...     cache.get("prompt:1", "agent_002")
        ...     cache.destroy()
        ({'tokens': [1, 2, 3]}, 'L1')

    Args:
        config: a dict of :class:`~sutazai_hwopt.config.CacheSection` keys (``l1_size``, ``l2_size``,
            ``l3_size``, ``enable_prefetch``, ``prefetch_depth``, ``namespace``, ...), a ``CacheSection`` or a
            ``HwoptConfig``. Sizes are bytes; 0 disables a level.
        loader: ``loader(key) -> value`` used by prefetching (``get_or_load`` takes its own).
        **overrides: CacheSection keys applied on top of ``config``.
    """

    def __init__(self, config: Any = None, *, loader: Callable[[Any], Any] | None = None,
                 **overrides: Any) -> None:
        cfg = _section(config, overrides)
        self.config = cfg
        self.namespace = validate_name("namespace", cfg.namespace)
        share = sharing_of(self.namespace)   # a group-shared namespace: other users may have written the tiers
        self._allow_pickle = share is None or share.allow_pickle
        self._loader = loader
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._start = process_start_time(self._pid) or 0
        self._closed = False
        # L2 and L3 are also used for what only they do (epochs, host-wide loads, checks); every level is
        # read and written through the Tier protocol.
        self._l1: Cache | None = None
        #: L1's byte budget now: ``l1_size`` scaled by the host service's factor (:mod:`.l1_budget`)
        self._l1_budget = cfg.l1_size
        self._l1_scale: tuple[float, str | None] = (1.0, None)
        self._l1_trimmed = 0    # entries dropped to fit a lowered budget (the engine counts them as no eviction)
        self._l2: SharedTier | None = None
        self._l3: L3Tier | None = None
        self._remote: RemoteTier | None = None
        try:
            if cfg.l1_size > 0:
                from .engine import Cache

                self._l1 = Cache(max(1024, cfg.l1_size // 64), cfg.policy, max_bytes=cfg.l1_size,
                                 weigher=lambda k, v: value_size(v[0]))
            if cfg.l2_size > 0:
                from .shared_index import SharedTier

                self._l2 = SharedTier(self.namespace, "l2", cfg.l2_size, max_entries=cfg.l2_max_entries)
            if cfg.l3_size > 0:
                from .l3 import L3Tier

                self._l3 = L3Tier(self.namespace, cfg.l3_size, codec=cfg.compression,
                                  directory=cfg.l3_directory, max_entries=cfg.l3_max_entries)
            if cfg.redis_url:
                from .remote import RemoteTier

                self._remote = RemoteTier(cfg.redis_url, self.namespace, hmac_key=cfg.redis_hmac_key)
        except BaseException:
            self.close()
            raise
        #: entries this process owes L2 because its lock was busy (``write_behind``; None when off or no L2)
        self._behind: WriteBehind | None = (WriteBehind(self._store_shared)
                                            if cfg.write_behind and self._l2 is not None else None)
        self._agents: dict[str, AgentStats] = {}
        self._predictor: Any = None
        self._worker: Any = None
        self._prefetcher: PrefetchGovernor | None = None
        self._prefetched: OrderedDict[bytes, None] = OrderedDict()
        self._pf = {"predicted": 0, "prefetched": 0, "used": 0, "skipped": 0, "failed": 0}
        self._loaders: dict[str, Callable[[Any], Any]] = {}
        if cfg.enable_prefetch and cfg.prefetch_depth > 0:
            from .prefetch import MarkovPredictor, PrefetchGovernor, PrefetchWorker

            self._predictor = MarkovPredictor(cfg.prefetch_order, min_confidence=cfg.prefetch_min_confidence)
            self._worker = PrefetchWorker(self._on_batch, queue_size=cfg.prefetch_queue,
                                          inline=cfg.prefetch_inline)
            self._prefetcher = PrefetchGovernor(
                self._worker, self._pf_signals, seed=self._predictor.seed, mode=cfg.prefetch_mode,
                batch=1 if cfg.prefetch_inline else cfg.prefetch_batch,
                min_precision=cfg.prefetch_min_precision, min_coverage=cfg.prefetch_min_coverage,
                label=self.namespace)
        # Tagged bytes and hash of keys seen (exact str / bytes / int), shared by both paths of get.
        self._keymemo: dict[Any, tuple[bytes, int]] = {}
        cls = type(self)
        self._front = TieredFront(self, self._l1.get if self._l1 is not None else None,
                                  self._l2.index if self._l2 is not None else None, self._keymemo,
                                  self._agents, cls._get_slow,
                                  self._prefetcher,
                                  self._prefetched, _MISS)
        if self._l1 is not None:
            # The compiled L1-hit path, bound over the class's get (which it falls back to for the rest).
            self.get = self._front.get  # type: ignore[method-assign]
            from .l1_budget import register

            register(self)   # a namespace whose daemon config this process took: follow its L1 factor

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> IntelligentCacheSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop prefetching and unmap the shared tiers from this process (they stay for the others).

        Later calls raise StateError. Zero-copy views handed out stay valid until they are released.
        """
        self._closed = True
        if getattr(self, "_l1", None) is not None:
            from .l1_budget import unregister

            unregister(self)
        front = getattr(self, "_front", None)
        if front is not None:
            front.closed = True     # a bound front.get kept by a caller now raises StateError too
            self.__dict__.pop("get", None)
        if getattr(self, "_worker", None) is not None:
            self._worker.close()
        behind = getattr(self, "_behind", None)
        if behind is not None:
            behind.close()             # what this process still owes L2 is written before it unmaps it
        for tier in (self._l3, self._l2, self._remote):
            if tier is not None:
                tier.close()
        self._l2 = self._l3 = self._remote = None

    def destroy(self) -> None:
        """Close and unlink this namespace's shared segments (every process loses L2/L3)."""
        l2, l3 = self._l2, self._l3
        if getattr(self, "_worker", None) is not None:
            self._worker.close()
        behind = getattr(self, "_behind", None)
        if behind is not None:
            behind.discard()           # nothing owed survives the segments it was owed to
            behind.close()
        self._l2 = self._l3 = None
        if l3 is not None:
            l3.destroy()
        if l2 is not None:
            l2.destroy()
        self.close()

    # ---- core operations ------------------------------------------------------------------------------------
    def put(self, key: str | bytes | int, value: Any, agent_id: str = "default", priority: int = 0) -> None:
        """Store ``value`` under ``key`` in L1 and L2 (and the remote tier), visible to every process.

        Raises:
            InvalidArgumentError: wrong key type, bad priority or agent id, or an unpicklable value.
            WeightError: the value is larger than a level's budget. In every case nothing stored changes.
        """
        if self._closed:
            raise StateError("the cache system is closed")
        kb = key_bytes(key)
        _check_agent(agent_id)
        _check_priority(priority)
        h = key_hash(kb)
        if self._l2 is not None or self._l3 is not None or self._remote is not None:
            kind, head, body = encode(value)
            if self._behind is not None and self._l2 is not None:
                self._l2.check_weight(kb, head, body)   # refused now, never owed and failing later
                self._behind.put(kb, h, kind, priority, head, body, value)
            else:
                self._store_shared(kb, h, kind, priority, head, body)
        self._l1_put(kb, h, value, priority)
        self._agent(agent_id).count_put()
        self._front.remember(key, kb, h)

    def _store_shared(self, kb: bytes, h: int, kind: int, priority: int, head: bytes, body: list[Any],
                      visited: bool = False, *, nowait: bool = False) -> bool:
        """Write an encoded entry to L2 (or L3 without L2) and the remote tier. ``nowait`` (write-behind): when
        L2's lock is still busy after the spin, write nothing and return False."""
        if self._l2 is not None:
            if nowait:
                victims = self._l2.try_put(key=kb, key_hash=h, kind=kind, priority=priority, head=head,
                                           body=body, demote=self._l3 is not None)
                if victims is None:
                    return False
            else:
                victims = self._l2.put(key=kb, key_hash=h, kind=kind, priority=priority, head=head, body=body,
                                       demote=self._l3 is not None, visited=visited)
            self._demote(victims)
        elif self._l3 is not None:
            self._l3.put(key=kb, key_hash=h, kind=kind, priority=priority, head=head, body=body)
        if self._remote is not None:
            self._remote.put(key=kb, key_hash=h, kind=kind, priority=priority, head=head, body=body)
        return True

    def _demote(self, victims: list[Demoted]) -> None:
        """Hand L2's eviction victims to L3 (compressed there)."""
        l3 = self._l3
        if l3 is None:
            return
        for vk, vkind, vprio, vhead, vbody in victims:
            l3.put(key=vk, key_hash=key_hash(vk), kind=vkind, priority=vprio, head=vhead, body=[vbody])

    def _l1_put(self, kb: bytes, h: int, value: Any, priority: int) -> None:
        if self._l1 is None:
            return
        size = value_size(value)
        if size > self._l1_budget:   # the configured budget, or less while the host service shrinks L1
            if self._l2 is None and self._l3 is None and self._remote is None:
                if size > self.config.l1_size:
                    raise WeightError(f"value of about {size} bytes is larger than the L1 budget "
                                      f"({self.config.l1_size} bytes) and no shared level is enabled")
            else:
                self._l1.pop(kb, None)
                return
        epoch = self._l2.index.epoch(h) if self._l2 is not None else 0
        self._l1.put(kb, (value, epoch), priority=priority)
        if self._l1_budget < self.config.l1_size:
            self._trim_l1()

    def _trim_l1(self) -> int:
        """Evict L1 entries in the policy's order until L1 fits its current budget; returns how many."""
        l1, n = self._l1, 0
        while l1 is not None and l1.current_weight > self._l1_budget:
            try:
                l1.popitem()
            except KeyError:
                break
            n += 1
        self._l1_trimmed += n
        return n

    def scale_l1(self, factor: float, reason: str | None = None) -> dict[str, Any]:
        """Set L1's byte budget to ``factor`` x ``l1_size`` (``0 < factor <= 1``) and evict down to it now.

        The host service's ``cache.shrink`` remedy does it in every process that follows its namespace
        (:mod:`.l1_budget`); ``scale_l1(1.0)`` restores the configured budget. ``stats()["levels"]["L1"]``
        shows the budget, the factor and ``reason``. Returns ``{"budget", "evicted"}``.
        """
        if not 0.0 < factor <= 1.0:
            raise InvalidArgumentError(f"factor must be in (0, 1], got {factor!r}")
        self._l1_scale = (float(factor), None if factor == 1.0 else reason)
        self._l1_budget = max(1, int(self.config.l1_size * factor))
        return {"budget": self._l1_budget, "evicted": self._trim_l1()}

    def get(self, key: str | bytes | int, agent_id: str = "default", default: Any = None) -> tuple[Any, str | None]:
        """Return ``(value, level)``: level is ``"L1"``, ``"L2"``, ``"L3"``, ``"remote"``, or None on a miss
        (then value is ``default``). Bytes and numpy values from L2 are read-only zero-copy views.

        An open system with an L1 serves this through its compiled front (:class:`TieredFront`: an L1 hit of a
        key and agent seen before is one compiled call); the rest comes here.

        Raises:
            InvalidArgumentError: wrong key type or agent id.
        """
        return self._get_slow(key, agent_id, default)

    def _get_slow(self, key: Any, agent_id: Any, default: Any, ent: Any = _UNREAD) -> tuple[Any, str | None]:
        if self._closed:
            raise StateError("the cache system is closed")
        t = type(key)
        memo = self._keymemo.get(key) if t is str or t is bytes or t is int else None
        if memo is None:
            kb = key_bytes(key)
            h = key_hash(kb)
            self._front.remember(key, kb, h)
        else:
            kb, h = memo
        a = self._agents.get(agent_id) if type(agent_id) is str else None
        if a is None:
            a = self._agent(_check_agent(agent_id))
        if self._behind is not None and self._behind.pending:
            self._behind.try_flush()            # what this process owes L2, while its lock may be free
        value, level = self._lookup(kb, h, ent)
        a.record(-1 if level is None else LEVELS.index(level))
        if level is not None and self._prefetched:
            with self._lock:
                if kb in self._prefetched:
                    del self._prefetched[kb]
                    self._pf["used"] += 1
        if self._prefetcher is not None:
            self._prefetcher.observe(agent_id, kb, level is None)
        return (default, None) if level is None else (value, level)

    def _lookup(self, kb: bytes, h: int, ent: Any = _UNREAD) -> tuple[Any, str | None]:
        """Read the levels in order; ``ent`` is what L1 returned when the caller already read it."""
        l1, l2 = self._l1, self._l2
        if l1 is not None:
            if ent is _UNREAD:
                ent = l1.get(kb, _MISS)
            if ent is not _MISS:
                if l2 is None or l2.index.epoch(h) == ent[1]:
                    return ent[0], "L1"
                l1.pop(kb, None)
        if self._behind is not None and self._behind.pending:
            value = self._behind.lookup(kb)           # this process's own put, not yet written to L2
            if value is not WRITE_PENDING_MISSING:
                return value, "L1"
        if l2 is not None:
            epoch = l2.index.epoch(h) if l1 is not None else 0   # read before the value: L1 coherence
            r = l2.get(key=kb, key_hash=h)
            if r is not None:
                kind, prio, head, body = r
                value = decode(kind, head, body, allow_pickle=self._allow_pickle)
                # Promote decoded objects, but not ones that view shared memory (bytes, arrays, pickles with
                # out-of-band buffers): a private L1 copy would pin the L2 block for as long as it stays in L1.
                if l1 is not None and (kind == KIND_STR or (kind == KIND_PICKLE and len(body) == 0)):
                    self._l1_store(kb, value, epoch, prio)
                return value, "L2"
        lower: tuple[tuple[str, Tier | None], ...] = (("L3", self._l3), ("remote", self._remote))
        for level, tier in lower:
            if tier is None:
                continue
            r = tier.get(key=kb, key_hash=h)
            if r is None:
                continue
            kind, prio, head, body = r
            if l2 is not None:
                self._demote(l2.put(key=kb, key_hash=h, kind=kind, priority=prio, head=head, body=[body],
                                    demote=self._l3 is not None))
            value = decode(kind, head, body, allow_pickle=self._allow_pickle)
            if l1 is not None and kind in (KIND_PICKLE, KIND_STR):
                self._l1_store(kb, value, l2.index.epoch(h) if l2 is not None else 0, prio)
            return value, level
        return None, None

    def _l1_store(self, kb: bytes, value: Any, epoch: int, prio: int) -> None:
        if self._l1 is not None and value_size(value) <= self._l1_budget:
            self._l1.put(kb, (value, epoch), priority=prio)
            if self._l1_budget < self.config.l1_size:
                self._trim_l1()

    def contains(self, key: str | bytes | int) -> bool:
        """True when some level holds ``key`` (no statistics, no promotion)."""
        if self._closed:
            raise StateError("the cache system is closed")
        kb = key_bytes(key)
        h = key_hash(kb)
        if self._l1 is not None:
            ent = self._l1.peek(kb, _MISS)
            if ent is not _MISS and (self._l2 is None or self._l2.index.epoch(h) == ent[1]):
                return True
        if self._behind is not None and self._behind.lookup(kb) is not WRITE_PENDING_MISSING:
            return True
        return any(tier is not None and tier.contains(key=kb, key_hash=h) for tier in self._shared_tiers())

    __contains__ = contains

    def delete(self, key: str | bytes | int, agent_id: str = "default") -> bool:
        """Remove ``key`` from every level (for every process); True when some level held it."""
        if self._closed:
            raise StateError("the cache system is closed")
        kb = key_bytes(key)
        _check_agent(agent_id)
        h = key_hash(kb)
        found = False
        if self._behind is not None:
            found = self._behind.lookup(kb) is not WRITE_PENDING_MISSING
            self._behind.discard(kb)
        if self._l1 is not None:
            found = self._l1.pop(kb, _MISS) is not _MISS or found
        for tier in self._shared_tiers():
            if tier is not None:
                found = tier.delete(key=kb, key_hash=h) or found
        return found

    def flush(self) -> None:
        """Write the L2 entries this process still owes (``write_behind``), waiting for L2's lock if it must.

        A process that stops using the cache but stays alive calls this so the others see its last puts;
        ``close`` does it too. Without ``write_behind`` nothing is ever owed.
        """
        if self._closed:
            raise StateError("the cache system is closed")
        if self._behind is not None:
            self._behind.flush()

    def clear(self) -> None:
        """Empty every level — the shared ones for every process of the namespace."""
        if self._closed:
            raise StateError("the cache system is closed")
        if self._behind is not None:
            self._behind.discard()
        if self._l1 is not None:
            self._l1.clear()
        for tier in self._shared_tiers():
            if tier is not None:
                tier.clear()

    def _shared_tiers(self) -> tuple[Tier | None, Tier | None, Tier | None]:
        """L2, L3 and the remote tier (None where disabled), seen through the Tier protocol."""
        return self._l2, self._l3, self._remote

    # ---- loading --------------------------------------------------------------------------------------------
    def get_or_load(self, key: str | bytes | int, agent_id: str, loader: Callable[[Any], Any],
                    priority: int = 0) -> Any:
        """Return the value of ``key``; on a miss call ``loader(key)`` once across the whole host and store it.

        Other processes (and threads) that miss the same key meanwhile wait for that one load, through a
        LOADING marker in L2 naming the loader's pid and start time; if that process dies, a waiter takes over.

        Raises:
            LoaderError: the loader raised (here, or in the process that was loading for us); nothing is cached.
        """
        kb = key_bytes(key)
        _check_agent(agent_id)
        _check_priority(priority)
        self._loaders[agent_id] = loader
        value, level = self.get(key, agent_id, _MISS)
        if level is not None:
            return value
        l2 = self._l2
        if l2 is None:
            return self._load(key, agent_id, loader, priority)
        h = key_hash(kb)
        expect, delay, watched = 0, 0.0002, None
        while True:
            claimed, state, _opid, _ostart, gen = l2.index.begin_load(kb, h, self._pid, self._start, expect)
            if claimed:
                return self._load(key, agent_id, loader, priority, gen)
            if state == ST_VALID:
                value, level = self._lookup(kb, h)
                if level is not None:
                    return value
                continue
            watched = gen
            while True:   # wait for the owner: done, failed, or dead
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
                st = l2.index.entry_state(kb, h)
                if st is None or st[0] == ST_VALID:
                    break
                if st[0] == ST_FAILED and st[3] == watched:
                    raise LoaderError(f"loader for {key!r} failed in process {st[1]}: "
                                      f"{st[4].decode(errors='replace')}")
                if st[0] == ST_LOADING and process_start_time(st[1]) != st[2]:
                    expect = st[3]
                    log.warning("loader of %r (pid %d) died; taking over", key, st[1])
                    break
                if st[0] != ST_LOADING or st[3] != watched:
                    break

    def _load(self, key: Any, agent_id: str, loader: Callable[[Any], Any], priority: int,
              gen: int = 0) -> Any:
        kb = key_bytes(key)
        h = key_hash(kb)
        try:
            value = loader(key)
        except BaseException as exc:
            if gen and self._l2 is not None:
                self._l2.index.end_load(kb, h, gen, f"{type(exc).__name__}: {exc}".encode()[:4000])
            if isinstance(exc, Exception):
                raise LoaderError(f"loader for {key!r} raised {type(exc).__name__}: {exc}") from exc
            raise
        try:
            self.put(key, value, agent_id, priority)
        except BaseException as exc:
            # The value cannot be stored (too large, unpicklable): waiters get the error, not a second load.
            if gen and self._l2 is not None:
                self._l2.index.end_load(kb, h, gen, f"storing the loaded value failed: {exc}".encode()[:4000])
            raise
        self._agent(agent_id).count_load()
        return value

    # ---- prefetching ------------------------------------------------------------------------------------------
    def _pf_signals(self) -> tuple[int, int, int]:
        """(prefetched, used, misses) so far: what the governor's rule compares window by window."""
        misses = sum(a.as_dict(LEVELS)["misses"] for a in list(self._agents.values()))   # once per window
        return self._pf["prefetched"], self._pf["used"], misses

    def _on_batch(self, batch: list[tuple[str, Any]], latest: bool) -> None:
        # On the worker thread (or inline): learn the batch, then predict from each agent's latest access
        # (unless newer batches wait: predictions from a stale history would load keys already passed).
        pred = self._predictor
        pred.observe_many(batch)
        if not latest:
            return
        for agent_id in dict.fromkeys(a for a, _ in batch):
            for nk in pred.predict(agent_id, self.config.prefetch_depth):
                self._pf["predicted"] += 1
                try:
                    self._prefetch_one(agent_id, nk)
                except Exception as exc:  # a failed prefetch is only a missed opportunity
                    log.debug("prefetch of %r failed: %s", nk, exc)

    def _prefetch_one(self, agent_id: str, kb: Any) -> None:
        h = key_hash(kb)
        if (self._l1 is not None and kb in self._l1) or (self._l2 is not None and self._l2.index.contains(kb, h)):
            self._pf["skipped"] += 1
            return
        value, level = self._lookup(kb, h)
        if level is None:
            loader = self._loader or self._loaders.get(agent_id)
            if loader is None:
                self._pf["skipped"] += 1
                return
            try:
                value = loader(key_from_bytes(kb))
                kind, head, body = encode(value)
                self._store_shared(kb, h, kind, 0, head, body, visited=True)
            except Exception:
                with self._lock:
                    self._pf["failed"] += 1
                raise
        with self._lock:
            self._pf["prefetched"] += 1
            self._prefetched[kb] = None
            if len(self._prefetched) > 65536:
                self._prefetched.popitem(last=False)

    def drain_prefetch(self) -> None:
        """Wait until queued prefetches ran (tests and benchmarks)."""
        if self._worker is not None:
            self._worker.drain()

    # ---- statistics and checks ----------------------------------------------------------------------------
    def _agent(self, agent_id: str) -> AgentStats:
        """The counters of a validated agent id (registered on first use; the compiled front reads the dict)."""
        a = self._agents.get(agent_id)
        if a is None:
            a = self._agents.setdefault(agent_id, AgentStats())
        return a

    def stats(self) -> dict[str, Any]:
        """Counters of this process (per level, per agent, prefetching) and each shared tier's host-wide state.

        In this process, ``gets == sum(hits.values()) + misses``, in total and per agent.
        """
        agents = {k: v.as_dict(LEVELS) for k, v in list(self._agents.items())}
        hits = {lv: sum(a["hits"][lv] for a in agents.values()) for lv in LEVELS}
        misses = sum(a["misses"] for a in agents.values())
        out: dict[str, Any] = {"gets": sum(hits.values()) + misses, "hits": hits, "misses": misses,
                               "puts": sum(a["puts"] for a in agents.values()), "agents": agents}
        with self._lock:
            pf: dict[str, Any] = dict(self._pf)
        out["hit_ratio"] = (sum(out["hits"].values()) / out["gets"]) if out["gets"] else 0.0
        levels: dict[str, Any] = {}
        if self._l1 is not None:
            s = self._l1.stats()
            factor, reason = self._l1_scale
            levels["L1"] = {"entries": s.currsize, "bytes": s.current_weight, "budget": self._l1_budget,
                            "evictions": s.evictions, "configured_budget": self.config.l1_size,
                            "budget_factor": factor, "budget_reason": reason,
                            "budget_evictions": self._l1_trimmed}
        if self._l2 is not None:
            levels["L2"] = {**self._l2.index.stats(), "budget": self._l2.size}
            if self._behind is not None:
                levels["L2"]["write_behind"] = self._behind.stats()
        if self._l3 is not None:
            levels["L3"] = {**self._l3.store.index.stats(), "budget": self._l3.size,
                            "raw_bytes_in": self._l3.raw_bytes, "stored_bytes_in": self._l3.stored_bytes}
        if self._remote is not None:
            levels["remote"] = {"errors": self._remote.errors, "rejected": self._remote.rejected}
        out["levels"] = levels
        if self._prefetcher is not None:
            pf["accuracy"] = pf["used"] / pf["prefetched"] if pf["prefetched"] else 0.0
            pf["coverage"] = pf["used"] / (pf["used"] + misses) if (pf["used"] + misses) else 0.0
            pf["dropped"] = self._worker.dropped
            pf.update(self._prefetcher.stats())   # state, reason, last window's precision/coverage, cost
            out["prefetch"] = pf
        out["layers"] = self._layer_figures(out)
        return out

    def _layer_figures(self, out: dict[str, Any]) -> dict[str, Any]:
        """What each optional layer on the hot path costs and saves, from counters (no timers on the hot path)."""
        levels, hits = out["levels"], out["hits"]
        layers: dict[str, Any] = {"stats": {"on": True, "cost": "one lock and 3-4 dict increments per get/put",
                                            "saves": "nothing: observability only"}}
        if "L1" in levels:
            layers["L1"] = {"on": True, "cost": {"entries": levels["L1"]["entries"],
                                                 "bytes": levels["L1"]["bytes"],
                                                 "evictions": levels["L1"]["evictions"]},
                            "saves": {"hits": hits["L1"]}}
        if "L3" in levels:
            l3 = levels["L3"]
            layers["L3"] = {"on": True, "cost": {"writes": l3.get("inserts", 0) + l3.get("updates", 0),
                                                 "raw_bytes_in": l3["raw_bytes_in"]},
                            "saves": {"hits": hits["L3"]}}
        pf = out.get("prefetch")
        if pf is not None:
            layers["prefetch"] = {"on": pf["state"] != "off",
                                  "cost": {"model_accesses": pf["model_accesses"], "model_cpu_s": pf["model_cpu_s"],
                                           "loads": pf["prefetched"], "wasted": pf["prefetched"] - pf["used"],
                                           "dropped": pf["dropped"]},
                                  "saves": {"misses_avoided": pf["used"]}}
        return layers

    def check(self) -> bool:
        """Run the invariant checks of every shared tier (True, or CorruptionError naming the problem)."""
        for tier in (self._l2, self._l3.store if self._l3 is not None else None):
            if tier is not None:
                tier.check()
        return True

    def reclaim(self) -> int:
        """Release the pins of dead processes in the shared tiers; returns how many were released."""
        return sum(t.reclaim_dead() for t in (self._l2, self._l3.store if self._l3 else None) if t is not None)
