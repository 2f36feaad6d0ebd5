"""Optional state shared by the balancers and backends of every agent process on a host: ejections, outstanding
counts, half-open probe claims and the load the backends publish themselves.

One shared-memory segment (:mod:`sutazai_hwopt.shm`: mode 0600, checked to be ours on attach) holds a small table of
64-bit words, updated with atomic operations from the compiled core (``AtomicWords``), so no lock is held
on the request path and a killed process cannot leave a lock behind::

    word 0  magic            word 1  layout version (2)  word 2  number of slots
    word 3  ejection version (bumped on every published ejection)   words 4-7 reserved
    slot s (words 8+16s .. 8+16s+15): id hash (0 = free), ejected-until (ns of the balancers' clock),
        outstanding requests summed over the balancer processes, probe claimed until (ns), and the
        reporter's words: pid, process start time, in flight, queued, service time EWMA fast / slow (ns),
        completed, failed, consecutive failures, workers; then the balancers' outstanding work (requests
        weighted by their type's learned cost, x 1024); 1 reserved

The word offsets are defined once, in ``_native/balancer_layout.pxi`` (exposed as ``SHARED_LAYOUT``).

Slots are found by open addressing on the XXH64 of the service id and never freed (the table is small and
append-only); claiming a free slot is the only step that takes a lock, an ``flock`` on the segment's file,
which the kernel releases if its holder dies. When one process ejects a backend it stores the ejection's
end and bumps the version; every other balancer notices the new version on its next selection and ejects
the backend locally until that time, so the host stops sending to it after one process saw it fail.
Before each selection a sharing balancer also reads every backend's host-wide outstanding count and gives the
algorithms the other processes' share as ``Backend.extra``: adaptive, least-connections and P2C then balance
on the host-wide load instead of their own ~1/n sample of it.

A backend that embeds :class:`~.reporter.Reporter` publishes its own in-flight count, queue and service time
into its slot; a balancer uses them while the reporter's process (pid + start time) is alive, checked once per
health-check interval (see docs/balancer.md). Half-open probes are claimed through the probe word with a
compare-and-swap, so at most one real request per host probes an ejected backend at a time.

Limits: the balancers must share a clock (``time.monotonic`` is host-wide on Linux); a process killed
with requests in flight leaves its share of ``outstanding`` counted (``reset_outstanding`` clears it; the
reporter's own in-flight count, when one publishes, is the truth and is preferred when larger).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterable
from typing import Any

from .._native.balancer_core import SHARED_LAYOUT, AtomicWords, Backend, shared_begin, shared_end, shared_view
from ..errors import (
    AlreadyExistsError,
    IncompatibleLayoutError,
    InvalidArgumentError,
    NotFoundError,
    PoolExhaustedError,
)
from ..logs import get_logger
from ..procid import is_same_process
from ..shm import Segment, attach_segment, close_quietly, create_segment, segment_name, unlink_segment, validate_name

__all__ = ["SharedState"]

log = get_logger("balancer")

MAGIC = 0x48574F50544C4231  # "HWOPTLB1"
LAYOUT_VERSION: int = SHARED_LAYOUT["LAYOUT_VERSION"]
HEADER_WORDS: int = SHARED_LAYOUT["HEADER_WORDS"]
SLOT_WORDS: int = SHARED_LAYOUT["SLOT_WORDS"]
_VERSION = SHARED_LAYOUT["H_VERSION"]
_EJECT = SHARED_LAYOUT["S_EJECT"]
_OUT = SHARED_LAYOUT["S_OUT"]
_PROBE = SHARED_LAYOUT["S_PROBE"]
_PID = SHARED_LAYOUT["S_PID"]
_START = SHARED_LAYOUT["S_START"]
#: published figure name -> word offset in a slot (what :meth:`SharedState.published` returns)
_FIGURES = {name: SHARED_LAYOUT["S_" + name.upper()] for name in
            ("infl", "queue", "svc", "svc_base", "done", "fails", "fail_run", "workers")}


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

    @classmethod
    def open(cls, name: str, slots: int = 1024) -> SharedState:
        """Attach to the table ``name``, creating it if this user has none (what a namespace's balancers do).

        Safe when several processes race: the loser of the creation attaches to the winner's table.
        """
        for _ in range(3):
            try:
                return cls.attach(name)
            except NotFoundError:
                pass
            try:
                return cls.create(name, slots)
            except AlreadyExistsError:
                continue                 # created between our attach and our create: attach to it
        return cls.attach(name)

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

    # ------------------------------------------------------------------------------------- probe claims
    def claim_probe(self, service_id: str, now: float, hold_s: float) -> float:
        """Claim the right to send the one half-open probe of ``service_id`` for ``hold_s`` seconds.

        Returns 0.0 if this caller now holds the claim, else the time (balancer clock) until which the caller
        must keep the backend out: the end of a newer published ejection, or of another process's claim.
        The claim is one compare-and-swap on the slot's probe word, so two processes never both win it; a
        prober that dies loses it when ``hold_s`` is up.
        """
        base = self.slot(service_id)
        w = self._words
        now_ns = int(now * 1e9)
        ejected = w.load(base + _EJECT)
        if ejected > now_ns:
            return ejected / 1e9
        cur = w.load(base + _PROBE)
        if cur > now_ns:
            return cur / 1e9
        if w.cas(base + _PROBE, cur, now_ns + max(1, int(hold_s * 1e9))):
            return 0.0
        return max(w.load(base + _PROBE), now_ns + 1) / 1e9

    def release_probe(self, service_id: str) -> None:
        """End this process's probe claim (the probe's answer is in: success or a new ejection published)."""
        self._words.store(self.slot(service_id) + _PROBE, 0)

    # --------------------------------------------------------------------------------- published load
    @property
    def words(self) -> AtomicWords:
        """The table's atomic words (the compiled core and the reporter index them by the layout)."""
        return self._words

    def register_reporter(self, service_id: str, pid: int, start_time: int, workers: int) -> int:
        """Make ``pid`` (started at ``start_time``) the reporter of ``service_id``; returns the slot's word.

        The figures are zeroed first and the pid stored last, so a reader never takes an old process's
        figures for the new one's.
        """
        base = self.slot(service_id)
        w = self._words
        w.store(base + _PID, 0)
        for off in _FIGURES.values():
            w.store(base + off, 0)
        w.store(base + _FIGURES["workers"], max(1, int(workers)))
        w.store(base + _START, start_time)
        w.store(base + _PID, pid)
        return base

    def unregister_reporter(self, service_id: str, pid: int) -> None:
        """Stop publishing for ``service_id`` if ``pid`` is still its reporter."""
        base = self.slot(service_id)
        self._words.cas(base + _PID, pid, 0)

    def reporter_live(self, service_id: str) -> bool:
        """Whether a reporter publishes for ``service_id`` and its process (pid + start time) is alive."""
        base = self.slot(service_id)
        pid = self._words.load(base + _PID)
        return pid > 0 and is_same_process(pid, self._words.load(base + _START))

    def published(self, service_id: str) -> dict[str, int] | None:
        """The figures ``service_id``'s live reporter publishes (ns for service times), or None."""
        if not self.reporter_live(service_id):
            return None
        base = self.slot(service_id)
        return {name: self._words.load(base + off) for name, off in _FIGURES.items()}

    def refresh_view(self, backends: list[Any]) -> None:
        """Fill each backend's host-wide view (``extra``, ``xwork``, ``pslow``, ``pworkers``) from its slot."""
        shared_view(backends, self._words)

    def begin_request(self, backend: Backend, cost: float) -> None:
        """Count one request of relative ``cost`` selected on ``backend`` (its ``slot`` set) host-wide."""
        shared_begin(backend, self._words, cost)

    def end_request(self, backend: Backend) -> None:
        """Remove one ended request of ``backend`` (``in_flight`` already decremented) from the host-wide sums."""
        shared_end(backend, self._words)
