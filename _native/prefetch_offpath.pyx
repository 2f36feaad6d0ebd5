# cython: auto_pickle=False
# The prefetch governor's off path (cache/prefetch.py, PrefetchGovernor): what runs on the caller's thread for
# every access while the Markov model is off. In Python it was a bound-method call with a frame, a counter, a
# comparison and a dict store (~0.3-0.5 µs per access on the shared host, ~2.7x an L1 hit). Here the call is a
# vectorcall into C, and the counter, the comparison, the dict store and the sampled sketch update (one access
# in ~16) run without a Python frame; Python is called back only at each window end, where the governor decides.
#
# The same decisions as the Python path it replaces, bit for bit: the same strides (the governor passes its
# list), the same sketch (a dict in insertion order; when full the oldest entry, the first PyDict_Next
# returns, is evicted, as ``del d[next(iter(d))]`` did), the same ``==`` between keys.
#
# Self-contained: no cimport of other cores (see the project's build rules).

cimport cython
from cpython.dict cimport PyDict_Next
from cpython.ref cimport PyObject
from libc.stdlib cimport free, malloc


cdef class OffPath:
    """Counts accesses, remembers each agent's last key, samples (previous key, key) pairs into a sketch.

    ``observe(agent, key, miss)`` is the governor's ``observe`` while it is off. ``window(n)`` (the governor's
    decision) is called when the access count ``n`` reaches ``window_end``; it may switch the governor's state,
    move ``window_end`` and reset the counts. The attributes are the governor's state, read and written by it.
    """

    cdef public long long n
    cdef public long long next_sample
    cdef public long long window_end
    cdef public long long sampled
    cdef public long long known
    cdef public long long repeats
    cdef public long long miss_repeats
    cdef public Py_ssize_t sketch_size
    cdef readonly dict last
    cdef readonly dict sketch
    cdef public object window
    cdef long long *strides
    cdef Py_ssize_t n_strides
    cdef Py_ssize_t stride_i

    def __cinit__(self):
        self.strides = NULL
        self.n_strides = 0

    def __init__(self, list strides, Py_ssize_t sketch_size, long long window_end, object window):
        cdef Py_ssize_t i
        if not strides:
            raise ValueError("strides must not be empty")
        free(self.strides)
        self.strides = NULL
        self.n_strides = 0
        self.strides = <long long *>malloc(len(strides) * sizeof(long long))
        if self.strides == NULL:
            raise MemoryError()
        for i in range(len(strides)):
            self.strides[i] = strides[i]
        self.n_strides = len(strides)
        self.stride_i = 0
        self.sketch_size = sketch_size
        self.window_end = window_end
        self.window = window
        self.last = {}
        self.sketch = {}

    def __dealloc__(self):
        free(self.strides)

    def observe(self, object agent, object key, bint miss):
        """One access of ``agent`` to ``key`` (``miss``: it missed every level)."""
        cdef long long n = self.n + 1
        self.n = n
        if n >= self.next_sample or n >= self.window_end:
            self._slow(agent, key, miss, n)
        self.last[agent] = key

    @cython.cdivision(True)
    cdef int _slow(self, object agent, object key, bint miss, long long n) except -1:
        cdef object prev, ent
        cdef PyObject *oldest
        cdef PyObject *unused
        cdef Py_ssize_t pos = 0
        cdef dict sketch = self.sketch
        cdef list s
        if self.n_strides == 0 or sketch is None or self.last is None:
            raise ValueError("OffPath.__init__ was not called")
        if n >= self.next_sample:
            prev = self.last.get(agent)
            if prev is not None:
                self.sampled += 1
                ent = sketch.get(prev)
                if ent is None:
                    if len(sketch) >= self.sketch_size and PyDict_Next(sketch, &pos, &oldest, &unused):
                        del sketch[<object>oldest]
                    sketch[prev] = [key, 0]
                else:
                    self.known += 1
                    s = <list>ent
                    if s[0] == key:
                        self.repeats += 1
                        self.miss_repeats += miss
                        s[1] = s[1] + 1
                    else:
                        s[0] = key
                        s[1] = 0
            self.stride_i = (self.stride_i + 1) % self.n_strides
            self.next_sample = n + self.strides[self.stride_i]
        if n >= self.window_end:
            self.window(n)
        return 0
