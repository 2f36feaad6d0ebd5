# Shared layout of a pool's tables (the meta area of a pool segment, see pool_layout.pxd for the segment).
# Only structs, constants and enums live here (no runtime import is generated). This file is the one definition
# of the layout: pool_table.struct_layouts() measures these structs with the C compiler, and
# sutazai_hwopt.memory.tables builds its numpy dtypes from that; tests/memory/test_layout_parity.py pins every
# field of META_VERSION 1. Changing a struct means bumping META_VERSION (old segments then refuse to attach).
#
# Meta area: [ meta_hdr_t | agents (n_agents x agent_t) | blocks (n_blocks x block_t)
#              | holders (n_holders x slot_t) | dedup index (n_dedup x slot_t) ]
from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #define SZ_META_MAGIC 0x4154454D57485A53ULL
    #define SZ_FIB 0x9E3779B97F4A7C15ULL
    """
    const uint64_t META_MAGIC_C "SZ_META_MAGIC"    # "SZHWMETA" little-endian
    const uint64_t SZ_FIB                          # Fibonacci hashing multiplier (2^64 / golden ratio)

cdef enum:
    META_VERSION_C = 1
    NAME_BYTES = 48          # agent ids: at most this many UTF-8 bytes, NUL-padded
    # block states (block_t.state)
    ST_FREE = 0
    ST_WRITING = 1
    ST_SEALED = 2
    ST_ALIAS = 3
    # block flags (block_t.flags)
    FL_DEDUP = 1             # dedup requested for this block
    FL_INDEXED = 2           # this sealed block is the dedup index's canonical copy of its hash
    # holder keys: (slot + 1) << AGENT_BITS | agent index
    HOLDER_AGENT_BITS = 16

ctypedef struct meta_hdr_t:
    uint64_t magic
    uint32_t version
    uint32_t destroyed       # set once by destroy_pool; every process's next call sees NotFound
    uint32_t n_agents
    uint32_t n_blocks
    uint32_t n_holders
    uint32_t n_dedup
    uint64_t n_ext           # extension segments the pool has grown into
    uint64_t max_heap        # total heap the pool may reach
    uint64_t ext_size        # heap bytes per extension segment (0: no growth)
    uint64_t pad

ctypedef struct agent_t:
    char name[48]            # NAME_BYTES
    int32_t pid              # 0: not bound to a process yet
    uint32_t pad
    uint64_t start           # process start time (tells a dead agent from a reused pid)

ctypedef struct block_t:
    uint8_t state
    uint8_t codec
    uint8_t shuffle
    uint8_t flags
    uint32_t gen
    uint64_t off             # segment << SEG_SHIFT | offset in that segment
    uint64_t size            # stored bytes
    uint64_t nbytes          # logical bytes (after decompression)
    uint32_t refs
    int32_t target           # an alias's sealed block, else -1
    uint64_t h_lo
    uint64_t h_hi
    uint32_t owner
    uint32_t head

ctypedef struct slot_t:      # an entry of the holder table and of the dedup index (key 0: empty)
    uint64_t key
    uint32_t val
    uint32_t pad
