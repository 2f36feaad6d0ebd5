# The compiled front of IntelligentCacheSystem.get (included by shmcache_index.pyx; it reads ShmIndex's epoch
# stripes directly): an L1 hit is one call from the public method, with no lock and no Python glue.

from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

import weakref

cdef object _NOT_READ = object()

cdef enum:
    NLEVELS = 4
    KEY_MEMO = 65536


cdef class AgentStats:
    """The counters of one agent in this process.

    Every update is one compiled call made while holding the GIL, so the counts stay exact with any number of
    threads and without a lock (``gets == sum(hits) + misses`` holds in every snapshot :meth:`as_dict` takes).
    """

    cdef unsigned long long gets, misses, puts, loads
    cdef unsigned long long hits[NLEVELS]

    def __cinit__(self):
        self.gets = self.misses = self.puts = self.loads = 0
        memset(self.hits, 0, sizeof(self.hits))

    def record(self, int level):
        """Count one get: a hit at level index ``level`` (0 = L1 .. 3 = remote), or a miss when -1."""
        self.gets += 1
        if 0 <= level < NLEVELS:
            self.hits[level] += 1
        else:
            self.misses += 1

    def count_put(self):
        """Count one put."""
        self.puts += 1

    def count_load(self):
        """Count one value loaded by ``get_or_load``."""
        self.loads += 1

    def as_dict(self, tuple levels):
        """``{"gets", "hits": {level: n}, "misses", "puts", "loads"}`` (``levels`` names the 4 indices)."""
        cdef int i
        return {"gets": self.gets, "hits": {levels[i]: self.hits[i] for i in range(NLEVELS)},
                "misses": self.misses, "puts": self.puts, "loads": self.loads}


cdef class TieredFront:
    """The L1-hit path of an ``IntelligentCacheSystem``, compiled.

    ``get(key, agent_id, default)`` serves a key whose tagged bytes and hash it memoised (exact ``str``,
    ``bytes`` and ``int`` keys the system has seen), for an agent the system already registered, from L1 when
    the entry's epoch still equals its L2 stripe's; everything else — first sight of a key or agent, an L1
    miss, a stale entry, a pending prefetch mark, a closed front — goes to ``slow(key, agent_id, default[,
    entry])``, passing the L1 entry when L1 was already read so L1 is never consulted twice for one get.
    """

    cdef object l1_get
    cdef ShmIndex index
    cdef dict keys
    cdef dict agents
    cdef object slow
    cdef object after
    cdef object owner
    cdef object marks
    cdef object miss
    cdef public bint closed

    def __init__(self, object owner, object l1_get, object index, dict keys, dict agents, object slow,
                 object after, object marks, object miss):
        """``owner``: the system (held weakly: the system holds the front, so no reference cycle keeps it alive);
        ``slow``: a function called with the owner first; ``l1_get``: the L1 ``Cache.get`` or None; ``index``: L2's ShmIndex or None; ``keys``: the memo of
        :meth:`remember` (the system's Python path reads it too); ``agents``: the system's dict of
        :class:`AgentStats`; ``after``: the prefetch governor (its current ``observe(agent_id, key_bytes, miss)``
        is called after each hit, straight from here: it is rebound when the governor changes state), or None;
        ``marks``: a sized container (prefetched keys) whose non-emptiness sends hits to ``slow``; ``miss``: the
        sentinel ``l1_get`` returns for a missing key."""
        self.l1_get = l1_get
        self.index = index
        self.keys = keys
        self.agents = agents
        self.slow = slow
        self.owner = weakref.ref(owner)
        self.after = after
        self.marks = marks
        self.miss = miss
        self.closed = False

    def remember(self, object key, bytes kb, uint64_t h):
        """Memoise the tagged bytes and hash of an exact str / bytes / int key (bounded; forgotten in bulk)."""
        cdef type t = type(key)
        if t is str or t is bytes or t is int:
            if len(self.keys) >= KEY_MEMO:
                self.keys.clear()
            self.keys[key] = (kb, h)

    def get(self, object key, object agent_id="default", object default=None):
        """Like ``IntelligentCacheSystem.get``."""
        cdef type t = type(key)
        cdef PyObject *memo
        cdef PyObject *st
        cdef object ent, kb
        cdef uint64_t h
        cdef ShmIndex idx
        if self.closed or self.l1_get is None or type(agent_id) is not str or not (
                t is str or t is bytes or t is int):
            return self._slow(key, agent_id, default, _NOT_READ)
        memo = PyDict_GetItem(self.keys, key)
        st = PyDict_GetItem(self.agents, agent_id)
        if memo == NULL or st == NULL or len(self.marks):
            return self._slow(key, agent_id, default, _NOT_READ)
        kb = <object>PyTuple_GET_ITEM(<object>memo, 0)
        h = <object>PyTuple_GET_ITEM(<object>memo, 1)
        ent = self.l1_get(kb, self.miss)
        if ent is self.miss or type(ent) is not tuple or PyTuple_GET_SIZE(ent) != 2:
            return self._slow(key, agent_id, default, ent)
        idx = self.index
        if idx is not None:
            if idx.base == NULL or idx.stripes[h & (idx.ih.nstripes - 1)] != <uint64_t>(
                    <object>PyTuple_GET_ITEM(ent, 1)):
                return self._slow(key, agent_id, default, ent)
        (<AgentStats>st).gets += 1
        (<AgentStats>st).hits[0] += 1
        if self.after is not None:
            self.after.observe(agent_id, kb, False)
        return (<object>PyTuple_GET_ITEM(ent, 0), "L1")

    cdef object _owner(self):
        cdef object o = self.owner()
        if o is None:
            raise StateError("the cache system is closed")
        return o

    cdef object _slow(self, object key, object agent_id, object default, object ent):
        if ent is _NOT_READ:      # L1 not read: the slow path reads it
            return self.slow(self._owner(), key, agent_id, default)
        return self.slow(self._owner(), key, agent_id, default, ent)
