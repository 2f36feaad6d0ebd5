"""The well-known runtime directory through which the CLI, the daemon and agents find each other.

Layout (directory mode 0700, files 0600)::

    <runtime>/daemon.pid     "<pid> <start_time_ticks>" of the running daemon
    <runtime>/daemon.json    {"host": ..., "port": ..., "pid": ..., "url": ...} once it listens
    <runtime>/token               the bearer token for mutating API calls (written by ``deploy``)
    <runtime>/daemon.log          the daemon's stdout/stderr

``<runtime>`` is ``$SUTAZAI_HWOPT_RUNTIME_DIR`` if set, else ``$XDG_RUNTIME_DIR/sutazai_hwopt`` if that exists,
else ``/tmp/sutazai_hwopt-<uid>``. A process is identified by pid *and* start time, so a pid reused by another
program after the daemon died is never mistaken for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..procid import process_start_time
from ..trust import default_runtime_dir, private_dir

__all__ = ["RuntimeDir", "process_start_time", "runtime_dir"]


_default_dir = default_runtime_dir   # the location is defined once, in trust (the cache keeps its key there too)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file only the user can read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class DaemonRecord:
    """What the pid file says: the daemon's pid and start time."""

    pid: int
    start_time: int

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


class RuntimeDir:
    """The runtime directory: pid file, endpoint file, token."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else _default_dir()

    @property
    def pid_file(self) -> Path:
        return self.path / "daemon.pid"

    @property
    def endpoint_file(self) -> Path:
        return self.path / "daemon.json"

    @property
    def token_file(self) -> Path:
        return self.path / "token"

    @property
    def log_file(self) -> Path:
        return self.path / "daemon.log"

    def ensure(self) -> Path:
        """Create the directory 0700; refuse (TrustError) one owned by another user or writable by others."""
        return private_dir(self.path, "runtime directory")

    # -- pid file -------------------------------------------------------------------------------------------
    def read_pid(self) -> DaemonRecord | None:
        try:
            pid_s, start_s = self.pid_file.read_text().split()
            return DaemonRecord(int(pid_s), int(start_s))
        except (OSError, ValueError):
            return None

    def write_pid(self, pid: int) -> DaemonRecord:
        start = process_start_time(pid)
        if start is None:
            raise ProcessLookupError(pid)
        self.ensure()
        _write_private(self.pid_file, f"{pid} {start}\n")
        return DaemonRecord(pid, start)

    def running(self) -> DaemonRecord | None:
        """The live daemon's record, or None (no pid file, or a stale one)."""
        record = self.read_pid()
        return record if record is not None and record.alive() else None

    def stale(self) -> DaemonRecord | None:
        """A pid file left by a daemon that is gone (killed), or None."""
        record = self.read_pid()
        return record if record is not None and not record.alive() else None

    def clear(self) -> None:
        for path in (self.pid_file, self.endpoint_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- endpoint and token ---------------------------------------------------------------------------------
    def write_endpoint(self, host: str, port: int, pid: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        _write_private(self.endpoint_file, json.dumps(
            {"host": host, "port": port, "pid": pid, "url": f"http://{shown}:{port}/"}))

    def read_endpoint(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.endpoint_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def new_token(self) -> str:
        self.ensure()
        token = secrets.token_urlsafe(32)
        _write_private(self.token_file, token + "\n")
        return token

    def read_token(self) -> str | None:
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None


def runtime_dir(path: str | os.PathLike[str] | None = None) -> RuntimeDir:
    """The runtime directory at ``path`` or at the default location."""
    return RuntimeDir(path)
