"""Per-block compression: LZ4 frame or zlib, a sample check that skips incompressible data, a byte shuffle.

* LZ4 (the ``lz4`` package, frame format: self-describing, checksummed, decompresses at GB/s) is the default
  choice; zlib (standard library, level 1 for speed) compresses text further at a fraction of the speed.
* Before compressing a large buffer we compress a sample (up to three 64 KiB slices from the start, middle
  and end); if the sample does not shrink below :data:`SAMPLE_RATIO` the block is stored raw, so random or
  already-compressed data costs one sample, not a full pass.
* Byte shuffle (the filter of HDF5/Blosc, Alted 2010, "Why modern CPUs are starving..."): for numeric arrays,
  byte ``k`` of every element is grouped together before compressing. Exponent bytes of floats are highly
  repetitive, mantissa bytes are not; grouping them lets the codec find the repetition.
"""

from __future__ import annotations

import zlib

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["CODECS", "CODEC_NAMES", "SAMPLE_RATIO", "decode_into", "encode"]

#: codec name -> id stored in the block table (0 = raw).
CODECS: dict[str, int] = {"lz4": 1, "zlib": 2}
CODEC_NAMES: dict[int, str] = {0: "none", 1: "lz4", 2: "zlib"}
#: Store raw when the sample compresses to more than this fraction of its size.
SAMPLE_RATIO = 0.9
_SAMPLE = 64 * 1024
ZLIB_LEVEL = 1


def codec_id(compression: str | None) -> int:
    """Validate a ``compression=`` argument."""
    if compression is None or compression == "none":
        return 0
    if isinstance(compression, str) and compression in CODECS:
        return CODECS[compression]
    raise InvalidArgumentError(f"compression must be None, 'lz4' or 'zlib', got {compression!r}")


def _compress(codec: int, data: memoryview | bytes) -> bytes:
    if codec == 1:
        import lz4.frame

        return lz4.frame.compress(data, store_size=True)
    return zlib.compress(data, ZLIB_LEVEL)


def _decompress(codec: int, data: memoryview | bytes) -> bytes:
    if codec == 1:
        import lz4.frame

        return lz4.frame.decompress(data)
    return zlib.decompress(data)


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
    if codec == 0 or len(data) == 0:
        return 0, 0, data
    shuf = itemsize if itemsize > 1 else 0
    sample = _sample(data, itemsize)
    if shuf:
        sample = shuffle(memoryview(sample), itemsize)
    if len(_compress(codec, sample)) > SAMPLE_RATIO * len(sample):
        return 0, 0, data
    payload = _compress(codec, shuffle(data, itemsize) if shuf else data)
    if len(payload) >= len(data):
        return 0, 0, data
    return codec, shuf, payload


def decode_into(codec: int, shuf: int, payload: memoryview, nbytes: int, out: memoryview) -> None:
    """Decompress ``payload`` into ``out`` (exactly ``nbytes`` bytes), undoing the shuffle on the way."""
    if codec == 0:
        out[:nbytes] = payload[:nbytes]
        return
    raw = _decompress(codec, payload)
    if len(raw) != nbytes:
        from ..errors import CorruptionError

        raise CorruptionError(f"compressed block decoded to {len(raw)} bytes, expected {nbytes}")
    if shuf:
        unshuffle_into(raw, shuf, out[:nbytes])
    else:
        out[:nbytes] = raw
