"""Named POSIX shared-memory segments for pools: create (mode 0600), attach, list, close and unlink.

Built on :mod:`multiprocessing.shared_memory` (the standard library's wrapper of ``shm_open`` + ``mmap``) with
two fixes for Python < 3.13:

* its resource tracker registers every segment a process *attaches* to and unlinks it when that process exits
  (bpo-39959), which destroys a pool under everyone else's feet. We keep our segments out of the tracker
  (3.13+: ``track=False``; before: registration skipped while the constructor runs, see :func:`_open`). The
  segments' lifetime is therefore explicit: ``destroy_pool`` unlinks them.
* ``SharedMemory.close()`` raises ``BufferError`` while numpy arrays still view the mapping; :func:`close_quietly`
  drops our reference instead, and the mapping goes away with the last view.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import Any

from ..errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, PoolExhaustedError

__all__ = [
    "COUNTERS",
    "SHM_DIR",
    "attach_segment",
    "close_quietly",
    "create_segment",
    "list_segment_names",
    "list_segments",
    "segment_name",
    "unlink_segment",
    "validate_name",
]

SHM_DIR = "/dev/shm"
PREFIX = "sutazai_hwopt"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TRACK_KW = sys.version_info >= (3, 13)

#: Segments this process created, attached and unlinked (tests check that created == unlinked afterwards).
COUNTERS = {"created": 0, "attached": 0, "unlinked": 0}


def validate_name(kind: str, value: object) -> str:
    """Check a namespace or pool id: 1-64 characters of ``[A-Za-z0-9_-]`` (they become part of a file name)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidArgumentError(
            f"{kind} must be 1-64 characters of letters, digits, '_' or '-', got {value!r}")
    return value


def segment_name(namespace: str, pool_id: str) -> str:
    """The shm name of a pool's segment (``sutazai_hwopt.<namespace>.<pool_id>``)."""
    return f"{PREFIX}.{namespace}.{pool_id}"


_REGISTER_LOCK = threading.Lock()


def _open(**kwargs: Any) -> shared_memory.SharedMemory:
    """``SharedMemory(**kwargs)`` that never registers with the resource tracker.

    On 3.13+ that is ``track=False``. Before, ``SharedMemory.__init__`` always calls
    ``resource_tracker.register``; unregistering afterwards (the usual workaround) leaves a window in which a
    SIGKILL makes the tracker unlink the pool later, makes concurrent attaches from forked children (which share
    one tracker) print ``KeyError`` tracebacks, and starts a tracker process in every agent. So for the duration
    of the constructor (under a lock) the registration of ``shared_memory`` resources is skipped instead.
    """
    if _TRACK_KW:
        return shared_memory.SharedMemory(track=False, **kwargs)  # type: ignore[call-arg,unused-ignore]
    with _REGISTER_LOCK:
        original = resource_tracker.register

        def register(name: Any, rtype: str) -> None:
            if rtype != "shared_memory":
                original(name, rtype)

        resource_tracker.register = register
        try:
            return shared_memory.SharedMemory(**kwargs)
        finally:
            resource_tracker.register = original


def create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """Create a new segment of ``size`` bytes, mode 0600, not tracked by the resource tracker.

    Raises:
        AlreadyExistsError: a segment of that name exists.
        PoolExhaustedError: ``/dev/shm`` has less free space than ``size`` (touching it would raise SIGBUS).
    """
    try:
        st = os.statvfs(SHM_DIR)
        avail = st.f_bavail * st.f_frsize
    except OSError:
        avail = None
    if avail is not None and size > avail:
        raise PoolExhaustedError(
            f"size {size} exceeds the {avail} bytes free in {SHM_DIR}; using it would end in SIGBUS")
    try:
        shm = _open(name=name, create=True, size=size)
    except FileExistsError:
        raise AlreadyExistsError(f"shared-memory segment {name!r} already exists") from None
    COUNTERS["created"] += 1
    return shm


def attach_segment(name: str) -> shared_memory.SharedMemory:
    """Map an existing segment without letting this process's exit unlink it.

    Raises:
        NotFoundError: no segment of that name.
    """
    try:
        shm = _open(name=name, create=False)
    except FileNotFoundError:
        raise NotFoundError(f"no shared-memory segment {name!r}") from None
    COUNTERS["attached"] += 1
    return shm


def unlink_segment(name: str) -> bool:
    """Remove the segment's name (mappings stay valid until closed). Returns False if it was already gone."""
    from _posixshmem import shm_unlink  # the same call SharedMemory.unlink makes, minus the tracker message

    try:
        shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    COUNTERS["unlinked"] += 1
    return True


def list_segment_names(namespace: str) -> list[str]:
    """Every segment name of ``namespace`` in ``/dev/shm`` (pools' primary and extension segments)."""
    prefix = f"{PREFIX}.{namespace}."
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def list_segments(namespace: str) -> list[str]:
    """Pool ids of ``namespace`` (from their primary segments in ``/dev/shm``)."""
    prefix = f"{PREFIX}.{namespace}."
    return [n[len(prefix):] for n in list_segment_names(namespace) if "." not in n[len(prefix):]]


def close_quietly(shm: shared_memory.SharedMemory) -> bool:
    """Close our mapping; if numpy arrays still view it, drop our reference instead (they keep it alive).

    Returns True when the mapping was closed now.
    """
    try:
        shm.close()
        return True
    except BufferError:
        shm._mmap = None  # type: ignore[attr-defined]  # unmapped when the last exported view dies
        fd = getattr(shm, "_fd", -1)
        if fd >= 0:
            os.close(fd)
            shm._fd = -1  # type: ignore[attr-defined]
        return False
