"""MemoryPoolManager: named shared-memory pools that every agent process allocates in directly.

Each pool is a shared segment (see :mod:`sutazai_hwopt.shm`; it may grow by extension segments, see :mod:`.pool`) laid
out as ``[header | tables | heap]``: the compiled allocator and robust lock
(:class:`~sutazai_hwopt._native.pool_alloc.SegmentHeap`) own the header and heap, :class:`~.tables.Tables` the
block / agent / holder / dedup tables. Any process of the same user that builds a
manager with the same namespace sees the same pools and blocks; a block id (``"pool:slot:generation"``) is a
plain string that can be sent to another process.

Life of a block: ``allocate_memory`` (writable through ``view``) -> ``seal`` (immutable; deduplicated by
XXH3-128 plus a byte-for-byte comparison) -> ``get_array`` / ``read`` by any agent holding a reference ->
``free_memory`` by each holder; the memory is reused when the last reference goes.

Sharing: ``share_memory`` grants one agent a reference; ``grant_namespace_read`` lets *every* agent of the
namespace take one by reading the sealed block (weights stored once, read by the whole fleet, with no call per
agent). Either way the reader holds a counted reference (released by ``free_memory`` or, for a dead process, by
``collect_garbage``), and sealed blocks are immutable, so a grant never gives write access. Other users never
reach the pool at all: its segment is 0600 and owner-checked on attach (:mod:`sutazai_hwopt.trust`).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from .._native import pool_alloc
from .._native.pool_table import NO_ACCESS, alloc_fast, free_fast
from .._validate import round_up as _round_up
from ..errors import (
    IncompatibleLayoutError,
    InvalidArgumentError,
    NotFoundError,
    PoolExhaustedError,
    StateError,
)
from ..logs import get_logger
from ..procid import process_start_time
from ..shm import (
    attach_segment,
    close_quietly,
    create_segment,
    list_segment_names,
    list_segments,
    segment_name,
    unlink_segment,
    validate_name,
)
from .access import check_agent, check_int, parse_block_id, resolve_error
from .compression import CODEC_NAMES, codec_id, decode_into, encode
from .dedup import FUSED_MIN, compare_or_digest, digest, head_key
from .dedup import split as split_digest
from .pool import AttachedPool as _Pool
from .tables import ALIAS, F_DEDUP, F_NS_READ, FREE, SEALED, STATE_NAMES, WRITING, Tables, meta_bytes, table_sizes

__all__ = ["MemoryPoolManager", "process_start_time"]

log = get_logger("memory")
_MAX_POOL = 1 << 44


class _LockedBlock:
    """``with manager._locked_block(agent, block_id) as (pool, slot, agent_index):`` — the block id checked and
    resolved for the agent, under the pool lock (a class, not a generator context manager, because it runs on
    every call). With ``read``, an agent without a reference to a block granted to the namespace
    (``grant_namespace_read``) takes one here."""

    __slots__ = ("agent_id", "block_id", "manager", "pool", "read")

    def __init__(self, manager: MemoryPoolManager, agent_id: object, block_id: object, read: bool = False) -> None:
        self.manager, self.agent_id, self.block_id, self.read = manager, agent_id, block_id, read

    def __enter__(self) -> tuple[_Pool, int, int]:
        agent_id = check_agent(self.agent_id)
        pool_id, slot, gen = parse_block_id(self.block_id)
        pool = self.manager._pool(pool_id)
        pool.heap.acquire()
        try:
            if pool.t.destroyed:
                raise NotFoundError(f"pool {pool_id!r} was destroyed")
            agent = self.manager._agent(pool, agent_id)
            state = pool.t.core.resolve(slot, gen, agent)
            if state == NO_ACCESS and self.read and int(pool.t.flags[slot]) & F_NS_READ:
                pool.t.holder_add(slot, agent, 1)      # the namespace grant: this reader now holds a reference
                pool.t.core.add_refs(slot, 1)
                state = pool.t.core.resolve(slot, gen, agent)
            if state < 0:
                raise resolve_error(state, str(self.block_id), agent_id, len(pool.t.state))
        except BaseException:
            pool.heap.release()
            raise
        self.pool = pool
        return pool, slot, agent

    def __exit__(self, *exc: object) -> None:
        self.pool.heap.release()


class MemoryPoolManager:
    """Create, attach to and use shared-memory pools of one namespace.

    Example:
        >>> from sutazai_hwopt.testing import throwaway_namespace
        >>> with throwaway_namespace() as ns, MemoryPoolManager(namespace=ns) as pm:
        ...     _ = pm.create_pool("data", size=4 * 1024**2)
        ...     bid = pm.put_bytes("agent_001", b"hello", pool_id="data")
        ...     pm.read("agent_001", bid)
        b'hello'

    Args:
        namespace: processes with the same namespace share pools (1-64 of ``[A-Za-z0-9_-]``).
        config: a :class:`~sutazai_hwopt.config.HwoptConfig`; ``hardware.shared_memory_size_mb`` is the
            default pool size.
    """

    def __init__(self, namespace: str = "sutazai", *, config: Any = None) -> None:
        self.namespace = validate_name("namespace", namespace)
        from ..config import HardwareSection, section_of

        hw = section_of(config, HardwareSection)
        self.default_pool_size = hw.shared_memory_size_mb * 1024**2
        #: seconds a block granted to an agent that never attached stays granted (see collect_garbage)
        self.grant_grace_s = hw.grant_grace_s
        self._pools: dict[str, _Pool] = {}
        self._mutex = threading.RLock()
        self._pid = os.getpid()
        self._start = process_start_time(self._pid) or 0
        self._names: dict[str, bytes] = {}   # agent ids that passed check_agent -> UTF-8 (bounded)

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> MemoryPoolManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap every pool from this process (the pools stay for the other processes)."""
        with self._mutex:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()

    def create_pool(self, pool_id: str, size: int | None = None, *, max_size: int | None = None,
                    max_blocks: int | None = None, max_agents: int = 1024, compression: str | None = None) -> str:
        """Create a pool of ``size`` heap bytes (default: ``shared_memory_size_mb`` of the config).

        Args:
            pool_id: name of the pool, unique in the namespace.
            size: heap capacity in bytes (tables and header come on top, a few % at most).
            max_size: let the pool grow, by extension segments of ``size`` bytes each, up to this total heap
                (default: no growth).
            max_blocks: capacity of the block table (default: one block per 16 KiB, 1024..1M).
            max_agents: how many distinct agent ids may use the pool.
            compression: the pool's default codec (``"lz4"``, ``"zlib"``; None or ``"none"``: raw) for puts, in
                any process, that name none (:meth:`set_default_compression`); the host service creates its
                pools with ``cache.compression``.

        Raises:
            AlreadyExistsError: the pool exists. InvalidArgumentError: bad id or size.
            PoolExhaustedError: ``/dev/shm`` lacks the space.
        """
        validate_name("pool_id", pool_id)
        if size is None:
            size = self.default_pool_size
        check_int("size", size, 1 << 17, _MAX_POOL)
        if max_size is None:
            max_size = size
        check_int("max_size", max_size, size, _MAX_POOL)
        if max_blocks is None:
            max_blocks = min(max(size // 16384, 1024), 1 << 20)
        check_int("max_blocks", max_blocks, 1, 1 << 24)
        check_int("max_agents", max_agents, 1, 1 << 16)
        codec = codec_id(compression)
        sizes = table_sizes(max_blocks, max_agents)
        meta = _round_up(meta_bytes(sizes), 4096)
        total = _round_up(pool_alloc.header_bytes_for(size) + meta + size, 4096)
        name = segment_name(self.namespace, "pool", pool_id)
        shm = create_segment(name, total)
        buf = shm.buf
        assert buf is not None
        try:
            pool_alloc.format_segment(buf, meta)
            heap = pool_alloc.SegmentHeap(buf)
            tables = Tables(buf, heap.meta_offset, heap.meta_size, sizes,
                            growth=(max_size, size if max_size > heap.heap_size else 0))
            tables.set_default_codec(codec)
        except BaseException:
            close_quietly(shm)
            unlink_segment(name)
            raise
        pool = _Pool(pool_id, name, shm, heap, tables)
        with self._mutex:
            self._pools[pool_id] = pool
        log.info("created pool %s (%d bytes heap, %d blocks) in namespace %s", pool_id, heap.heap_size,
                 max_blocks, self.namespace)
        return pool_id

    def set_default_compression(self, pool_id: str, compression: str | None) -> str:
        """Set the codec of the pool's puts that name none, for every process (stored in the pool); returns
        the previous one's name. Blocks already stored keep theirs."""
        codec = codec_id(compression)
        pool = self._pool(pool_id)
        with pool.heap:
            before = pool.t.default_codec
            pool.t.set_default_codec(codec)
        return CODEC_NAMES[before]

    def pools(self) -> list[str]:
        """Ids of the namespace's pools (every process's, from ``/dev/shm``)."""
        return list_segments(self.namespace, "pool")

    def _pool(self, pool_id: object) -> _Pool:
        pool = self._pools.get(pool_id)  # type: ignore[call-overload]
        if pool is not None and not pool.t.destroyed:
            return pool
        if not isinstance(pool_id, str):
            raise InvalidArgumentError(f"pool_id must be a string, got {pool_id!r}")
        with self._mutex:
            pool = self._pools.get(pool_id)
            if pool is not None and pool.t.destroyed:
                self._pools.pop(pool_id).close()
                pool = None
            if pool is None:
                pool = self._attach(pool_id)
                self._pools[pool_id] = pool
            return pool

    def _attach(self, pool_id: str) -> _Pool:
        validate_name("pool_id", pool_id)
        name = segment_name(self.namespace, "pool", pool_id)
        try:
            shm = attach_segment(name)
        except NotFoundError:
            raise NotFoundError(f"no pool {pool_id!r} in namespace {self.namespace!r}; "
                                f"known: {self.pools()}") from None
        buf = shm.buf
        assert buf is not None
        for attempt in range(400):
            meta_off = 0
            try:
                heap = pool_alloc.SegmentHeap(buf)
                meta_off = heap.meta_offset
                try:
                    tables = Tables(buf, meta_off, heap.meta_size)
                except BaseException:
                    heap.close()
                    raise
                break
            except IncompatibleLayoutError:
                # A creator may still be formatting a brand-new segment: the allocator header, then the tables'
                # header, are all zero until written. Anything else is a real error.
                unfinished = not any(buf[:16]) or (meta_off and not any(buf[meta_off:meta_off + 16]))
                if attempt < 399 and unfinished:
                    threading.Event().wait(0.005)
                    continue
                close_quietly(shm)
                raise
        pool = _Pool(pool_id, name, shm, heap, tables)
        if tables.destroyed:
            pool.close()
            raise NotFoundError(f"pool {pool_id!r} was destroyed")
        return pool

    def destroy_pool(self, pool_id: str) -> None:
        """Unlink the pool's segment and mark it destroyed; every process's later calls on it raise NotFound.

        Memory is returned to the system when the last process unmaps it (at its next call or ``close()``).
        A segment whose header is damaged or was never finished (its creator died while formatting it) is
        unlinked all the same, with a warning.
        """
        try:
            pool = self._pool(pool_id)
        except IncompatibleLayoutError as exc:
            name = segment_name(self.namespace, "pool", validate_name("pool_id", pool_id))
            for stray in list_segment_names(self.namespace, "pool"):
                if stray == name or stray.startswith(name + "."):
                    unlink_segment(stray)
            log.warning("destroyed unreadable pool segment %s: %s", name, exc)
            return
        with pool.heap:
            pool.t.mark_destroyed()
            for name in pool.segment_names():
                unlink_segment(name)
            for stray in list_segment_names(self.namespace, "pool"):   # left by a process killed while growing it
                if stray.startswith(pool.name + "."):
                    unlink_segment(stray)
        with self._mutex:
            self._pools.pop(pool_id, None)
        pool.close()
        log.info("destroyed pool %s in namespace %s", pool_id, self.namespace)

    # ---- agents and ids -------------------------------------------------------------------------------------
    def _agent(self, pool: _Pool, agent_id: str) -> int:
        """Index of ``agent_id`` in the pool's agent table; the first use in this process binds it to us."""
        name = agent_id.encode()
        idx = pool.agents.get(agent_id)
        if idx is not None and pool.t.core.agent_is(idx, name):
            return idx
        idx = pool.t.register_agent(name, self._pid, self._start)
        if idx < 0:
            raise PoolExhaustedError(f"pool {pool.pool_id!r} has no room for agent {agent_id!r} "
                                     f"({len(pool.t.agents)} agents max)")
        pool.agents[agent_id] = idx
        return idx

    def _locked_block(self, agent_id: object, block_id: object, *, read: bool = False) -> _LockedBlock:
        """Context manager: parse and check a block id for an agent; yields (pool, slot, agent index) under the
        pool lock. ``read``: a read of a sealed block, which a namespace grant lets any agent make."""
        return _LockedBlock(self, agent_id, block_id, read)

    @staticmethod
    def _physical(t: Tables, slot: int) -> int:
        return int(t.target[slot]) if int(t.state[slot]) == ALIAS else slot

    # ---- blocks ---------------------------------------------------------------------------------------------
    def _name(self, agent_id: object) -> bytes:
        """UTF-8 of a valid agent id (checked once per id and manager, then cached)."""
        name = self._names.get(agent_id) if type(agent_id) is str else None
        if name is None:
            checked = check_agent(agent_id)
            name = checked.encode()
            if len(self._names) < 65536:
                self._names[checked] = name
        return name

    def allocate_memory(self, agent_id: str, size: int, pool_id: str = "default", enable_dedup: bool = True) -> str:
        """Allocate ``size`` bytes for ``agent_id``; returns the block id. Fill it through :meth:`view`, then seal.

        Raises:
            InvalidArgumentError: bad agent id or size. NotFoundError: unknown pool.
            PoolExhaustedError: no room even after reclaiming the pool's dead agents (the pool is unchanged).
        """
        # Fast path: agent id already checked, pool and agent index cached in this process: one compiled
        # call, one lock round trip. Any refusal changed nothing; the checked path below reports it.
        bid = alloc_fast(self._pools, self._names, agent_id, pool_id, size, enable_dedup)
        if type(bid) is str:
            return bid
        self._name(agent_id)
        check_int("size", size, 1, None)
        return self._allocate(agent_id, size, pool_id, bool(enable_dedup), 0, 0, size)

    def _allocate(self, agent_id: str, size: int, pool_id: str, dedup: bool, codec: int, shuf: int,
                  nbytes: int) -> str:
        return self._reclaiming(pool_id, self._allocate_once, agent_id, size, pool_id, dedup, codec, shuf, nbytes)

    def _reclaiming(self, pool_id: str, op: Any, *args: Any) -> Any:
        """``op(*args)``; when the pool is full, reclaim its dead agents once (:meth:`_reclaim`) and retry."""
        try:
            return op(*args)
        except PoolExhaustedError:
            if not self._reclaim(pool_id):
                raise
        return op(*args)

    def _reclaim(self, pool_id: str) -> bool:
        """A full pool's last resort before PoolExhaustedError: collect its dead agents and expired grants.

        True when that released a block or an agent entry (worth one more try).
        """
        try:
            agents, blocks = self._collect_pool(pool_id, time.time())
        except (NotFoundError, IncompatibleLayoutError):
            return False
        if agents or blocks:
            log.info("pool %s was full: reclaimed %d block(s) of %d dead or never-attached agent(s) before "
                     "retrying", pool_id, blocks, agents)
        return bool(agents or blocks)

    def _allocate_once(self, agent_id: str, size: int, pool_id: str, dedup: bool, codec: int, shuf: int,
                       nbytes: int) -> str:
        pool = self._pool(pool_id)
        t = pool.t
        with pool.heap:
            if t.destroyed:
                raise NotFoundError(f"pool {pool_id!r} was destroyed")
            agent = self._agent(pool, agent_id)
            slot = t.core.free_slot()
            if slot < 0:
                raise PoolExhaustedError(f"pool {pool_id!r} block table is full ({len(t.state)} blocks)")
            off = pool.alloc(size)
            gen = t.core.new_block(slot, WRITING, off, size, nbytes, codec, shuf, F_DEDUP if dedup else 0,
                                   agent, -1)
            return f"{pool_id}:{slot}:{gen}"

    def view(self, agent_id: str, block_id: str) -> memoryview:
        """Writable memoryview of a block that is being filled (before :meth:`seal`).

        Raises:
            StateError: the block is sealed (use :meth:`get_array` / :meth:`read`) or freed.
        """
        with self._locked_block(agent_id, block_id) as (pool, slot, _agent):
            state, _gen, off, size = pool.t.core.block(slot)[:4]
            if state != WRITING:
                raise StateError(f"block {block_id!r} is sealed and immutable; use get_array() or read()")
            return pool.view(off, size)

    def seal(self, agent_id: str, block_id: str) -> str:
        """Make the block immutable; with dedup, an identical sealed block absorbs it. Returns ``block_id``.

        The id stays valid either way: after a merge it refers to the existing copy.
        """
        with self._locked_block(agent_id, block_id) as (pool, slot, _agent):
            core = pool.t.core
            state, gen, off, size, nbytes, codec, shuf, flags, _tg, _lo, _hi = core.block(slot)
            if state != WRITING:
                raise StateError(f"block {block_id!r} is already sealed")
            if not flags & F_DEDUP:
                core.seal(slot, 0, 0, False)
                return block_id
        data = pool.view(off, size)
        cand, c_gen, equal = -1, 0, False
        if size >= FUSED_MIN:
            head = head_key(data)
            with pool.heap:
                if core.block(slot)[:2] == (WRITING, gen):
                    pool.t.head[slot] = head
            h, equal, cand, c_gen = self._fused_probe(pool, data, (head, size, nbytes, codec, shuf))
        else:
            h = digest(data)
        h_lo, h_hi = split_digest(h)
        with self._locked_block(agent_id, block_id) as (pool, slot, _agent):
            if core.block(slot)[:2] != (WRITING, gen):
                raise StateError(f"block {block_id!r} is already sealed")
            if not (equal and cand >= 0 and core.block(cand)[:2] == (SEALED, c_gen)
                    and core.block(cand)[9:] == (h_lo, h_hi)):
                cand = core.dedup_lookup(h_lo)
                equal = False
                if cand >= 0 and cand != slot:
                    c_state, _g, c_off, c_size, c_nbytes, c_codec, c_shuf, _f, _t, _l, c_hi = core.block(cand)
                    equal = (c_state == SEALED and c_hi == h_hi and (c_size, c_nbytes, c_codec, c_shuf)
                             == (size, nbytes, codec, shuf)
                             and pool_alloc.bytes_equal(data, pool.view(c_off, size)))
            if equal:
                core.make_alias(slot, cand, h_lo, h_hi)
                pool.release(off, size)
                return block_id
            core.seal(slot, h_lo, h_hi, core.dedup_lookup(h_lo) < 0)
            return block_id

    @staticmethod
    def _fused_probe(pool: _Pool, data: memoryview, key: tuple[int, int, int, int, int]
                     ) -> tuple[int, bool, int, int]:
        """Guess a candidate from (head key, sizes, codec), then compare (and hash only if it differs) outside
        the lock.

        Returns (digest, equal, candidate slot, candidate generation). The candidate may be freed meanwhile;
        the caller re-checks its generation and hash under the lock before merging (sealed bytes never change
        while the generation stays the same).
        """
        t = pool.t
        c_digest = 0
        with pool.heap:
            cand = t.head_candidate(*key)
            if cand >= 0:
                _st, c_gen, c_off, *_rest, c_lo, c_hi = t.core.block(cand)
                c_digest = c_lo | (c_hi << 64)
            else:
                c_gen, c_off = 0, 0
        h, equal = compare_or_digest(data, pool.view(c_off, key[1]) if cand >= 0 else None, c_digest)
        return h, equal, cand, c_gen

    def _sealed_region(self, pool: _Pool, slot: int, block_id: str) -> tuple[int, int, int, int, int]:
        core = pool.t.core
        if core.block(slot)[0] == WRITING:
            raise StateError(f"block {block_id!r} is not sealed yet; use view() while filling it")
        _s, _g, off, size, nbytes, codec, shuf = core.block(core.physical(slot))[:7]
        return off, size, nbytes, codec, shuf

    def get_array(self, agent_id: str, block_id: str, dtype: Any = np.uint8, shape: Any = None) -> np.ndarray:
        """Zero-copy, read-only numpy view of a sealed, uncompressed block.

        Keep the block (do not ``free_memory`` it) while the array is in use: it views the pool directly.

        Raises:
            StateError: not sealed, or compressed (use :meth:`read`). InvalidArgumentError: dtype/shape do not
            match the block's size.
        """
        with self._locked_block(agent_id, block_id, read=True) as (pool, slot, _agent):
            off, _size, nbytes, codec, _shuf = self._sealed_region(pool, slot, block_id)
            if codec:
                raise StateError(f"block {block_id!r} is compressed ({CODEC_NAMES[codec]}); use read()")
            mv = pool.view(off, nbytes).toreadonly()
        dt = np.dtype(dtype)
        if dt.itemsize == 0 or nbytes % dt.itemsize:
            raise InvalidArgumentError(f"dtype {dt} does not divide the block's {nbytes} bytes")
        arr = np.frombuffer(mv, dtype=dt)
        if shape is not None:
            try:
                arr = arr.reshape(shape)
            except (ValueError, TypeError):
                raise InvalidArgumentError(
                    f"shape {shape!r} does not match the block's {arr.size} elements of {dt}") from None
        return arr

    def read(self, agent_id: str, block_id: str, out: Any = None) -> bytes | int:
        """The block's logical content (decompressed). With ``out`` (a writable buffer) it is written there and
        the byte count returned; otherwise a new ``bytes``.
        """
        with self._locked_block(agent_id, block_id, read=True) as (pool, slot, _agent):
            off, size, nbytes, codec, shuf = self._sealed_region(pool, slot, block_id)
            payload = pool.view(off, size)
        target = bytearray(nbytes) if out is None else out
        try:
            dst = memoryview(target).cast("B")
        except TypeError:
            raise InvalidArgumentError(f"out must be a writable contiguous buffer, got {type(out).__name__}") from None
        if dst.readonly or dst.nbytes < nbytes:
            raise InvalidArgumentError(f"out must be writable with at least {nbytes} bytes, got {dst.nbytes}"
                                       f"{' (read-only)' if dst.readonly else ''}")
        decode_into(codec, shuf, payload, nbytes, dst)
        return bytes(target) if out is None else nbytes

    def put_bytes(self, agent_id: str, data: Any, pool_id: str = "default", enable_dedup: bool = True,
                  compression: str | None = None, *, _itemsize: int = 1) -> str:
        """Allocate, copy ``data`` (any contiguous buffer), seal; returns the block id.

        Args:
            compression: ``"lz4"``, ``"zlib"`` or ``"none"``; None: the pool's default (raw unless the pool was
                created with one, as the host service's pools are: ``cache.compression``). Skipped when a sample
                shows it would not pay. A compressed block is read with :meth:`read`, not ``get_array``.
        """
        check_agent(agent_id)
        if compression is None:
            compression = CODEC_NAMES[self._pool(pool_id).t.default_codec]
        try:
            mv = memoryview(data).cast("B")
        except TypeError:
            raise InvalidArgumentError(f"data must be a contiguous bytes-like object, got {type(data).__name__}") \
                from None
        if mv.nbytes == 0:
            raise InvalidArgumentError("data must not be empty (blocks hold at least one byte)")
        codec, shuf, payload = encode(mv, compression, _itemsize)
        if enable_dedup and len(payload) >= FUSED_MIN:
            bid = self._reclaiming(pool_id, self._put_existing, agent_id, memoryview(payload), pool_id, codec,
                                   shuf, mv.nbytes)
            if bid is not None:
                return bid
        bid = self._allocate(agent_id, len(payload), pool_id, bool(enable_dedup), codec, shuf, mv.nbytes)
        try:
            self.view(agent_id, bid)[:] = payload
            return self.seal(agent_id, bid)
        except BaseException:
            self.free_memory(agent_id, bid)
            raise

    def _put_existing(self, agent_id: str, payload: memoryview, pool_id: str, codec: int, shuf: int,
                      nbytes: int) -> str | None:
        """Dedup before copying: if the pool already holds these bytes, return a new id for them (no copy)."""
        pool = self._pool(pool_id)
        key = (head_key(payload), len(payload), nbytes, codec, shuf)
        h, equal, cand, c_gen = self._fused_probe(pool, payload, key)
        if not equal:
            return None
        h_lo, h_hi = split_digest(h)
        t = pool.t
        with pool.heap:
            if t.destroyed:
                raise NotFoundError(f"pool {pool_id!r} was destroyed")
            if not (t.core.block(cand)[:2] == (SEALED, c_gen) and t.core.block(cand)[9:] == (h_lo, h_hi)):
                return None
            agent = self._agent(pool, agent_id)
            slot = t.core.free_slot()
            if slot < 0:
                raise PoolExhaustedError(f"pool {pool_id!r} block table is full ({len(t.state)} blocks)")
            t.core.add_refs(cand, 1)
            gen = t.core.new_block(slot, ALIAS, 0, len(payload), nbytes, codec, shuf, F_DEDUP, agent, cand,
                                   h_lo, h_hi, key[0])
            return f"{pool_id}:{slot}:{gen}"

    def put_array(self, agent_id: str, array: Any, pool_id: str = "default", enable_dedup: bool = True,
                  compression: str | None = None) -> str:
        """Store a numpy array's bytes (C order); numeric arrays are byte-shuffled before compression.

        ``compression=None`` stores the array raw whatever the pool's default codec: an array is stored to be
        viewed zero-copy (:meth:`get_array`), which a compressed block cannot be. Name a codec to compress it."""
        arr = np.ascontiguousarray(array)
        if arr.dtype.hasobject:
            raise InvalidArgumentError(f"array of dtype {arr.dtype} holds Python objects; only plain data fits")
        itemsize = arr.dtype.itemsize if arr.dtype.kind in "iufc" and arr.dtype.itemsize > 1 else 1
        return self.put_bytes(agent_id, arr.reshape(-1).view(np.uint8), pool_id, enable_dedup,
                              "none" if compression is None else compression, _itemsize=itemsize)

    def block_info(self, agent_id: str, block_id: str) -> dict[str, Any]:
        """State, sizes, codec and holders of a block (as seen by an agent holding it)."""
        with self._locked_block(agent_id, block_id, read=True) as (pool, slot, agent):
            t = pool.t
            p = self._physical(t, slot)
            return {"state": STATE_NAMES[int(t.state[slot])], "nbytes": int(t.nbytes[p]),
                    "stored_bytes": int(t.size[p]), "compression": CODEC_NAMES[int(t.codec[p])],
                    "shuffle": int(t.shuffle[p]), "deduplicated": p != slot,
                    "refs": int(t.refs[slot]), "held_by_agent": t.holder_count(slot, agent),
                    "namespace_read": bool(int(t.flags[slot]) & F_NS_READ)}

    # ---- sharing and release --------------------------------------------------------------------------------
    def share_memory(self, owner_id: str, target_id: str, block_id: str) -> None:
        """Grant ``target_id`` a reference to a block ``owner_id`` holds."""
        check_agent(target_id)
        if target_id == owner_id:
            raise InvalidArgumentError(f"target_id must differ from owner_id, got {target_id!r} twice")
        with self._locked_block(owner_id, block_id) as (pool, slot, _agent):
            # Do not bind the target to this process: it may live elsewhere (or not have started yet).
            # An unbound agent's start word holds the time of its latest grant (collect_garbage's grace period).
            now = int(time.time())
            other = pool.t.register_agent(target_id.encode(), 0, now, rebind=False)
            if other < 0:
                raise PoolExhaustedError(f"pool {pool.pool_id!r} has no room for agent {target_id!r} "
                                         f"({len(pool.t.agents)} agents max)")
            if int(pool.t.agents["pid"][other]) == 0:
                pool.t.agents["start"][other] = now
            pool.t.holder_add(slot, other, 1)
            pool.t.core.add_refs(slot, 1)

    def grant_namespace_read(self, owner_id: str, block_id: str) -> None:
        """Let every agent of this namespace read a sealed block ``owner_id`` holds, without a call per agent.

        An agent's first :meth:`get_array` / :meth:`read` / :meth:`block_info` of the id takes a counted
        reference for it (as :meth:`share_memory` would), which it drops with :meth:`free_memory` and which
        :meth:`collect_garbage` drops when its process dies; the block lives while anyone holds it. Read only:
        sealed blocks are immutable and :meth:`view` refuses them. Processes of other users cannot attach the
        pool's segment at all (0600, owner-checked; see docs/trust.md).

        Raises:
            StateError: the block is not sealed yet (seal it first: what is shared must not change).
            AccessDeniedError / NotFoundError: ``owner_id`` holds no reference / no such block.
        """
        with self._locked_block(owner_id, block_id) as (pool, slot, _agent):
            if int(pool.t.state[slot]) == WRITING:
                raise StateError(f"block {block_id!r} is not sealed; seal it before granting it to the namespace")
            pool.t.flags[slot] = int(pool.t.flags[slot]) | F_NS_READ

    def revoke_namespace_read(self, owner_id: str, block_id: str) -> None:
        """End a :meth:`grant_namespace_read`: agents without a reference can no longer take one (those that
        already read the block keep theirs until they free it)."""
        with self._locked_block(owner_id, block_id) as (pool, slot, _agent):
            pool.t.flags[slot] = int(pool.t.flags[slot]) & ~F_NS_READ

    def free_memory(self, agent_id: str, block_id: str) -> None:
        """Drop one of the agent's references; the block is released when nobody holds it."""
        # Fast path as in allocate_memory; any refusal (agent unknown here, bad id, no access, destroyed pool)
        # changed nothing and is reported by the checked path below.
        if free_fast(self._pools, self._names, agent_id, block_id) == 0:
            return
        self._name(agent_id)
        with self._locked_block(agent_id, block_id) as (pool, slot, agent):
            pool.t.holder_add(slot, agent, -1)
            self._unref(pool, slot, 1)

    @staticmethod
    def _unref(pool: _Pool, slot: int, n: int) -> None:
        for off, size in pool.t.core.unref(slot, n):
            pool.release(off, size)

    def collect_garbage(self, *, grace_s: float | None = None) -> dict[str, int]:
        """Release every reference held by agents whose process is gone (pid + start time), and by agents that
        were granted blocks but never attached within ``grace_s`` (default: the config's ``grant_grace_s``);
        returns counts (``agents`` collected, ``blocks`` released).

        The host service calls it every ``gc_interval_s``, and a full pool calls it (for itself) before it
        raises PoolExhaustedError, so a crashed agent's memory comes back without anybody asking.
        """
        agents = blocks = 0
        now = time.time()
        for pool_id in self.pools():
            try:
                a, b = self._collect_pool(pool_id, now, grace_s)
            except (NotFoundError, IncompatibleLayoutError):
                continue
            agents += a
            blocks += b
        return {"agents": agents, "blocks": blocks}

    def _collect_pool(self, pool_id: str, now: float, grace_s: float | None = None) -> tuple[int, int]:
        """One pool's part of :meth:`collect_garbage`: (agents collected, blocks released)."""
        grace = self.grant_grace_s if grace_s is None else grace_s
        pool = self._pool(pool_id)
        t = pool.t
        agents = blocks = 0
        with pool.heap:
            if t.destroyed:
                return 0, 0
            for idx in np.flatnonzero(t.agents["name"] != b"").tolist():
                pid, start = int(t.agents["pid"][idx]), int(t.agents["start"][idx])
                if pid == self._pid:
                    continue
                if pid == 0:   # granted, never attached: start is the latest grant's time (0: unknown yet)
                    if start == 0:
                        t.agents["start"][idx] = int(now)
                        continue
                    if now - start < grace:
                        continue
                elif process_start_time(pid) == start:
                    continue
                for slot, count in t.holders_of_agent(idx):
                    t.holder_add(slot, idx, -count)
                    before = int(t.state[slot])
                    self._unref(pool, slot, count)
                    if before != FREE and int(t.state[slot]) == FREE:
                        blocks += 1
                if pid:
                    log.info("pool %s: collected dead agent %s (pid %d)", pool_id, t.agent_name(idx), pid)
                else:
                    log.info("pool %s: reclaimed the grants of %s, which never attached within %.0f s",
                             pool_id, t.agent_name(idx), grace)
                t.unregister_agent(idx)
                agents += 1
            if agents:
                pool.agents.clear()
        return agents, blocks

    def trim(self) -> int:
        """Return the pages of every pool's free heap space to the kernel; returns the bytes released.

        Frees of big blocks already do this; the small blocks' space stays resident until trimmed (it counts
        in every mapper's memory). The eliminator's memory remedies call it after reclaiming.
        """
        done = 0
        for pool_id in self.pools():
            try:
                pool = self._pool(pool_id)
            except (NotFoundError, IncompatibleLayoutError):
                continue
            with pool.heap:
                if pool.t.destroyed:
                    continue
                pool.sync()
                done += sum(int(seg.heap.trim()) for seg in pool.segs)
        return done

    # ---- integrity and stats --------------------------------------------------------------------------------
    def check(self, pool_id: str) -> bool:
        """Verify the allocator's and the tables' invariants; True, or CorruptionError naming what is wrong."""
        pool = self._pool(pool_id)
        with pool.heap:
            pool.check_heaps()
            pool.t.check(pool.allocations())
        return True

    def stats(self, pool_id: str) -> dict[str, Any]:
        """Capacity, used, free, largest free block, fragmentation, dedup and compression ratios, blocks per agent."""
        pool = self._pool(pool_id)
        t = pool.t
        with pool.heap:
            hs = pool.heap_stats()
            used = hs["heap_size"] - hs["free_bytes"]
            return {
                "pool_id": pool_id, "capacity": hs["heap_size"], "used": used, "free": hs["free_bytes"],
                "largest_free_block": hs["largest_free"], "fragmentation": hs["fragmentation"],
                "recoveries": hs["recoveries"], "segments": hs["segments"], **t.summary(),
            }
