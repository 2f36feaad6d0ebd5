"""The contract every level below L1 keeps: L2 (:class:`~.shared_index.SharedTier`), L3 (:class:`~.l3.L3Tier`)
and the remote tier (:class:`~.remote.RemoteTier`).

The levels store *encoded* values (``kind, priority, head, body`` as made by :mod:`~sutazai_hwopt.cache.codec`),
never Python objects, and are addressed by the key's tagged bytes and its XXH3 hash (a tier that has no use for
the hash, like Redis, ignores it). Every argument is keyword-only so the levels, which once took the same
arguments in three orders, cannot be called with two of them swapped. A level may accept further keyword
arguments with defaults (L2's ``demote``/``visited``) and still be a :class:`Tier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:   # annotations only: typing_extensions is not a runtime dependency
    from typing_extensions import Buffer

    from .._native.shmcache_index import BlockView

__all__ = ["Body", "Demoted", "Encoded", "Part", "Tier"]

#: One buffer of a value to store (a value's body is a sequence of them, written one after the other): any
#: bytes-like object, or a view read from another level (promotion copies it without an intermediate copy).
Part: TypeAlias = "Buffer | BlockView"

#: The body of a value read from a level: bytes, or a read-only zero-copy view pinning shared memory.
Body: TypeAlias = "bytes | memoryview | BlockView"

#: An encoded value read from a level: ``(kind, priority, head, body)``.
Encoded: TypeAlias = "tuple[int, int, bytes, Body]"

#: An entry a level evicted and hands to the level below: ``(key, kind, priority, head, body)``.
Demoted: TypeAlias = "tuple[bytes, int, int, bytes, bytes]"


@runtime_checkable
class Tier(Protocol):
    """A level of the cache system below L1 (structural: the levels do not inherit from it)."""

    def put(self, *, key: bytes, key_hash: int, kind: int, priority: int, head: bytes,
            body: Sequence[Part]) -> Sequence[Demoted]:
        """Store an encoded value (``body``: its buffers, in order); return what was demoted to make room
        (empty unless the level was asked to demote).

        Raises:
            WeightError: the value can never fit this level (nothing changed).
        """
        ...

    def get(self, *, key: bytes, key_hash: int) -> Encoded | None:
        """The encoded value of ``key``, or None."""
        ...

    def contains(self, *, key: bytes, key_hash: int) -> bool:
        """True when the level holds ``key`` (not an access: no statistics, no promotion)."""
        ...

    def delete(self, *, key: bytes, key_hash: int) -> bool:
        """Remove ``key``; True when the level held it."""
        ...

    def clear(self) -> None:
        """Remove every entry of the level (for every process sharing it)."""
        ...

    def close(self) -> None:
        """Release this process's handle; the level's contents stay for the others."""
        ...
