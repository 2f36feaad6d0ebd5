"""The remote tier: a Redis server shared by several hosts (optional extra ``[redis]``, client ``redis-py``).

Values travel in the codec's encoding (kind, priority, head, body) under keys ``<namespace>:<tagged key>``,
nothing pickled twice, and every value is **signed**: ``magic | HMAC-SHA256 tag | header | head | body``, the tag
taken over a domain string, the namespace, the key, the header (kind, priority, lengths), the head and the body.
Anyone who can write to a shared Redis could otherwise make every agent unpickle (run) what they wrote, so
:meth:`RemoteTier.get` checks the tag with :func:`hmac.compare_digest` before a byte of the value is parsed; a
value that fails (unsigned, truncated, forged, or signed with another deployment's key) is a miss, counted in
``rejected`` and logged as a rate-limited warning, never an exception and never decoded.

The key is ``redis_hmac_key`` from the config (give every host of a deployment the same one) or else 32 random
bytes kept in ``<runtime dir>/cache_redis.key`` (mode 0600, created once, owner checked on every open) — which
only the processes of one user on one host share.

The tier is best effort: a connection error is logged and reads as a miss (a write is dropped), so a Redis outage
degrades the cache instead of failing agents.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, TrustError
from ..logs import get_logger
from ..trust import default_runtime_dir, open_private_file, private_dir

if TYPE_CHECKING:
    from .tiers import Demoted, Encoded, Part

__all__ = ["KEY_FILE", "RemoteTier", "load_signing_key"]

log = get_logger("cache")
_HDR = struct.Struct("<HBxIQ")   # kind, priority, head length, body length
_MAGIC = b"SZc1"
_TAG = hashlib.sha256().digest_size
_PRE = len(_MAGIC) + _TAG                     # where the header starts
_DOMAIN = b"sutazai_hwopt.cache.remote.v1\0"
KEY_FILE = "cache_redis.key"
_KEY_LEN = 32
_WARN_EVERY = 60.0                            # seconds between two warnings about refused values


def load_signing_key(configured: str | bytes | None = None, directory: str | os.PathLike[str] | None = None
                     ) -> bytes:
    """The HMAC key of the remote tier: ``configured`` (UTF-8 when a str), else the 32-byte key file in the
    runtime directory (``directory`` overrides it), created 0600 by the first process that needs it.

    Raises:
        ConfigError: a configured key shorter than 16 bytes.
        TrustError: the directory or the key file is not this user's and private, or the file is damaged.
    """
    if configured is not None:
        key = configured.encode() if isinstance(configured, str) else bytes(configured)
        if len(key) < 16:
            raise ConfigError("redis_hmac_key must be at least 16 bytes long (use 32 random bytes, e.g. "
                              "`python -c 'import secrets; print(secrets.token_hex(32))'`)", key="redis_hmac_key")
        return key
    d = private_dir(directory if directory is not None else default_runtime_dir(), "runtime directory")
    path = d / KEY_FILE
    for _ in range(50):
        try:
            return _read_key(path)
        except FileNotFoundError:
            pass
        _create_key(path)
    raise TrustError(f"the remote tier's key file {path} keeps disappearing; remove it and retry")


def _read_key(path: Path) -> bytes:
    fd = open_private_file(path, os.O_RDONLY, "the remote tier's key file")
    try:
        key = os.read(fd, _KEY_LEN + 1)
    finally:
        os.close(fd)
    if len(key) != _KEY_LEN:
        raise TrustError(f"the remote tier's key file {path} holds {len(key)} bytes, not {_KEY_LEN}: remove it "
                         f"(every process of this host then makes and shares a new key; values signed with the "
                         f"old one read as misses)")
    return key


def _create_key(path: Path) -> None:
    """Write a new key under a private temporary name and link it into place: a reader never sees a partial
    key, and when two processes race, the first link wins and both read that key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = open_private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "the remote tier's new key file")
    try:
        os.write(fd, secrets.token_bytes(_KEY_LEN))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class RemoteTier:
    """Redis-backed tier of a namespace, with signed values.

    Args:
        url: ``redis://host:port/db``.
        namespace: key prefix, so several namespaces share one server (also signed, so a value cannot be moved
            to another namespace or key).
        hmac_key: the signing key (see :func:`load_signing_key`); None: the config-less default, the runtime
            directory's key file.
    """

    def __init__(self, url: str, namespace: str, *, hmac_key: str | bytes | None = None,
                 key_dir: str | os.PathLike[str] | None = None) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigError("redis_url needs the 'redis' package: pip install 'sutazai_hwopt[redis]'",
                              key="redis_url") from exc
        key = load_signing_key(hmac_key, key_dir)
        ns = namespace.encode()
        self._mac = hmac.new(key, _DOMAIN + struct.pack("<I", len(ns)) + ns, hashlib.sha256)
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError,
                                                         redis.exceptions.TimeoutError)
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = ns + b":"
        self.errors = 0
        self.rejected = 0
        self._warned_at = -_WARN_EVERY
        self._unwarned = 0

    def _tag(self, key: bytes, header: bytes | memoryview, head: bytes | memoryview,
             body: bytes | memoryview) -> bytes:
        m = self._mac.copy()
        m.update(struct.pack("<I", len(key)))
        m.update(key)
        m.update(header)
        m.update(head)
        m.update(body)
        return m.digest()

    def put(self, *, key: bytes, key_hash: int, kind: int, priority: int, head: bytes,
            body: Sequence[Part]) -> list[Demoted]:
        """Store one signed encoded value (:class:`~.tiers.Tier`; the hash is unused): dropped with a log line
        if the server is unreachable. Redis evicts by itself, so nothing is demoted."""
        from .codec import join_body

        data = join_body(list(body)) if body else b""
        header = _HDR.pack(kind, priority, len(head), len(data))
        blob = b"".join((_MAGIC, self._tag(key, header, head, data), header, head, data))
        try:
            self.client.set(self.prefix + key, blob)
        except self._errors as exc:
            self.errors += 1
            log.warning("remote cache write failed: %s", exc)
        return []

    def get(self, *, key: bytes, key_hash: int) -> Encoded | None:
        """``(kind, priority, head, body)`` of a value whose signature checks, else None (also when the server is
        unreachable). Nothing of a refused value is parsed beyond its fixed-size header."""
        try:
            blob = self.client.get(self.prefix + key)
        except self._errors as exc:
            self.errors += 1
            log.warning("remote cache read failed: %s", exc)
            return None
        if not isinstance(blob, bytes):
            return None
        if len(blob) < _PRE + _HDR.size or blob[:len(_MAGIC)] != _MAGIC:
            self._refuse(key, "it is not a signed value of this library")
            return None
        mv = memoryview(blob)
        o = _PRE + _HDR.size
        kind, priority, hlen, blen = _HDR.unpack_from(blob, _PRE)
        if o + hlen + blen != len(blob):
            self._refuse(key, "its length does not match its header")
            return None
        tag = self._tag(key, mv[_PRE:o], mv[o:o + hlen], mv[o + hlen:])
        if not hmac.compare_digest(tag, mv[len(_MAGIC):_PRE]):
            self._refuse(key, "its signature does not match this deployment's key")
            return None
        return kind, priority, blob[o:o + hlen], blob[o + hlen:]

    def _refuse(self, key: bytes, why: str) -> None:
        """Count a refused value and warn, at most once a minute (an attacker must not be able to flood logs)."""
        self.rejected += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            more = f" ({self._unwarned} more refused since the last warning)" if self._unwarned else ""
            log.warning("remote cache: refused the value of key %r in Redis: %s; read as a miss. Someone who can "
                        "write to that server wrote it, or another deployment with another redis_hmac_key%s",
                        key[:80], why, more)
            self._warned_at, self._unwarned = now, 0
        else:
            self._unwarned += 1

    def contains(self, *, key: bytes, key_hash: int) -> bool:
        """True when the server holds a value of ``key`` that :meth:`get` would accept (it is fetched and its
        signature checked, so ``contains`` and ``get`` agree about a forged value)."""
        return self.get(key=key, key_hash=key_hash) is not None

    def delete(self, *, key: bytes, key_hash: int) -> bool:
        """Remove the key; True when it existed."""
        try:
            return bool(self.client.delete(self.prefix + key))
        except self._errors:
            self.errors += 1
            return False

    def clear(self) -> None:
        """Delete every key of this namespace (SCAN + DEL in batches)."""
        try:
            batch = []
            for k in self.client.scan_iter(match=self.prefix + b"*", count=500):
                batch.append(k)
                if len(batch) >= 500:
                    self.client.delete(*batch)
                    batch = []
            if batch:
                self.client.delete(*batch)
        except self._errors as exc:
            self.errors += 1
            log.warning("remote cache clear failed: %s", exc)

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
