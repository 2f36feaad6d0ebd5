"""The pool's shared tables, kept in the segment's meta area so every process sees the same state.

* agents:  name, pid and process start time (so GC can tell a dead agent from a reused pid);
* blocks:  state (free / writing / sealed / alias), generation (stable ids ``pool:slot:gen``), offset, sizes,
  codec, XXH3-128 of the stored bytes, total reference count;
* holders: per-(block, agent) reference counts, an open-addressing hash table with linear probing and
  backward-shift deletion (Knuth, TAOCP vol. 3 §6.4, Algorithm R), so no tombstones accumulate;
* dedup:   XXH3-128 low word -> canonical sealed block, same scheme.

Every table is zero-initialised by the kernel and "all zero" means empty, so a fresh segment needs no setup.
All mutations happen under the segment's robust lock. After a holder died mid-update, :meth:`Tables.reconcile`
rebuilds everything derivable (holder table, reference counts, dedup index) from the authoritative facts —
block entries whose offsets are live heap allocations — and frees heap allocations no entry claims.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._native import pool_table
from .._native.pool_table import (
    AGENT_BITS,
    ALIAS,
    F_DEDUP,
    F_INDEXED,
    FREE,
    META_MAGIC,
    META_VERSION,
    SEALED,
    WRITING,
    TableCore,
)
from ..errors import CorruptionError, IncompatibleLayoutError
from .compression import CODEC_NAMES

__all__ = ["AGENT_DTYPE", "ALIAS", "BLOCK_DTYPE", "FREE", "F_DEDUP", "F_INDEXED", "F_NS_READ", "HEADER_DTYPE",
           "META_MAGIC", "META_VERSION", "SEALED", "SLOT_DTYPE", "STATE_NAMES", "WRITING", "Tables", "meta_bytes",
           "table_sizes"]

#: Block flag set by ``MemoryPoolManager.grant_namespace_read``: any agent of the namespace may take a reference
#: to this sealed block by reading it. Only the Python layer reads it; the compiled core keeps bits 1 (dedup) and
#: 2 (indexed) and clears every bit when the slot is retired, so a grant ends with its block.
F_NS_READ = 4
assert not F_NS_READ & (F_DEDUP | F_INDEXED), "F_NS_READ collides with a flag of pool_table_layout.pxd"

#: numpy type of each C field type used in pool_table_layout.pxd (the segment is little-endian: x86-64, arm64).
NUMPY_OF_C = {"uint8_t": "u1", "int32_t": "<i4", "uint32_t": "<u4", "uint64_t": "<u8", "char [48]": "S48"}


def struct_dtype(struct: str) -> np.dtype:
    """The numpy dtype of one shared struct, built from the offsets and sizes the C compiler gave it."""
    size, fields = pool_table.struct_layouts()[struct]
    return np.dtype({"names": [f[0] for f in fields], "formats": [NUMPY_OF_C[f[3]] for f in fields],
                     "offsets": [f[1] for f in fields], "itemsize": size})


# The layout is defined once, by the C structs of _native/pool_table_layout.pxd.
HEADER_DTYPE = struct_dtype("meta_hdr")
AGENT_DTYPE = struct_dtype("agent")
BLOCK_DTYPE = struct_dtype("block")
SLOT_DTYPE = struct_dtype("slot")

STATE_NAMES = {FREE: "free", WRITING: "writing", SEALED: "sealed", ALIAS: "alias"}
MAX_AGENTS = 1 << AGENT_BITS
_GOLD = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def _pow2(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


def table_sizes(n_blocks: int, n_agents: int) -> dict[str, int]:
    """Capacities of each table for ``n_blocks`` blocks (hash tables at most half full)."""
    return {"n_agents": n_agents, "n_blocks": n_blocks, "n_holders": _pow2(2 * n_blocks + n_agents),
            "n_dedup": _pow2(2 * n_blocks)}


def meta_bytes(sizes: dict[str, int]) -> int:
    """Bytes of meta area the tables need."""
    return (HEADER_DTYPE.itemsize + sizes["n_agents"] * AGENT_DTYPE.itemsize
            + sizes["n_blocks"] * BLOCK_DTYPE.itemsize + (sizes["n_holders"] + sizes["n_dedup"]) * SLOT_DTYPE.itemsize)


class _HashTable:
    """Linear-probing table of u64 key -> u32 value over two shared arrays; key 0 means empty."""

    def __init__(self, arr: np.ndarray) -> None:
        self.keys = arr["key"]
        self.vals = arr["val"]
        self.mask = len(arr) - 1
        self.shift = 64 - (len(arr).bit_length() - 1)

    def home(self, key: int) -> int:
        return ((key * _GOLD) & _M64) >> self.shift

    def find(self, key: int) -> int:
        """Index of ``key`` or -1."""
        keys, mask = self.keys, self.mask
        i = self.home(key)
        for _ in range(mask + 1):
            k = int(keys[i])
            if k == key:
                return i
            if k == 0:
                return -1
            i = (i + 1) & mask
        return -1

    def insert(self, key: int, val: int) -> int:
        keys, mask = self.keys, self.mask
        i = self.home(key)
        for _ in range(mask + 1):
            k = int(keys[i])
            if k == key or k == 0:
                self.vals[i] = val
                keys[i] = key
                return i
            i = (i + 1) & mask
        raise CorruptionError("a shared hash table is full (it is sized to stay at most half full)")

    def delete_at(self, i: int) -> None:
        # Backward-shift deletion: move later members of the cluster into the hole so probes stay correct.
        keys, vals, mask = self.keys, self.vals, self.mask
        j = i
        while True:
            keys[i] = 0
            while True:
                j = (j + 1) & mask
                k = int(keys[j])
                if k == 0:
                    return
                h = self.home(k)
                if (i <= j and i < h <= j) or (i > j and (h > i or h <= j)):
                    continue
                break
            vals[i] = vals[j]
            keys[i] = k
            i = j

    def items(self) -> list[tuple[int, int]]:
        idx = np.flatnonzero(self.keys)
        return list(zip(self.keys[idx].tolist(), self.vals[idx].tolist()))

    def clear(self) -> None:
        self.keys[:] = 0
        self.vals[:] = 0


def holder_key(slot: int, agent: int) -> int:
    return ((slot + 1) << AGENT_BITS) | agent


def dedup_key(h_lo: int) -> int:
    return h_lo or 1


class Tables:
    """Views of one pool's shared tables (numpy arrays over the segment; no copies)."""

    def __init__(self, buf: memoryview, meta_off: int, meta_size: int, sizes: dict[str, int] | None = None,
                 growth: tuple[int, int] = (0, 0)) -> None:
        hdr = np.frombuffer(buf, HEADER_DTYPE, 1, meta_off)
        if sizes is not None:
            hdr["max_heap"], hdr["ext_size"] = growth
            if meta_bytes(sizes) > meta_size:
                raise IncompatibleLayoutError("meta area too small for the requested tables")
            hdr["n_agents"], hdr["n_blocks"] = sizes["n_agents"], sizes["n_blocks"]
            hdr["n_holders"], hdr["n_dedup"] = sizes["n_holders"], sizes["n_dedup"]
            hdr["version"] = META_VERSION
            hdr["magic"] = META_MAGIC
        if int(hdr["magic"][0]) != META_MAGIC or int(hdr["version"][0]) != META_VERSION:
            raise IncompatibleLayoutError(
                f"pool tables are not ours or of another version (magic {int(hdr['magic'][0]):#x}, "
                f"version {int(hdr['version'][0])}; this build reads version {META_VERSION})")
        sizes = {k: int(hdr[k][0]) for k in ("n_agents", "n_blocks", "n_holders", "n_dedup")}
        for k in ("n_holders", "n_dedup"):
            if sizes[k] < 16 or sizes[k] & (sizes[k] - 1):
                raise IncompatibleLayoutError(f"pool table size {k}={sizes[k]} is not a power of two")
        if not 1 <= sizes["n_agents"] <= MAX_AGENTS or sizes["n_blocks"] < 1 or meta_bytes(sizes) > meta_size:
            raise IncompatibleLayoutError(f"pool table sizes {sizes} do not fit the {meta_size}-byte meta area")
        self.sizes = sizes
        tables_off = off = meta_off + HEADER_DTYPE.itemsize
        self.hdr = hdr
        self.agents = np.frombuffer(buf, AGENT_DTYPE, sizes["n_agents"], off)
        off += sizes["n_agents"] * AGENT_DTYPE.itemsize
        self.blocks = np.frombuffer(buf, BLOCK_DTYPE, sizes["n_blocks"], off)
        off += sizes["n_blocks"] * BLOCK_DTYPE.itemsize
        self.holders = _HashTable(np.frombuffer(buf, SLOT_DTYPE, sizes["n_holders"], off))
        off += sizes["n_holders"] * SLOT_DTYPE.itemsize
        self.dedup = _HashTable(np.frombuffer(buf, SLOT_DTYPE, sizes["n_dedup"], off))
        b = self.blocks
        self.state, self.gen, self.off, self.size = b["state"], b["gen"], b["off"], b["size"]
        self.nbytes, self.refs, self.target, self.flags = b["nbytes"], b["refs"], b["target"], b["flags"]
        self.codec, self.shuffle, self.h_lo, self.h_hi = b["codec"], b["shuffle"], b["h_lo"], b["h_hi"]
        self.owner, self.head = b["owner"], b["head"]
        self.core = TableCore(buf, tables_off, sizes["n_agents"], sizes["n_blocks"], sizes["n_holders"],
                              sizes["n_dedup"])

    def close(self) -> None:
        """Drop the numpy views and the compiled core (they hold buffer exports of the segment)."""
        self.core.close()
        for name in list(vars(self)):
            if name != "sizes":
                delattr(self, name)

    @property
    def destroyed(self) -> bool:
        return bool(self.core.destroyed())

    def mark_destroyed(self) -> None:
        self.hdr["destroyed"] = 1

    @property
    def n_ext(self) -> int:
        """Extension segments the pool has grown into."""
        return int(self.hdr["n_ext"][0])

    def set_n_ext(self, n: int) -> None:
        self.hdr["n_ext"] = n

    @property
    def default_codec(self) -> int:
        """The codec id of puts that name none (``put_bytes(compression=None)``); 0 = raw. It lives in the
        tables header's spare word (``meta_hdr_t.pad``), zero in pools made before it existed: raw, as then."""
        codec = int(self.hdr["pad"][0])
        return codec if codec in CODEC_NAMES else 0

    def set_default_codec(self, codec: int) -> None:
        self.hdr["pad"] = codec

    @property
    def growth(self) -> tuple[int, int]:
        """(total heap bytes the pool may reach, heap bytes per extension segment; 0 = no growth)."""
        return int(self.hdr["max_heap"][0]), int(self.hdr["ext_size"][0])

    # ---- agents ---------------------------------------------------------------------------------------------
    def agent_index(self, name: bytes) -> int:
        """Index of a registered agent or -1."""
        hits = np.flatnonzero(self.agents["name"] == name)
        return int(hits[0]) if len(hits) else -1

    def register_agent(self, name: bytes, pid: int, start: int, *, rebind: bool = True) -> int:
        """Register an agent bound to (pid, start); returns its index, or -1 if the table is full.

        An existing agent is re-bound to (pid, start) only with ``rebind``; pid 0 means "not bound to a
        process yet" (an agent that was granted a block before it ever ran here; GC leaves it alone).
        """
        idx = self.agent_index(name)
        if idx >= 0 and not rebind:
            return idx
        if idx < 0:
            empty = np.flatnonzero(self.agents["name"] == b"")
            if not len(empty):
                return -1
            idx = int(empty[0])
        a = self.agents
        a["pid"][idx] = pid
        a["start"][idx] = start
        a["name"][idx] = name
        return idx

    def unregister_agent(self, idx: int) -> None:
        """Forget an agent (its holder entries must already be gone); the name store is the commit."""
        a = self.agents
        a["name"][idx] = b""
        a["pid"][idx] = 0
        a["start"][idx] = 0

    def agent_name(self, idx: int) -> str:
        return bytes(self.agents["name"][idx]).decode()

    # ---- blocks ---------------------------------------------------------------------------------------------
    def free_slot(self) -> int:
        """A FREE block slot or -1."""
        return int(self.core.free_slot())

    def retire(self, slot: int) -> None:
        """Mark a slot FREE and bump its generation so old ids fail (the state store is the commit)."""
        self.core.retire(slot)

    # ---- holders --------------------------------------------------------------------------------------------
    def holder_count(self, slot: int, agent: int) -> int:
        return int(self.core.holder_count(slot, agent))

    def holder_add(self, slot: int, agent: int, delta: int) -> int:
        """Change one holder's count by ``delta``; returns the new count (the entry goes away at 0)."""
        return int(self.core.holder_add(slot, agent, delta))

    def holders_of_agent(self, agent: int) -> list[tuple[int, int]]:
        """(slot, count) of every block the agent holds."""
        keys = self.holders.keys
        idx = np.flatnonzero((keys != 0) & ((keys & np.uint64(MAX_AGENTS - 1)) == agent))
        return [(int(k >> AGENT_BITS) - 1, int(v))
                for k, v in zip(keys[idx].tolist(), self.holders.vals[idx].tolist())]

    # ---- dedup index ----------------------------------------------------------------------------------------
    def dedup_lookup(self, h_lo: int) -> int:
        return int(self.core.dedup_lookup(h_lo))

    def head_candidate(self, head: int, size: int, nbytes: int, codec: int, shuffle: int) -> int:
        """An indexed sealed block with this head key, stored size, logical size and codec, or -1."""
        hits = np.flatnonzero((self.head == head) & (self.size == size) & (self.state == SEALED)
                              & ((self.flags & F_INDEXED) != 0) & (self.codec == codec)
                              & (self.shuffle == shuffle) & (self.nbytes == nbytes))
        return int(hits[0]) if len(hits) else -1

    def dedup_insert(self, h_lo: int, slot: int) -> None:
        self.core.dedup_insert(h_lo, slot)

    def dedup_remove(self, h_lo: int, slot: int) -> None:
        self.core.dedup_remove(h_lo, slot)

    def summary(self) -> dict[str, Any]:
        """Block counts, logical / physical / stored bytes, dedup and compression ratios, blocks per agent."""
        st = self.state
        phys = np.flatnonzero((st == WRITING) | (st == SEALED))
        ids = np.flatnonzero(st != FREE)
        targets = np.where(st[ids] == ALIAS, self.target[ids], ids)
        logical = int(self.nbytes[targets].sum()) if len(ids) else 0
        physical = int(self.nbytes[phys].sum())
        stored = int(self.size[phys].sum())
        per_agent = {self.agent_name(idx): len(self.holders_of_agent(idx))
                     for idx in np.flatnonzero(self.agents["name"] != b"").tolist()}
        return {"blocks": len(phys), "ids": len(ids), "logical_bytes": logical, "physical_bytes": physical,
                "stored_bytes": stored, "dedup_ratio": logical / physical if physical else 1.0,
                "compression_ratio": physical / stored if stored else 1.0, "blocks_per_agent": per_agent,
                "block_table_capacity": len(st), "default_compression": CODEC_NAMES[self.default_codec]}

    # ---- invariants -----------------------------------------------------------------------------------------
    def check(self, allocations: np.ndarray) -> None:
        """Verify the tables against each other and against the heap's live allocations.

        Raises:
            CorruptionError: naming the first broken invariant.
        """
        st = self.state
        live = np.flatnonzero((st == WRITING) | (st == SEALED))
        if int(st.max(initial=0)) > ALIAS:
            raise CorruptionError(f"block table holds an unknown state {int(st.max())}")
        offs = self.off[live]
        if len(np.unique(offs)) != len(offs):
            raise CorruptionError("two live blocks share one heap offset")
        allocs = np.sort(allocations.astype(np.uint64))
        if len(allocs) != len(offs) or not np.array_equal(np.sort(offs), allocs):
            missing = np.setdiff1d(offs, allocs)
            extra = np.setdiff1d(allocs, offs)
            raise CorruptionError(f"block table and heap disagree: {len(missing)} blocks without an allocation "
                                  f"(e.g. {missing[:3].tolist()}), {len(extra)} unclaimed allocations "
                                  f"(e.g. {extra[:3].tolist()})")
        expected = np.zeros(len(st), dtype=np.int64)
        aliases = np.flatnonzero(st == ALIAS)
        for slot in aliases.tolist():
            t = int(self.target[slot])
            if not 0 <= t < len(st) or int(st[t]) != SEALED:
                raise CorruptionError(f"alias block slot {slot} points at slot {t}, which is not sealed")
            expected[t] += 1
        for key, count in self.holders.items():
            slot, agent = (key >> AGENT_BITS) - 1, key & (MAX_AGENTS - 1)
            if not 0 <= slot < len(st) or int(st[slot]) == FREE:
                raise CorruptionError(f"holder entry for block slot {slot} refers to a free block")
            if count <= 0 or agent >= len(self.agents) or self.agents["name"][agent] == b"":
                raise CorruptionError(f"holder entry (slot {slot}, agent {agent}) has count {count} "
                                      f"or an unregistered agent")
            if self.holders.find(key) < 0:
                raise CorruptionError(f"holder entry (slot {slot}, agent {agent}) is unreachable by probing")
            expected[slot] += count
        used = np.flatnonzero(st != FREE)
        if not np.array_equal(self.refs[used].astype(np.int64), expected[used]):
            bad = used[self.refs[used].astype(np.int64) != expected[used]][:3].tolist()
            raise CorruptionError(f"reference counts disagree with holders and aliases at slots {bad}")
        if (expected[used] == 0).any():
            raise CorruptionError("a block nobody holds was not released")
        indexed = set(np.flatnonzero((st == SEALED) & ((self.flags & F_INDEXED) != 0)).tolist())
        seen = set()
        for key, slot in self.dedup.items():
            if slot not in indexed or dedup_key(int(self.h_lo[slot])) != key or self.dedup.find(key) < 0:
                raise CorruptionError(f"dedup index entry {key:#x} -> slot {slot} is stale or unreachable")
            seen.add(slot)
        if seen != indexed:
            raise CorruptionError(f"sealed blocks {sorted(indexed - seen)[:3]} are flagged indexed but not in the "
                                  f"dedup index")

    def reconcile(self, heap: Any) -> dict[str, int]:  # heap: anything with allocations() and free(offset)
        """Rebuild derived state after a holder died mid-update (runs under the lock); returns what it did.

        Authoritative: heap allocations, and block entries (state, offset, target, flags). Derived: holder
        counts are kept, entries for freed blocks dropped; reference counts recomputed; blocks nobody holds,
        and allocations no block claims, are freed; the dedup index is rebuilt.
        """
        allocs = set(heap.allocations().tolist())
        st = self.state
        dropped = freed = 0
        claimed: set[int] = set()
        for slot in np.flatnonzero((st == WRITING) | (st == SEALED)).tolist():
            off = int(self.off[slot])
            if off not in allocs or off in claimed:
                self.retire(slot)
                dropped += 1
            else:
                claimed.add(off)
        for slot in np.flatnonzero(st == ALIAS).tolist():
            t = int(self.target[slot])
            if not 0 <= t < len(st) or int(st[t]) != SEALED:
                self.retire(slot)
                dropped += 1
        # Holders: keep valid entries (merge duplicates left by an interrupted backward shift), rebuild table.
        kept: dict[int, int] = {}
        for key, count in self.holders.items():
            slot, agent = (key >> AGENT_BITS) - 1, key & (MAX_AGENTS - 1)
            if (0 <= slot < len(st) and int(st[slot]) != FREE and count > 0 and agent < len(self.agents)
                    and self.agents["name"][agent] != b""):
                kept[key] = count
        self.holders.clear()
        refs = np.zeros(len(st), dtype=np.int64)
        for key, count in kept.items():
            self.holders.insert(key, count)
            refs[(key >> AGENT_BITS) - 1] += count
        for slot in np.flatnonzero(st == ALIAS).tolist():
            refs[int(self.target[slot])] += 1
        # Release blocks nobody holds: aliases first (they may free their target's last reference).
        for slot in np.flatnonzero(st == ALIAS).tolist():
            if refs[slot] == 0:
                refs[int(self.target[slot])] -= 1
                self.retire(slot)
                freed += 1
        for slot in np.flatnonzero((st == WRITING) | (st == SEALED)).tolist():
            if refs[slot] == 0:
                claimed.discard(int(self.off[slot]))
                self.retire(slot)
                freed += 1
        used = np.flatnonzero(st != FREE)
        self.refs[used] = refs[used]
        for off in sorted(allocs - claimed):
            heap.free(off)
        self.dedup.clear()
        for slot in np.flatnonzero((st == SEALED) & ((self.flags & F_INDEXED) != 0)).tolist():
            if self.dedup_lookup(int(self.h_lo[slot])) >= 0:
                self.flags[slot] = int(self.flags[slot]) & ~F_INDEXED
            else:
                self.dedup_insert(int(self.h_lo[slot]), slot)
        return {"dropped_entries": dropped, "released_blocks": freed, "freed_allocations": len(allocs - claimed)}
