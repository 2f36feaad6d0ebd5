"""The write-ahead journal of every kernel change: what, on which process, previous value, new value.

Design: an undo log (the "intent, then act, then commit" order of ARIES-style write-ahead logging, Mohan et al.
1992, reduced to undo-only). Before a transaction writes anything, all its changes — each with the value the
kernel held before — are appended to ``journal.jsonl`` in one ``write`` and ``fsync``; then the knobs are set;
then a ``commit`` line is added. If the writer dies at any point, every change it intended is in the file, and
restoring its ``previous`` value is correct whether or not the write had happened. Undos append ``undo`` lines;
nothing is rewritten in place, so a reader in another process (holding the lock) always sees a consistent
history. When no change is left to undo the file is truncated; changes on processes that have exited are
dropped at compaction (there is nothing left to restore on them).

The journal lives in a per-user state directory (``$XDG_STATE_HOME/sutazai_hwopt`` or
``~/.local/state/sutazai_hwopt``, mode 0700, files 0600); every access holds ``flock`` on ``journal.lock``, so
coordinators in several processes — or a new one after the old one was SIGKILLed — share it safely.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..logs import get_logger
from ..trust import private_dir

__all__ = ["Journal", "JournalEntry", "default_state_dir"]

log = get_logger("resources")

_COMPACT_BYTES = 1 << 20  # compact past 1 MiB


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/sutazai_hwopt``, else ``~/.local/state/sutazai_hwopt`` (per user)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "sutazai_hwopt"


@dataclass
class JournalEntry:
    """One recorded change. ``previous`` is what rollback restores."""

    id: str
    txn: str
    knob: str
    new: Any
    previous: Any
    pid: int | None = None
    start_time: int | None = None
    path: str | None = None
    owner: str = "resources"
    agent_id: str | None = None
    reason: str = ""
    ts: float = 0.0
    writer_pid: int = 0
    committed: bool = False
    undone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int | None, int | None, str | None]:
        """What the change acts on: the same key means the same kernel setting."""
        return (self.knob, self.pid, self.start_time, self.path)

    def to_record(self) -> dict[str, Any]:
        # A shallow field copy: dataclasses.asdict deep-copies every value and was most of the journal's cost.
        d = {k: getattr(self, k) for k in _RECORD_FIELDS}
        d["type"] = "change"
        return d


_RECORD_FIELDS = tuple(f for f in JournalEntry.__dataclass_fields__ if f not in ("committed", "undone"))


class Journal:
    """Append-only, file-locked undo log in ``state_dir`` (see the module docstring).

    Args:
        state_dir: directory for ``journal.jsonl``; created 0700. ``None``: :func:`default_state_dir`.

    Raises:
        TrustError: the directory is not ours or is writable by others (someone could forge undo records).
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(state_dir) if state_dir is not None else default_state_dir()
        private_dir(self.dir, "state directory")   # someone else's could hold forged undo records
        self.path = self.dir / "journal.jsonl"
        self._lock_path = self.dir / "journal.lock"
        self._tlock = threading.RLock()
        self._depth = 0
        self._lock_fd = -1

    # -- locking -------------------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the journal's cross-process lock (re-entrant within this object)."""
        with self._tlock:
            if self._depth == 0:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = -1

    # -- writing -------------------------------------------------------------------------------------------
    def _append(self, records: Sequence[dict[str, Any]], *, durable: bool = True) -> None:
        data = "".join(json.dumps(r, separators=(",", ":"), default=str) + "\n" for r in records).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def new_txn(self) -> str:
        """A fresh transaction id."""
        return uuid.uuid4().hex[:16]

    def record(self, entries: Sequence[JournalEntry]) -> None:
        """Write the intent of a transaction (all its changes, with previous values) durably, in one fsync."""
        now = time.time()
        with self.locked():
            for e in entries:
                e.ts = e.ts or now
                e.writer_pid = e.writer_pid or os.getpid()
            self._append([e.to_record() for e in entries])

    def commit(self, txn: str) -> None:
        """Mark ``txn`` as fully applied."""
        # Not fsynced: a lost commit line only makes a finished transaction look unfinished, and rollback
        # treats both alike (it restores the journaled previous values either way).
        with self.locked():
            self._append([{"type": "commit", "txn": txn}], durable=False)
            if self.path.stat().st_size >= _COMPACT_BYTES:
                self.compact()

    def mark_undone(self, results: Sequence[tuple[str, str]]) -> None:
        """Record ``(entry id, how)`` undo outcomes (``restored``, ``process gone``, ``superseded``...)."""
        if results:
            with self.locked():
                self._append([{"type": "undo", "id": i, "result": how} for i, how in results])
                self._maybe_compact()

    def rebase(self, entry_id: str, previous: Any) -> None:
        """Replace the value rollback of ``entry_id`` will restore (an earlier change under it was undone)."""
        with self.locked():
            self._append([{"type": "rebase", "id": entry_id, "previous": previous}])

    # -- reading -------------------------------------------------------------------------------------------
    def entries(self) -> list[JournalEntry]:
        """Every change recorded, oldest first, with its commit / undo state folded in."""
        with self.locked():
            return self._load()

    def _load(self) -> list[JournalEntry]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out: dict[str, JournalEntry] = {}
        txns: dict[str, list[JournalEntry]] = {}
        fields = set(JournalEntry.__dataclass_fields__)
        for n, line in enumerate(text.splitlines(), 1):
            try:
                rec = json.loads(line)
                kind = rec.pop("type")
            except (ValueError, KeyError, AttributeError):
                log.warning("journal %s line %d is torn or garbage; skipped", self.path, n)
                continue
            if kind == "change":
                e = JournalEntry(**{k: v for k, v in rec.items() if k in fields})
                out[e.id] = e
                txns.setdefault(e.txn, []).append(e)
            elif kind == "commit":
                for e in txns.get(rec.get("txn", ""), []):
                    e.committed = True
            elif kind == "undo" and rec.get("id") in out:
                out[rec["id"]].undone = rec.get("result", "restored")
            elif kind == "rebase" and rec.get("id") in out:
                out[rec["id"]].previous = rec.get("previous")
        return list(out.values())

    def active(self, *, owner: str | None = None, txn: str | None = None,
               ids: Sequence[str] | None = None) -> list[JournalEntry]:
        """Changes not undone yet, oldest first, optionally filtered."""
        wanted = set(ids) if ids is not None else None
        return [e for e in self.entries() if e.undone is None
                and (owner is None or e.owner == owner) and (txn is None or e.txn == txn)
                and (wanted is None or e.id in wanted)]

    # -- compaction ----------------------------------------------------------------------------------------
    def _maybe_compact(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size >= _COMPACT_BYTES:
            self.compact()
            return
        entries = self._load()
        if all(e.undone is not None for e in entries):
            os.truncate(self.path, 0)

    def compact(self) -> int:
        """Rewrite the file with only the changes still to undo; drop those on exited processes.

        Successive committed changes of one setting made by the coordinator's own plans (owner ``resources``)
        are merged into one (the first's previous value, the last's new value): a daemon that rebalances every
        few seconds would otherwise grow the file without bound. Other owners' changes are kept one by one, so
        their handles still roll back individually. Returns the number of changes kept.
        """
        from .identity import read_start_time

        with self.locked():
            keep: list[JournalEntry | None] = []
            last: dict[tuple[Any, ...], int] = {}
            for e in self._load():
                if e.undone is not None:
                    continue
                if e.pid is not None and read_start_time(e.pid) != e.start_time:
                    continue
                i = last.get(e.key)
                before = keep[i] if i is not None else None
                if (before is not None and before.owner == e.owner == "resources" and before.committed
                        and e.committed):
                    e.previous = before.previous
                    keep[i] = None  # type: ignore[index]
                last[e.key] = len(keep)
                keep.append(e)
            kept = [e for e in keep if e is not None]
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                lines: list[dict[str, Any]] = [e.to_record() for e in kept]
                lines += [{"type": "commit", "txn": t} for t in dict.fromkeys(e.txn for e in kept if e.committed)]
                os.write(fd, "".join(json.dumps(r, default=str) + "\n" for r in lines).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            return len(kept)
