"""Content hashing for dedup: XXH3-128 of a block, fused with the byte-for-byte check against a candidate.

XXH3-128 (Collet, xxHash, 2019-2020; the ``xxhash`` package) runs at memory speed and its 128 bits make an
accidental collision negligible, but we never merge on a hash alone: a merge always follows a byte-for-byte
comparison. Done naively that is three passes over memory (hash the new block; read it again and the old copy
to compare). For big blocks we first guess the candidate from a cheap key (size plus a 32-bit hash of the first
64 KiB, kept in the block table) and compare first: if the bytes are equal, the candidate's stored digest is the
new block's digest too, so the hash pass is skipped entirely (:func:`compare_or_digest`). A chunked fused
hash + compare (:func:`fused_digest_compare`, each chunk compared while it is in cache) is kept for callers
that need the digest in any case.
"""

from __future__ import annotations

import xxhash

from .._native.pool_alloc import bytes_equal

__all__ = ["FUSED_MIN", "compare_or_digest", "digest", "fused_digest_compare", "head_key", "split"]

#: Blocks at least this big use the head-key guess and the fused hash + compare pass.
FUSED_MIN = 1 << 20
_HEAD = 64 * 1024
_CHUNK = 256 * 1024      # fits in L2 with room to spare, so the compare re-reads it from cache


def split(value: int) -> tuple[int, int]:
    """(low 64 bits, high 64 bits) of a 128-bit digest."""
    return value & ((1 << 64) - 1), value >> 64


def digest(data: memoryview) -> int:
    """XXH3-128 of ``data`` as an int."""
    return int(xxhash.xxh3_128_intdigest(data))


def head_key(data: memoryview) -> int:
    """A 32-bit key of the first 64 KiB, never 0 (0 means "no key" in the block table)."""
    return (xxhash.xxh3_64_intdigest(data[:_HEAD]) & 0xFFFFFFFF) or 1


def fused_digest_compare(data: memoryview, candidate: memoryview | None) -> tuple[int, bool]:
    """XXH3-128 of ``data`` and whether it equals ``candidate`` byte for byte, in one chunked pass."""
    h = xxhash.xxh3_128()
    equal = candidate is not None and len(candidate) == len(data)
    for i in range(0, len(data), _CHUNK):
        chunk = data[i:i + _CHUNK]
        h.update(chunk)
        if equal:
            equal = bytes_equal(chunk, candidate[i:i + _CHUNK])  # type: ignore[index]
    return int(h.intdigest()), equal


def compare_or_digest(data: memoryview, candidate: memoryview | None, candidate_digest: int) -> tuple[int, bool]:
    """Digest of ``data`` and whether it equals ``candidate``, skipping the hash when it does.

    Equal bytes have equal hashes, so when the candidate (guessed from size and head key, and therefore almost
    always a true duplicate) matches byte for byte, its stored digest is ours and only the comparison's two
    memory streams are paid. On a mismatch the data is hashed as well (one extra pass, in the rare case).
    """
    if candidate is not None and len(candidate) == len(data) and bytes_equal(data, candidate):
        return candidate_digest, True
    return digest(data), False
