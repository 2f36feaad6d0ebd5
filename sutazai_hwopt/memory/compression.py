"""The package's one compression module: LZ4 (frame or block) or zlib, a sample check, a byte shuffle.

Used by the memory pools (per-block codecs, LZ4 *frame*) and by the cache's L3 tier (LZ4 *block*: no frame
header or checksum, the tier stores the raw length itself); the framing is a parameter, the codec ids are shared.

* LZ4 (the ``lz4`` package: decompresses at GB/s) is the default choice; the frame format is self-describing and
  checksummed, the block format is the bare stream (smaller, needs the decompressed size to decode). zlib
  (standard library, level 1 for speed) compresses text further at a fraction of the speed.
* Before compressing a large buffer we compress a sample (the pools: up to three 64 KiB slices from the start,
  middle and end); if the sample does not shrink below :data:`SAMPLE_RATIO` the data is stored raw, so random
  or already-compressed data costs one sample, not a full pass (:func:`pays`).
* Byte shuffle (the filter of HDF5/Blosc, Alted 2010, "Why modern CPUs are starving..."): for numeric arrays,
  byte ``k`` of every element is grouped together before compressing. Exponent bytes of floats are highly
  repetitive, mantissa bytes are not; grouping them lets the codec find the repetition.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np

from ..errors import CorruptionError, InvalidArgumentError

__all__ = ["CODECS", "CODEC_NAMES", "LZ4", "RAW", "SAMPLE_RATIO", "ZLIB", "Framing", "codec_id", "compress",
           "decode_into", "decompress", "encode", "pays"]

#: Codec ids, as stored in a pool's block table and in an L3 entry's header (0 = stored raw).
RAW, LZ4, ZLIB = 0, 1, 2
#: codec name -> id.
CODECS: dict[str, int] = {"lz4": LZ4, "zlib": ZLIB}
CODEC_NAMES: dict[int, str] = {RAW: "none", LZ4: "lz4", ZLIB: "zlib"}
#: How LZ4 output is framed: "frame" (self-describing, checksummed) or "block" (bare; decoding needs the size).
Framing = Literal["frame", "block"]
#: Store raw when the sample compresses to more than this fraction of its size.
SAMPLE_RATIO = 0.9
_SAMPLE = 64 * 1024
ZLIB_LEVEL = 1


def codec_id(compression: str | None) -> int:
    """Validate a ``compression=`` argument (None, ``"none"``, ``"lz4"`` or ``"zlib"``) into a codec id."""
    if compression is None or compression == "none":
        return RAW
    if isinstance(compression, str) and compression in CODECS:
        return CODECS[compression]
    raise InvalidArgumentError(f"compression must be None, 'lz4' or 'zlib', got {compression!r}")


def compress(codec: int, data: memoryview | bytes, *, framing: Framing = "frame") -> bytes:
    """Compress with codec ``LZ4`` (framed as asked) or ``ZLIB``."""
    if codec == LZ4:
        if framing == "block":
            import lz4.block

            return lz4.block.compress(data, store_size=False)
        import lz4.frame

        return lz4.frame.compress(data, store_size=True)
    if codec == ZLIB:
        return zlib.compress(data, ZLIB_LEVEL)
    raise InvalidArgumentError(f"codec must be LZ4 ({LZ4}) or ZLIB ({ZLIB}), got {codec!r}")


def decompress(codec: int, data: memoryview | bytes, *, framing: Framing = "frame", size: int | None = None) -> bytes:
    """Inverse of :func:`compress`; ``RAW`` returns the bytes as they are. LZ4 blocks need ``size`` (the
    decompressed length)."""
    if codec == LZ4:
        if framing == "block":
            import lz4.block

            if size is None:
                raise InvalidArgumentError("decompressing an LZ4 block needs its decompressed size")
            return lz4.block.decompress(data, uncompressed_size=size)
        import lz4.frame

        return lz4.frame.decompress(data)
    if codec == ZLIB:
        return zlib.decompress(data)
    if codec == RAW:
        return bytes(data)
    raise CorruptionError(f"unknown codec id {codec!r}")


def pays(codec: int, sample: memoryview | bytes, *, framing: Framing = "frame") -> bool:
    """True if compressing ``sample`` shrinks it to at most :data:`SAMPLE_RATIO` of its size."""
    return len(compress(codec, sample, framing=framing)) <= SAMPLE_RATIO * len(sample)


def shuffle(data: memoryview, itemsize: int) -> bytes:
    """Group byte ``k`` of every ``itemsize``-byte element together (the trailing partial element is kept)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    whole = len(raw) - len(raw) % itemsize
    out = np.empty(len(raw), dtype=np.uint8)
    out[:whole].reshape(itemsize, -1)[...] = raw[:whole].reshape(-1, itemsize).T
    out[whole:] = raw[whole:]
    return out.tobytes()


def unshuffle_into(data: bytes, itemsize: int, out: memoryview) -> None:
    """Inverse of :func:`shuffle`, written straight into ``out``."""
    raw = np.frombuffer(data, dtype=np.uint8)
    dst = np.frombuffer(out, dtype=np.uint8)
    whole = len(raw) - len(raw) % itemsize
    dst[:whole].reshape(-1, itemsize)[...] = raw[:whole].reshape(itemsize, -1).T
    dst[whole:] = raw[whole:]


def _sample(data: memoryview, itemsize: int) -> bytes:
    # Up to three slices from the start, middle and end, cut on element boundaries.
    n = len(data)
    if n <= 3 * _SAMPLE:
        return bytes(data)
    step = max(itemsize, 1)
    mid = (n // 2) // step * step
    end = (n - _SAMPLE) // step * step
    return bytes(data[:_SAMPLE]) + bytes(data[mid:mid + _SAMPLE]) + bytes(data[end:end + _SAMPLE])


def encode(data: memoryview, compression: str | None, itemsize: int = 1) -> tuple[int, int, memoryview | bytes]:
    """Prepare a block's stored bytes: returns ``(codec id, shuffle itemsize, payload)``.

    The payload is ``data`` itself (no copy) when compression is off, the sample (shuffled like the data) says
    it would not pay, or the compressed result is not smaller.
    """
    codec = codec_id(compression)
    if codec == RAW or len(data) == 0:
        return RAW, 0, data
    shuf = itemsize if itemsize > 1 else 0
    sample = _sample(data, itemsize)
    if shuf:
        sample = shuffle(memoryview(sample), itemsize)
    if not pays(codec, sample):
        return 0, 0, data
    payload = compress(codec, shuffle(data, itemsize) if shuf else data)
    if len(payload) >= len(data):
        return 0, 0, data
    return codec, shuf, payload


def decode_into(codec: int, shuf: int, payload: memoryview, nbytes: int, out: memoryview) -> None:
    """Decompress ``payload`` into ``out`` (exactly ``nbytes`` bytes), undoing the shuffle on the way."""
    if codec == RAW:
        out[:nbytes] = payload[:nbytes]
        return
    raw = decompress(codec, payload)
    if len(raw) != nbytes:
        raise CorruptionError(f"compressed block decoded to {len(raw)} bytes, expected {nbytes}")
    if shuf:
        unshuffle_into(raw, shuf, out[:nbytes])
    else:
        out[:nbytes] = raw
