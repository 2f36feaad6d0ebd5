"""The shared-memory layer: every segment of the library is named, created, attached, listed and removed here.

Pools (:mod:`sutazai_hwopt.memory`), the cache's shared tiers (:mod:`sutazai_hwopt.cache.shared_index`) and the
balancers' host-wide table (:mod:`sutazai_hwopt.balancer.shared`) all live in POSIX shared memory, files in
``/dev/shm``. This module owns three rules for all of them:

* **Names carry the owner and the kind.** ``sutazai_hwopt.<owner>.<namespace>.<kind>.<id>[.<n>]``, where
  ``<owner>`` is ``u<euid>`` (or ``g<gid>`` for a namespace a group shares on purpose) and ``<kind>`` is one of
  :data:`KINDS`. Two users' namespaces of the same name never collide, a pool can never take a cache tier's name,
  and :func:`list_segments` of one kind never lists another.
* **A segment is trusted by its owner and mode, never by its name.** ``/dev/shm`` is writable by every user, so
  another user may create a name first. :func:`attach_segment` opens the file with ``O_NOFOLLOW``, ``fstat``-s the
  descriptor and refuses (:class:`~sutazai_hwopt.errors.TrustError`) a segment not owned by us or open to others
  before mapping it, so nothing planted is ever read or decoded. :func:`create_segment` creates with ``O_EXCL``
  and mode 0600 (0660 for a group share).
* **No resource tracker.** :mod:`multiprocessing.shared_memory`'s tracker unlinks, at exit, every segment a process
  merely attached to (bpo-39959). :class:`Segment` is a plain ``open`` + ``mmap`` of the file, so a segment's
  lifetime is explicit: its owner unlinks it (``destroy_pool``, ``SharedState.unlink``, ``stop --purge``).

Segments live in ``/dev/shm``; ``ls -l /dev/shm/sutazai_hwopt.u$(id -u).*`` lists a user's own, and
:func:`sutazai_hwopt.testing.throwaway_namespace` or ``rm`` removes them (the kernel frees the memory when the last
process unmaps it).
"""

from __future__ import annotations

import grp
import mmap
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, PoolExhaustedError, TrustError
from .trust import Expect, check_fd

__all__ = [
    "COUNTERS",
    "KINDS",
    "SHM_DIR",
    "Segment",
    "Sharing",
    "attach_segment",
    "close_quietly",
    "create_segment",
    "list_segment_names",
    "list_segments",
    "namespace_prefix",
    "segment_name",
    "share_namespace",
    "sharing_of",
    "unlink_segment",
    "unshare_namespace",
    "validate_name",
]

SHM_DIR = "/dev/shm"
PREFIX = "sutazai_hwopt"
#: What a segment holds: a memory pool, a cache tier, a balancers' table.
Kind = Literal["pool", "cache", "lb"]
KINDS: tuple[str, ...] = ("pool", "cache", "lb")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Segments this process created, attached and unlinked (tests check that created == unlinked afterwards).
COUNTERS = {"created": 0, "attached": 0, "unlinked": 0}


def validate_name(kind: str, value: object) -> str:
    """Check a namespace or pool id: 1-64 characters of ``[A-Za-z0-9_-]`` (they become part of a file name)."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidArgumentError(
            f"{kind} must be 1-64 characters of letters, digits, '_' or '-', got {value!r}")
    return value


# ---- deliberate sharing between users ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Sharing:
    """A namespace shared on purpose by the members of one Unix group (see :func:`share_namespace`)."""

    group: int
    owners: frozenset[int]
    allow_pickle: bool = False


_SHARED: dict[str, Sharing] = {}
_SHARED_LOCK = threading.Lock()


def _system_id(value: int | str, what: str, lookup: Callable[[str], int]) -> int:
    """A uid/gid given as a number or a name (resolved with ``lookup``); InvalidArgumentError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return lookup(value)
        except KeyError:
            raise InvalidArgumentError(f"no {what} named {value!r}") from None
    raise InvalidArgumentError(f"a {what} must be given as a number or a name, got {value!r}")


