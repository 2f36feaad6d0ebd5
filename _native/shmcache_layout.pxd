# Shared layout of a cache tier's index (in the pool segment's meta area) and of its value blocks.
# Only structs, externs, constants and `cdef inline` helpers live here (no runtime import is generated).
#
# Meta area: [ ihdr_t (4 KiB) | slots (nslots x slot_t) | stripe sequence words (u64) | process slots |
#              per-process counters (one 64-byte line per process slot) ]
# A stripe word is both the L1-coherence epoch of its keys and the sequence lock of lock-free readers: odd while
# a writer (holding the pool lock) changes an entry of the stripe, even otherwise (version 3; version 2 bumped
# it by one per change and had no odd/even meaning, so a version-2 segment is refused).
# Block:     [ blk_t (128 bytes) | key | head | body ], each part 64-byte aligned.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    #define SZ_IDX_MAGIC 0x3158444943485A53ULL
    #define SZ_BLK_MAGIC 0xB10C5A11U
    """
    const uint64_t IDX_MAGIC "SZ_IDX_MAGIC"
    const uint32_t BLK_MAGIC "SZ_BLK_MAGIC"
    int __builtin_popcountll(unsigned long long) nogil

cdef enum:
    IDX_VERSION = 3
    PSTAT_WORDS = 8       # per-process counters: one 64-byte line per process slot
    IHDR_BYTES = 4096
    BLK_HDR = 128
    MAXPROC = 256
    NPRIO = 10
    COPY_NOGIL = 65536
    PENDING_MAX = 16
    OPEN_MAX = 64         # stripes a writer tracks individually per operation before it closes them all by a scan
    READ_TRIES = 4        # optimistic read attempts before falling back to the locked path
    SPIN_MAX = 200        # pause iterations before a contended lock falls back to a futex wait

# Block states.
cdef enum:
    S_WRITING = 1
    S_VALID = 2
    S_LOADING = 3
    S_FAILED = 4
    S_DEAD = 5

ctypedef struct ihdr_t:
    uint64_t magic
    uint64_t version
    uint64_t nslots
    uint64_t slots_off
    uint64_t nstripes
    uint64_t stripes_off
    uint64_t procs_off
    uint64_t max_entries
    uint64_t hand
    uint64_t count
    uint64_t nbytes
    uint64_t zombies
    uint64_t zombie_bytes
    uint64_t seq
    uint64_t prio_count[10]
    uint64_t st_hits
    uint64_t st_misses
    uint64_t st_inserts
    uint64_t st_updates
    uint64_t st_evictions
    uint64_t st_evicted_bytes
    uint64_t st_deletes
    uint64_t st_repairs
    uint64_t st_reclaims
    uint64_t st_pinned_evictions
    uint64_t q_head[10]     # newest entry of each priority queue
    uint64_t q_tail[10]     # oldest
    uint64_t q_hand[10]     # SIEVE hand (0: start at the tail)
    uint64_t pstats_off     # per-process-slot hit/miss counters (no cache line shared between readers)

ctypedef struct slot_t:
    uint64_t hash
    uint64_t off
    uint32_t klen
    uint8_t ref         # SIEVE visited bit of the entry (set by readers with a relaxed atomic store)
    uint8_t prio
    uint16_t pad

ctypedef struct proc_t:
    uint32_t pid
    uint32_t pad
    uint64_t start

ctypedef struct blk_t:
    uint32_t magic
    uint32_t state
    uint64_t hash
    uint64_t seq
    uint32_t klen
    uint32_t hlen
    uint64_t vlen
    uint32_t pins
    uint16_t kind
    uint8_t prio
    uint8_t pad8
    uint32_t owner_pid
    uint32_t gen
    uint64_t owner_start
    uint64_t pinmap[4]
    uint64_t size       # bytes requested from the heap for this block
    uint64_t qprev      # SIEVE queue links (towards the older / newer entry); derived, rebuilt by repair
    uint64_t qnext
    uint64_t visited    # unused since version 3 (the visited bit lives in the slot: readers never write a block)


cdef inline uint64_t r64(uint64_t n) noexcept nogil:
    return (n + 63) & ~(<uint64_t>63)
