"""The remote tier: a Redis server shared by several hosts (optional extra ``[redis]``, client ``redis-py``).

Values travel in the codec's encoding (kind, priority, head, body) behind a 16-byte header, under keys
``<namespace>:<tagged key>``; nothing is pickled twice. The tier is best effort: a connection error is logged
and reads as a miss (a write is dropped), so a Redis outage degrades the cache instead of failing agents.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..logs import get_logger

if TYPE_CHECKING:
    from .tiers import Demoted, Encoded, Part

__all__ = ["RemoteTier"]

log = get_logger("cache")
_HDR = struct.Struct("<HBxIQ")   # kind, priority, head length, body length


class RemoteTier:
    """Redis-backed tier of a namespace.

    Args:
        url: ``redis://host:port/db``.
        namespace: key prefix, so several namespaces share one server.
    """

    def __init__(self, url: str, namespace: str) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigError("redis_url needs the 'redis' package: pip install 'sutazai_hwopt[redis]'",
                              key="redis_url") from exc
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError,
                                                         redis.exceptions.TimeoutError)
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = namespace.encode() + b":"
        self.errors = 0

    def put(self, *, key: bytes, key_hash: int, kind: int, priority: int, head: bytes,
            body: Sequence[Part]) -> list[Demoted]:
        """Store one encoded value (:class:`~.tiers.Tier`; the hash is unused): dropped with a log line if the
        server is unreachable. Redis evicts by itself, so nothing is demoted."""
        from .codec import join_body

        data = join_body(list(body)) if body else b""
        blob = _HDR.pack(kind, priority, len(head), len(data)) + head + data
        try:
            self.client.set(self.prefix + key, blob)
        except self._errors as exc:
            self.errors += 1
            log.warning("remote cache write failed: %s", exc)
        return []

    def get(self, *, key: bytes, key_hash: int) -> Encoded | None:
        """``(kind, priority, head, body)`` or None (also when the server is unreachable)."""
        try:
            blob = self.client.get(self.prefix + key)
        except self._errors as exc:
            self.errors += 1
            log.warning("remote cache read failed: %s", exc)
            return None
        if not isinstance(blob, bytes):
            return None
        kind, priority, hlen, _ = _HDR.unpack_from(blob, 0)
        o = _HDR.size
        return kind, priority, blob[o:o + hlen], blob[o + hlen:]

    def contains(self, *, key: bytes, key_hash: int) -> bool:
        """True when the server has the key."""
        try:
            return bool(self.client.exists(self.prefix + key))
        except self._errors:
            self.errors += 1
            return False

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
