# C entry points of pool_alloc.SegmentHeap for other compiled cores, handed over in a PyCapsule by
# ``pool_alloc.heap_api()`` (cross-module cimport of cdef classes does not work in this layout). Only a struct of
# function pointers lives here, so cimporting it generates no runtime import.
from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #define SZ_HEAP_API_NAME "sutazai_hwopt._native.pool_alloc.heap_api"
    """
    const char *HEAP_API_NAME "SZ_HEAP_API_NAME"

ctypedef struct heap_api_t:
    void *heap_type                                            # the SegmentHeap type: check before any call
    int (*acquire)(object heap) except -1                      # the robust lock (re-entrant; recovers)
    int (*release)(object heap) except -1
    uint64_t (*alloc_locked)(object heap, uint64_t n) except? 0    # caller holds the lock; PoolExhaustedError
    int (*free_locked)(object heap, uint64_t offset) except -1     # caller holds the lock
    uint64_t (*try_alloc_locked)(object heap, uint64_t n) except? 0  # as alloc_locked, 0 (no error) when full
    int (*try_acquire)(object heap) except -1                  # 1: the lock is held now; 0: busy, nothing held