def _gid(group: int | str) -> int:
    return _system_id(group, "Unix group", lambda name: grp.getgrnam(name).gr_gid)


def _uid(user: int | str) -> int:
    import pwd

    return _system_id(user, "user", lambda name: pwd.getpwnam(name).pw_uid)


def share_namespace(namespace: str, group: int | str, owners: Iterable[int | str] | None = None, *,
                    allow_pickle: bool = False) -> Sharing:
    """Let the users of a Unix group share ``namespace`` in this process (an explicit opt-in; off by default).

    Segments of the namespace are then named after the group (``g<gid>`` instead of ``u<uid>``), created with
    mode 0660 and that group, and attached when their owner is one of ``owners`` (default: this user and the
    group's listed members) and they give nothing to others. Every process of every member must make the same
    call before it uses the namespace.

    Risk: every member can then write every value and block of the namespace. Values are still never unpickled
    from a shared namespace unless ``allow_pickle`` is set, which lets any member run code in every member's
    agents; leave it off unless the members trust each other as themselves.
    """
    validate_name("namespace", namespace)
    gid = _gid(group)
    if owners is None:
        members = set()
        try:
            members = {_uid(m) for m in grp.getgrgid(gid).gr_mem}
        except (KeyError, InvalidArgumentError):
            pass
        owner_set = frozenset({os.geteuid(), *members})
    else:
        owner_set = frozenset({_uid(o) for o in owners})
    policy = Sharing(gid, owner_set, bool(allow_pickle))
    with _SHARED_LOCK:
        _SHARED[namespace] = policy
    return policy


def unshare_namespace(namespace: str) -> None:
    """Undo :func:`share_namespace` in this process (segments already attached stay mapped)."""
    with _SHARED_LOCK:
        _SHARED.pop(namespace, None)


def sharing_of(namespace: str) -> Sharing | None:
    """The group share declared for ``namespace`` in this process, or None (private: the default)."""
    return _SHARED.get(namespace)


def _expect(namespace: str) -> Expect:
    share = _SHARED.get(namespace)
    if share is None:
        return Expect(frozenset({os.geteuid()}), None, 0o600)
    return Expect(share.owners, share.group, 0o660)


# ---- names ------------------------------------------------------------------------------------------------------
def namespace_prefix(namespace: str) -> str:
    """``sutazai_hwopt.<owner>.<namespace>.``: the start of every segment name of the namespace."""
    share = _SHARED.get(namespace)
    owner = f"g{share.group}" if share is not None else f"u{os.geteuid()}"
    return f"{PREFIX}.{owner}.{namespace}."


def segment_name(namespace: str, kind: Kind, ident: str) -> str:
    """The file name in ``/dev/shm`` of one segment (``ident`` may carry a ``.<n>`` suffix of an extension)."""
    if kind not in KINDS:
        raise InvalidArgumentError(f"segment kind must be one of {KINDS}, got {kind!r}")
    return f"{namespace_prefix(namespace)}{kind}.{ident}"


def _namespace_of(name: str) -> str:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[0] == PREFIX else "?"


def list_segment_names(namespace: str, kind: Kind | None = None) -> list[str]:
    """Every segment name of ``namespace`` (of one ``kind``, or all) in ``/dev/shm``, extensions included."""
    prefix = namespace_prefix(namespace) + (f"{kind}." if kind else "")
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def list_segments(namespace: str, kind: Kind = "pool") -> list[str]:
    """Ids of the namespace's primary segments of ``kind`` (for pools: the pool ids)."""
    prefix = f"{namespace_prefix(namespace)}{kind}."
    return [n[len(prefix):] for n in list_segment_names(namespace, kind) if "." not in n[len(prefix):]]


