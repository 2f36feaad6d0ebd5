"""L3: a larger compressed tier in shared memory, optionally mirrored to a local directory.

Values arrive here as L2's eviction victims (demotion) and are compressed with LZ4 (``lz4.block``: ~3 GB/s
decompression, the fastest codec the project depends on) or zlib; a value whose first 64 KiB do not shrink by
at least 10% is stored raw (float weights, already compressed media). The store itself is a
:class:`~sutazai_hwopt.cache.shared_index.SharedTier` (same index, eviction, crash safety as L2).

With ``l3_directory`` every L3 write is also written to ``<dir>/<xxh3-128 of the key>.l3`` (write to a temporary
file, then ``rename``: readers never see half a file) and a miss in shared memory falls back to the file, so the
tier survives restarts. The directory is trimmed to ``l3_size`` bytes by deleting the least recently written
files (a per-process estimate of its size, re-measured on every trim; good enough for a cache).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from ..logs import get_logger
from ..memory import compression as comp
from ..trust import private_dir
from .codec import join_body
from .shared_index import SharedTier

if TYPE_CHECKING:
    from .tiers import Demoted, Encoded, Part

__all__ = ["L3Tier"]

log = get_logger("cache")
_HDR = struct.Struct("<BHBIQ")   # codec, kind, priority, head length, raw body length
_FILE_MAGIC = b"SZL3\x01"
CODEC_NONE, CODEC_LZ4, CODEC_ZLIB = comp.RAW, comp.LZ4, comp.ZLIB
_SAMPLE = 65536


def _compress(codec: str, raw: bytes) -> tuple[int, bytes]:
    if codec == "none" or len(raw) < 128:
        return CODEC_NONE, raw
    cid = comp.codec_id(codec)
    if not comp.pays(cid, raw[:_SAMPLE], framing="block"):
        return CODEC_NONE, raw
    return cid, comp.compress(cid, raw, framing="block")


def _decompress(codec: int, data: bytes | memoryview, raw_len: int) -> bytes:
    return comp.decompress(codec, data, framing="block", size=raw_len)


class L3Tier:
    """The compressed tier of a namespace: ``put`` / ``get`` of encoded values, ``delete``, ``clear``."""

    def __init__(self, namespace: str, size: int, *, codec: str = "lz4", directory: str | None = None,
                 max_entries: int | None = None) -> None:
        if directory:   # its files hold pickled values: it must be ours and closed to others
            private_dir(directory, "L3 directory")
        self.store = SharedTier(namespace, "l3", size, max_entries=max_entries)
        self.codec = codec
        self.size = self.store.size
        self.directory = Path(directory) if directory else None
        self._dir_bytes = -1
        self._dir_lock = threading.Lock()
        self.raw_bytes = 0
        self.stored_bytes = 0

    def put(self, *, key: bytes, key_hash: int, kind: int, priority: int, head: bytes,
            body: Sequence[Part]) -> list[Demoted]:
        """Compress and store one encoded value (:class:`~.tiers.Tier`); L3's victims are dropped, so it
        returns no demoted entries."""
        raw = join_body(list(body)) if body else b""
        codec, data = _compress(self.codec, raw)
        meta = _HDR.pack(codec, kind, priority, len(head), len(raw)) + head
        self.raw_bytes += len(raw) + len(head)
        self.stored_bytes += len(data) + len(meta)
        self.store.put(key=key, key_hash=key_hash, kind=kind, priority=priority, head=meta, body=[data])
        if self.directory is not None:
            self._write_file(key, meta, data)
        return []

    def get(self, *, key: bytes, key_hash: int) -> Encoded | None:
        """``(kind, priority, head, body)`` decompressed, from memory or else from the directory."""
        r = self.store.index.get(key, key_hash, False)
        if r is not None:
            return self._unpack(r[2], r[3])
        if self.directory is None:
            return None
        got = self._read_file(key)
        if got is None:
            return None
        meta, data = got
        kind, priority, head, body = self._unpack(meta, data)
        # back into shared memory
        self.store.put(key=key, key_hash=key_hash, kind=kind, priority=priority, head=meta, body=[data])
        return kind, priority, head, body

    @staticmethod
    def _unpack(meta: bytes, data: Any) -> tuple[int, int, bytes, bytes]:
        codec, kind, priority, hlen, raw_len = _HDR.unpack_from(meta, 0)
        head = bytes(meta[_HDR.size:_HDR.size + hlen])
        return kind, priority, head, _decompress(codec, data, raw_len)

    def contains(self, *, key: bytes, key_hash: int) -> bool:
        """True when the key is in memory or in the directory."""
        return bool(self.store.index.contains(key, key_hash)) or (
            self.directory is not None and self._path(key).exists())

    def delete(self, *, key: bytes, key_hash: int) -> bool:
        """Remove the key from memory and directory."""
        found = bool(self.store.index.delete(key, key_hash))
        if self.directory is not None:
            try:
                self._path(key).unlink()
                found = True
            except FileNotFoundError:
                pass
        return found

    def clear(self) -> None:
        """Empty the tier (and its directory's files)."""
        self.store.clear()
        if self.directory is not None:
            for p in self.directory.glob("*.l3"):
                p.unlink(missing_ok=True)

    # ---- directory ----------------------------------------------------------------------------------------
    def _path(self, kb: bytes) -> Path:
        assert self.directory is not None
        return self.directory / f"{xxhash.xxh3_128_hexdigest(kb)}.l3"

    def _write_file(self, kb: bytes, meta: bytes, data: bytes) -> None:
        path = self._path(kb)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        blob = _FILE_MAGIC + struct.pack("<II", len(kb), len(meta)) + kb + meta + data
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("L3 directory write of %s failed: %s", path, exc)
            return
        with self._dir_lock:
            if self._dir_bytes < 0:
                self._dir_bytes = sum(p.stat().st_size for p in path.parent.glob("*.l3") if p.exists())
            else:
                self._dir_bytes += len(blob)
            if self._dir_bytes > self.size:
                self._trim()

    def _read_file(self, kb: bytes) -> tuple[bytes, bytes] | None:
        try:
            blob = self._path(kb).read_bytes()
        except OSError:
            return None
        if not blob.startswith(_FILE_MAGIC) or len(blob) < 13:
            return None
        klen, mlen = struct.unpack_from("<II", blob, 5)
        if blob[13:13 + klen] != kb:
            return None   # an XXH3-128 collision, or a damaged file: treat as a miss
        meta = blob[13 + klen:13 + klen + mlen]
        return meta, blob[13 + klen + mlen:]

    def _trim(self) -> None:
        assert self.directory is not None
        files = []
        for p in self.directory.glob("*.l3"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(f[1] for f in files)
        target = self.size * 9 // 10
        for _, sz, p in files:
            if total <= target:
                break
            p.unlink(missing_ok=True)
            total -= sz
        self._dir_bytes = total

    def close(self) -> None:
        """Unmap from this process."""
        self.store.close()

    def destroy(self) -> None:
        """Unlink the shared segment (the directory is kept: it is the persistent copy)."""
        self.store.destroy()
