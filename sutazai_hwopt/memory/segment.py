"""Named POSIX shared-memory segments for pools: create (mode 0600), attach, list, close and unlink.

Built on :mod:`multiprocessing.shared_memory` (the standard library's wrapper of ``shm_open`` + ``mmap``) with
two fixes for Python < 3.13:

* its resource tracker registers every segment a process *attaches* to and unlinks it when that process exits
  (bpo-39959), which destroys a pool under everyone else's feet. We unregister right after opening (3.13+
  passes ``track=False``). The segments' lifetime is therefore explicit: ``destroy_pool`` unlinks them.
* ``SharedMemory.close()`` raises ``BufferError`` while numpy arrays still view the mapping; :func:`close_quietly`
  drops our reference instead, and the mapping goes away with the last view.
"""

from __future__ import annotations

import os
import re
import sys
from multiprocessing import resource_tracker, shared_memory

from ..errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, PoolExhaustedError

__all__ = [
    "SHM_DIR",
    "attach_segment",
    "close_quietly",
    "create_segment",
    "list_segments",
    "segment_name",
    "unlink_segment",
    "validate_name",
]

SHM_DIR = "/dev/shm"
PREFIX = "sutazai_hwopt"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TRACK_KW = sys.version_info >= (3, 13)


def validate_name(kind: str, value: object) -> str:
    """Check a namespace or pool id: 1-64 characters of ``[A-Za-z0-9_-]`` (they become part of a file name)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidArgumentError(
            f"{kind} must be 1-64 characters of letters, digits, '_' or '-', got {value!r}")
    return value


def segment_name(namespace: str, pool_id: str) -> str:
    """The shm name of a pool's segment (``sutazai_hwopt.<namespace>.<pool_id>``)."""
    return f"{PREFIX}.{namespace}.{pool_id}"


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python < 3.13 registers attached segments too; unregister so our exit never unlinks a shared pool.
    if not _TRACK_KW:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


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
    kwargs = {"track": False} if _TRACK_KW else {}
    try:
        shm = shared_memory.SharedMemory(name=name, create=True, size=size, **kwargs)
    except FileExistsError:
        raise AlreadyExistsError(f"shared-memory segment {name!r} already exists") from None
    _untrack(shm)
    return shm


def attach_segment(name: str) -> shared_memory.SharedMemory:
    """Map an existing segment without letting this process's exit unlink it.

    Raises:
        NotFoundError: no segment of that name.
    """
    kwargs = {"track": False} if _TRACK_KW else {}
    try:
        shm = shared_memory.SharedMemory(name=name, create=False, **kwargs)
    except FileNotFoundError:
        raise NotFoundError(f"no shared-memory segment {name!r}") from None
    _untrack(shm)
    return shm


def unlink_segment(name: str) -> bool:
    """Remove the segment's name (mappings stay valid until closed). Returns False if it was already gone."""
    from _posixshmem import shm_unlink  # the same call SharedMemory.unlink makes, minus the tracker message

    try:
        shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def list_segments(namespace: str) -> list[str]:
    """Pool ids with a segment of ``namespace`` in ``/dev/shm``."""
    prefix = f"{PREFIX}.{namespace}."
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix))


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