# ---- segments ---------------------------------------------------------------------------------------------------
class Segment:
    """One mapped segment: ``buf`` (a writable memoryview of the whole file), ``size``, ``name``, ``fileno()``.

    Created by :func:`create_segment` or :func:`attach_segment`, never directly.
    """

    __slots__ = ("_fd", "_mmap", "buf", "name", "size")

    def __init__(self, name: str, fd: int, size: int) -> None:
        self.name = name
        self.size = size
        self._fd = fd
        self._mmap: mmap.mmap | None = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buf: memoryview | None = memoryview(self._mmap)

    def fileno(self) -> int:
        """The open descriptor of the segment's file (for ``flock``); -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Unmap and close. Raises ``BufferError`` while exported views (numpy arrays) remain; see
        :func:`close_quietly`."""
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> bool:
        """Remove the segment's name (mappings stay valid until closed)."""
        return unlink_segment(self.name)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, size={self.size})"


def _path(name: str) -> str:
    if "/" in name or name in ("", ".", ".."):
        raise InvalidArgumentError(f"segment name {name!r} must not contain '/'")
    return os.path.join(SHM_DIR, name)


def create_segment(name: str, size: int) -> Segment:
    """Create a new segment of ``size`` bytes (mode 0600, or 0660 with the group of a shared namespace).

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
    share = _SHARED.get(_namespace_of(name))
    mode = 0o660 if share is not None else 0o600
    try:
        fd = os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise AlreadyExistsError(f"shared-memory segment {name!r} already exists") from None
    try:
        if share is not None:
            os.fchown(fd, -1, share.group)
        os.fchmod(fd, mode)  # the umask may have removed bits a group share needs
        os.ftruncate(fd, size)
        seg = Segment(name, fd, size)
    except BaseException:
        os.close(fd)
        unlink_segment(name, count=False)
        raise
    COUNTERS["created"] += 1
    return seg


def attach_segment(name: str) -> Segment:
    """Map an existing segment after checking, on the opened descriptor, that it is ours.

    Raises:
        NotFoundError: no segment of that name.
        TrustError: the segment is owned by another user (outside a declared group share) or has permission bits
            for others: it was not created by us, so nothing in it is read.
    """
    namespace = _namespace_of(name)
    try:
        fd = os.open(_path(name), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"no shared-memory segment {name!r}") from None
    except OSError as exc:  # ELOOP (a symlink), EACCES (another user's 0600 file), ...
        raise TrustError(f"shared-memory segment {SHM_DIR}/{name} of namespace {namespace!r} cannot be opened "
                         f"({exc.strerror}): it was not created by this user. Remove it, or use another "
                         f"namespace.") from None
    try:
        st = check_fd(fd, f"shared-memory segment {SHM_DIR}/{name} of namespace {namespace!r}", _expect(namespace),
                      hint="Remove it (as its owner or root), or use another namespace; to share a namespace "
                           "between users on purpose see sutazai_hwopt.shm.share_namespace.")
        size = st.st_size
        deadline = time.monotonic() + 1.0
        while size == 0 and time.monotonic() < deadline:   # its creator has not sized it yet
            time.sleep(0.001)
            size = os.fstat(fd).st_size
        if size == 0:
            raise NotFoundError(f"shared-memory segment {name!r} is empty (its creator died before sizing it)")
        seg = Segment(name, fd, size)
    except BaseException:
        os.close(fd)
        raise
    COUNTERS["attached"] += 1
    return seg


def unlink_segment(name: str, *, count: bool = True) -> bool:
    """Remove the segment's name (mappings stay valid until closed). Returns False if it was already gone."""
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        return False
    if count:
        COUNTERS["unlinked"] += 1
    return True


def close_quietly(seg: Segment) -> bool:
    """Close our mapping; if numpy arrays still view it, drop our reference instead (they keep it alive).

    Returns True when the mapping was closed now.
    """
    try:
        seg.close()
        return True
    except BufferError:
        seg.buf = None    # the views keep the memoryview's buffer, and with it the mapping, alive
        seg._mmap = None  # unmapped when the last exported view dies
        if seg._fd >= 0:
            os.close(seg._fd)
            seg._fd = -1
        return False
