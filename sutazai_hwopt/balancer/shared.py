"""Optional state shared by the balancers of every agent process on a host: ejections and outstanding counts.

One shared-memory segment (:mod:`sutazai_hwopt.shm`: mode 0600, checked to be ours on attach) holds a small table of
64-bit words, updated with atomic operations from the compiled core (``AtomicWords``), so no lock is held
on the request path and a killed process cannot leave a lock behind::

    word 0  magic            word 1  layout version      word 2  number of slots
    word 3  ejection version (bumped on every published ejection)   words 4-7 reserved
    slot s (words 8+4s .. 8+4s+3): id hash (0 = free), ejected-until (ns of the balancers' clock),
                                   outstanding requests summed over processes, reserved

Slots are found by open addressing on the XXH64 of the service id and never freed (the table is small and
append-only); claiming a free slot is the only step that takes a lock, an ``flock`` on the segment's file,
which the kernel releases if its holder dies. When one process ejects a backend it stores the ejection's
end and bumps the version; every other balancer notices the new version on its next selection and ejects
the backend locally until that time, so the host stops sending to it after one process saw it fail.
Before each selection a sharing balancer also reads every backend's host-wide outstanding count and gives the
algorithms the other processes' share as ``Backend.extra``: adaptive, least-connections and P2C then balance
on the host-wide load instead of their own ~1/n sample of it.

Limits: the balancers must share a clock (``time.monotonic`` is host-wide on Linux); a process killed
with requests in flight leaves its share of ``outstanding`` counted (``reset_outstanding`` clears it); a
balancer with ``shared`` set takes the Python selection path (the compiled fast path skips sharing), and
reading the counts costs O(backends) per selection.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable

from .._native.balancer_core import AtomicWords
from ..errors import IncompatibleLayoutError, InvalidArgumentError, PoolExhaustedError
from ..logs import get_logger
from ..shm import Segment, attach_segment, close_quietly, create_segment, segment_name, unlink_segment, validate_name

__all__ = ["SharedState"]

log = get_logger("balancer")

MAGIC = 0x48574F50544C4231  # "HWOPTLB1"
LAYOUT_VERSION = 1
HEADER_WORDS = 8
SLOT_WORDS = 4
_VERSION = 3
_EJECT = 1
_OUT = 2


def _hash(service_id: str) -> int:
    import xxhash

    h = xxhash.xxh64_intdigest(service_id.encode()) & 0x7FFFFFFFFFFFFFFF
    return h or 1


class SharedState:
    """A handle on the host-wide table; pass it as ``DynamicLoadBalancer(shared=...)`` in each process.

    Create it once (``SharedState.create(name)``), attach from the other processes (``SharedState.attach``),
    ``close()`` in every process and ``unlink()`` once at the end.

    Example:
        >>> s = SharedState.create("doctest_lb")
        >>> s.add_outstanding("agent_001", 1)
        1
        >>> s.close(); s.unlink()
    """

    def __init__(self, shm: Segment, owner: bool, table: str) -> None:
        self._shm = shm
        self._owner = owner
        self._words = AtomicWords(shm.buf)
        self._slots: dict[str, int] = {}
        self.nslots = 0
        self.name = table
        self.segment_name = shm.name

    @classmethod
    def create(cls, name: str, slots: int = 1024) -> SharedState:
        """Create the table ``name`` (a namespace-like name) with room for ``slots`` backends.

        Raises:
            AlreadyExistsError: this user already has a table of that name.
        """
        validate_name("balancer table name", name)
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1 << 20:
            raise InvalidArgumentError(f"slots must be an integer in 1..{1 << 20}, got {slots!r}")
        shm = create_segment(segment_name(name, "lb", "table"), 8 * (HEADER_WORDS + SLOT_WORDS * slots))
        self = cls(shm, owner=True, table=name)
        w = self._words
        w.store(1, LAYOUT_VERSION)
        w.store(2, slots)
        w.store(0, MAGIC)
        self.nslots = slots
        return self

    @classmethod
    def attach(cls, name: str) -> SharedState:
        """Attach to an existing table (checked to be ours, then for our magic and layout version).

        Raises:
            NotFoundError: no table of that name. TrustError: the segment is not this user's (never read).
        """
        validate_name("balancer table name", name)
        shm = attach_segment(segment_name(name, "lb", "table"))
        self = cls(shm, owner=False, table=name)
        w = self._words
        if w.nwords < HEADER_WORDS or w.load(0) != MAGIC or w.load(1) != LAYOUT_VERSION:
            self.close()
            raise IncompatibleLayoutError(f"shared segment {name!r} is not a balancer table of layout "
                                          f"{LAYOUT_VERSION}")
        self.nslots = w.load(2)
        if w.nwords < HEADER_WORDS + SLOT_WORDS * self.nslots:
            self.close()
            raise IncompatibleLayoutError(f"shared segment {name!r} is shorter than its {self.nslots} slots")
        return self

    def close(self) -> None:
        """Unmap the segment in this process (idempotent)."""
        if self._words is not None:
            self._words.release()
            self._words = None  # type: ignore[assignment]
            close_quietly(self._shm)

    def unlink(self) -> None:
        """Remove the segment name (once, by one process)."""
        unlink_segment(self._shm.name)

    # ---------------------------------------------------------------------------------------------- slots
    def slot(self, service_id: str) -> int:
        """The word index of ``service_id``'s slot, claimed on first use."""
        s = self._slots.get(service_id)
        if s is not None:
            return s
        h = _hash(service_id)
        w = self._words
        n = self.nslots
        for locked in (False, True):
            if locked:
                fcntl.flock(self._shm.fileno(), fcntl.LOCK_EX)
            try:
                for k in range(n):
                    base = HEADER_WORDS + SLOT_WORDS * ((h + k) % n)
                    cur = w.load(base)
                    if cur == h:
                        self._slots[service_id] = base
                        return base
                    if cur == 0:
                        if not locked:
                            break  # claim under the lock
                        w.store(base, h)
                        self._slots[service_id] = base
                        return base
            finally:
                if locked:
                    fcntl.flock(self._shm.fileno(), fcntl.LOCK_UN)
        raise PoolExhaustedError(f"shared balancer table {self.name!r} has no free slot of {n} for "
                                 f"{service_id!r}")

    # ------------------------------------------------------------------------------------- published data
    @property
    def version(self) -> int:
        """Bumped on every published ejection."""
        return self._words.load(_VERSION)

    def publish_ejection(self, service_id: str, until: float) -> None:
        """Tell every process that ``service_id`` is ejected until ``until`` (balancer clock seconds)."""
        base = self.slot(service_id)
        self._words.store(base + _EJECT, int(until * 1e9))
        self._words.add(_VERSION, 1)

    def ejected_until(self, service_id: str) -> float:
        """End of the latest published ejection of ``service_id`` (0.0 if none)."""
        return self._words.load(self.slot(service_id) + _EJECT) / 1e9

    def add_outstanding(self, service_id: str, delta: int) -> int:
        """Atomically add ``delta`` to the host-wide outstanding count of ``service_id``; returns it."""
        return self._words.add(self.slot(service_id) + _OUT, delta)

    def outstanding(self, service_id: str) -> int:
        """Requests in flight on ``service_id`` summed over every process."""
        return self._words.load(self.slot(service_id) + _OUT)

    def outstanding_many(self, service_ids: list[str]) -> list[int]:
        """Host-wide outstanding counts of several backends in one compiled call."""
        return self._words.gather([self.slot(s) + _OUT for s in service_ids])

    def reset_outstanding(self, service_id: str) -> None:
        """Zero a count left behind by a killed process."""
        self._words.store(self.slot(service_id) + _OUT, 0)

    def ejections_after(self, service_ids: Iterable[str], now: float) -> tuple[int, list[tuple[str, float]]]:
        """The ejection version and the published ejections of ``service_ids`` that end after ``now``.

        The version is read before the slots, so an ejection published during the scan bumps it again and
        is seen on the next call. The balancer adopts the ejections and keeps the version (one handle may
        serve several balancers).
        """
        version = self.version
        out = []
        for sid in service_ids:
            until = self.ejected_until(sid)
            if until > now:
                out.append((sid, until))
        return version, out
