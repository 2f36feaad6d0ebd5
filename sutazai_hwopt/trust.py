"""Who may have written what the library reads from a shared place: owner and mode checks.

Every shared-memory segment and every file or directory the library opens in a place other users can write to
(``/dev/shm``, ``/tmp``, a runtime or state directory) is checked with ``fstat`` on the descriptor it opened —
never by name alone, which a local user could have created first — *before* a byte of it is read:

* its owner must be this process's effective uid (or, for a namespace a group deliberately shares, one of the
  uids that group was declared with, see :func:`sutazai_hwopt.shm.share_namespace`);
* it must carry no permission bits for others, and group bits only where a group share was declared;
* it must be what was expected (a regular file for a segment, a directory for a directory).

A refusal is :class:`~sutazai_hwopt.errors.TrustError` (also a ``PermissionError``) naming the path, the owner
found and what to do. ``O_NOFOLLOW`` on every open means a planted symlink is refused too.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import TrustError

__all__ = ["Expect", "check_fd", "default_runtime_dir", "open_private_file", "private_dir"]


def _who(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


@dataclass(frozen=True)
class Expect:
    """What a trusted object looks like: allowed owners, the group (if shared) and the permission bits allowed."""

    owners: frozenset[int]
    group: int | None = None
    allowed_bits: int = 0o700          # rwx for the owner; 0o770 when a group shares it

    @classmethod
    def private(cls) -> Expect:
        """Owned by this process's effective uid, nothing for group or others."""
        return cls(frozenset({os.geteuid()}))


def check_fd(fd: int, what: str, expect: Expect, *, kind: str = "file", hint: str = "") -> os.stat_result:
    """``fstat`` an open descriptor and refuse it unless it matches ``expect``; returns the stat.

    Raises:
        TrustError: wrong owner, group, mode bits or file type (``what`` and ``hint`` go into the message).
    """
    st = os.fstat(fd)
    want_type = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    tail = f" {hint}" if hint else ""
    if not want_type(st.st_mode):
        raise TrustError(f"{what} is not a {kind}; refusing to use it.{tail}")
    if st.st_uid not in expect.owners:
        mine = ", ".join(_who(u) for u in sorted(expect.owners))
        raise TrustError(f"{what} is owned by {_who(st.st_uid)}, not by {mine}: someone else created it, so "
                         f"nothing in it is read.{tail}")
    extra = stat.S_IMODE(st.st_mode) & ~expect.allowed_bits & 0o7777
    if extra:
        raise TrustError(f"{what} has mode {stat.S_IMODE(st.st_mode):#o}: bits {extra:#o} let other users read or "
                         f"write it, so nothing in it is read.{tail}")
    if expect.group is not None and stat.S_IMODE(st.st_mode) & 0o070 and st.st_gid != expect.group:
        raise TrustError(f"{what} gives group permissions to gid {st.st_gid}, not to the declared group "
                         f"{expect.group}.{tail}")
    return st


def private_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` (mode 0700, parents as needed) or check the existing one: ours and closed to others.

    Raises:
        TrustError: the directory belongs to another user, is a symlink, or is writable/readable by others.
    """
    p = Path(path)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling symlink: refused below
    try:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise TrustError(f"{what} {p} cannot be opened as a directory of ours ({exc.strerror}); "
                         f"remove it or choose another path") from None
    try:
        # Read bits for others are harmless on a directory of ours (tightened below); write bits are not: someone
        # else could have planted files in it.
        check_fd(fd, f"{what} {p}", Expect(frozenset({os.geteuid()}), None, 0o755), kind="directory",
                 hint="Remove it (or fix it with chmod 700 / chown) or choose another path.")
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return p


def open_private_file(path: str | os.PathLike[str], flags: int, what: str, mode: int = 0o600) -> int:
    """``os.open`` a file in a shared place without following symlinks, then check it is ours and private.

    Returns the descriptor (the caller closes it).

    Raises:
        TrustError: the file belongs to another user or is open to others (the descriptor is closed).
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        check_fd(fd, f"{what} {path}", Expect.private(), hint="Remove it or choose another path.")
    except BaseException:
        os.close(fd)
        raise
    return fd


def default_runtime_dir() -> Path:
    """Where this user's runtime directory is (not created): ``$SUTAZAI_HWOPT_RUNTIME_DIR`` if set, else
    ``$XDG_RUNTIME_DIR/sutazai_hwopt`` if that exists, else ``/tmp/sutazai_hwopt-<uid>``. Defined here, below
    the parts, because the host service and the cache's remote tier (its signing key) both keep files there."""
    explicit = os.environ.get("SUTAZAI_HWOPT_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "sutazai_hwopt"
    return Path(tempfile.gettempdir()) / f"sutazai_hwopt-{os.getuid()}"
