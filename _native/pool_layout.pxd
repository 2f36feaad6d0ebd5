# Shared layout of a pool segment: header, chunk and slab structures, and the robust mutex externs.
# Only structs, externs, constants and `cdef inline` helpers live here (no runtime import is generated).
#
# Segment:  [ header (hdr_t + slab-window bitmap, header_size bytes) | meta area (owner's tables) | heap ]
# Heap:     a sequence of chunks, each starting with a 64-byte chunk_t; `word` = size | state, written with
#           one aligned 8-byte store so that a walk of the heap is valid at every instant (crash consistency).
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    enum:
        CLOCK_REALTIME
    int clock_gettime(int clk, timespec *tp)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    enum:
        PTHREAD_PROCESS_SHARED
        PTHREAD_MUTEX_ROBUST
        PTHREAD_MUTEX_ERRORCHECK
    int pthread_mutexattr_init(pthread_mutexattr_t *attr)
    int pthread_mutexattr_destroy(pthread_mutexattr_t *attr)
    int pthread_mutexattr_setpshared(pthread_mutexattr_t *attr, int pshared)
    int pthread_mutexattr_setrobust(pthread_mutexattr_t *attr, int robust)
    int pthread_mutexattr_settype(pthread_mutexattr_t *attr, int kind)
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_timedlock(pthread_mutex_t *m, const timespec *abstime)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_consistent(pthread_mutex_t *m)

# "SZHWPOOL" little-endian.
cdef enum:
    POOL_VERSION = 2           # 2: size classes 768 and 1536 added (a version-1 segment numbers its classes differently)
    ALIGN = 64
    CHUNK_HDR = 64
    SLAB_SPAN = 65536          # a slab is exactly one 64 KiB window of the heap
    SLAB_SLOTS_OFF = 192       # chunk header (64) + slot bitmap (128)
    SLAB_BITMAP_WORDS = 16     # 1024 bits >= (65536 - 192) / 64 slots
    N_CLASSES = 8              # 64, 128, 256, 512, 768, 1024, 1536, 2048 (at most 1/3 of a slot wasted above 512)
    SMALL_MAX = 2048
    N_BINS = 64
    HDR_FIXED = 1024           # the slab-window bitmap starts here
    ST_FREE = 1
    ST_USED = 2
    ST_SLAB = 3
    STATE_MASK = 63
    FLAG_FENCED = 1

cdef extern from *:
    """
    #define SZ_POOL_MAGIC 0x4C4F4F5057485A53ULL
    #define SZ_CHUNK_TAG 0xC4A11C00U
    #define SZ_GOLD 0x9E3779B97F4A7C15ULL
    #define SZ_MIX1 0xBF58476D1CE4E5B9ULL
    #define SZ_MIX2 0x94D049BB133111EBULL
    """
    const uint64_t POOL_MAGIC "SZ_POOL_MAGIC"
    const uint32_t CHUNK_TAG "SZ_CHUNK_TAG"
    const uint64_t SZ_GOLD
    const uint64_t SZ_MIX1
    const uint64_t SZ_MIX2

ctypedef struct hdr_t:
    uint64_t magic
    uint32_t version
    uint32_t header_size
    uint64_t segment_size
    uint64_t meta_off
    uint64_t meta_size
    uint64_t heap_off
    uint64_t heap_size
    uint64_t nwin
    uint64_t geom_check
    uint64_t flags
    uint64_t recoveries
    uint64_t mutex_size
    uint64_t pad0[4]
    uint8_t mutex_space[128]           # offset 128: the process-shared robust pthread mutex
    uint64_t bin_head[64]              # offset 256: segregated free lists (offset of first chunk, 0 = empty)
    uint64_t bin_bitmap
    uint64_t partial[8]                # slabs of each class that have a free slot
    uint64_t n_large
    uint64_t large_bytes
    uint64_t n_small
    uint64_t small_bytes
    uint64_t n_slabs

ctypedef struct chunk_t:
    uint64_t word        # size | state
    uint64_t prev_size   # size of the chunk before (0 for the first); derived, rebuilt by repair
    uint64_t next        # free-list / partial-slab list link (segment offset; 0 = none); derived
    uint64_t prev
    uint64_t req         # large: requested bytes; slab: class index
    uint32_t tag         # CHUNK_TAG ^ (offset >> 6): catches frees of offsets we never returned
    uint32_t nfree       # slab: free slots; derived
    uint64_t pad[2]

cdef inline uint64_t mix64(uint64_t h, uint64_t v) nogil:
    # splitmix64 finaliser folded over the fields: a cheap integrity tag for the immutable geometry.
    h ^= v + SZ_GOLD + (h << 6) + (h >> 2)
    h ^= h >> 30
    h *= SZ_MIX1
    h ^= h >> 27
    h *= SZ_MIX2
    h ^= h >> 31
    return h

cdef inline uint64_t geometry_check(hdr_t *h) nogil:
    cdef uint64_t g = 0x5A5A
    g = mix64(g, h.magic)
    g = mix64(g, h.version)
    g = mix64(g, h.header_size)
    g = mix64(g, h.segment_size)
    g = mix64(g, h.meta_off)
    g = mix64(g, h.meta_size)
    g = mix64(g, h.heap_off)
    g = mix64(g, h.heap_size)
    g = mix64(g, h.nwin)
    return g
