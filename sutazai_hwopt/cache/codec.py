"""Keys and values of the shared tiers: key normalisation and the (kind, head, body) value encoding.

Keys are ``str``, ``bytes`` or ``int`` and become tagged bytes (``s``/``b``/``i`` + payload), so ``1``, ``"1"``
and ``b"1"`` are three different keys in every tier; they are hashed with XXH3-64 (the ``xxhash`` package).

Values: ``bytes``-like and C-contiguous numpy arrays are stored raw so a reader gets a zero-copy, read-only view
of shared memory; ``str`` as UTF-8; anything else through pickle protocol 5 (PEP 574) with its out-of-band
buffers stored raw after the pickle stream, so large arrays inside objects are not copied into the stream.

Trust: bytes, str and arrays decode without running code (an array's dtype, structured ones included, is stored
as the ``.npy`` format's text description and read back with ``ast.literal_eval``, never with pickle). Only
``KIND_PICKLE`` values run code when decoded; :func:`decode` unpickles them only when ``allow_pickle`` is true,
which the tiers set only for data whose writer is authenticated (a segment or directory checked to be this
user's, see :mod:`sutazai_hwopt.trust`).
"""

from __future__ import annotations

import ast
import pickle
import struct
from typing import Any

import xxhash

from ..errors import InvalidArgumentError, TrustError

__all__ = ["KIND_BYTES", "KIND_NDARRAY", "KIND_PICKLE", "KIND_STR", "decode", "encode", "join_body", "key_bytes",
           "key_hash", "value_size"]

KIND_BYTES = 1
KIND_NDARRAY = 2
KIND_PICKLE = 3
KIND_STR = 4
MAX_KEY = 65535
_ND = struct.Struct("<B")
_Q = struct.Struct("<Q")


def key_bytes(key: object) -> bytes:
    """Tagged bytes of a str / bytes / int key.

    Raises:
        InvalidArgumentError: another type (including ``bool``), or longer than 65535 bytes.
    """
    if isinstance(key, str):
        kb = b"s" + key.encode("utf-8", "surrogatepass")
    elif isinstance(key, bytes):
        kb = b"b" + key
    elif isinstance(key, int) and not isinstance(key, bool):
        kb = b"i" + str(int(key)).encode()
    else:
        raise InvalidArgumentError(f"key must be a str, bytes or int, got {type(key).__name__} {key!r:.60}")
    if len(kb) > MAX_KEY:
        raise InvalidArgumentError(f"key is {len(kb) - 1} bytes long; at most {MAX_KEY - 1} are allowed")
    return kb


def key_from_bytes(kb: bytes) -> str | bytes | int:
    """Inverse of :func:`key_bytes`."""
    tag, rest = kb[:1], kb[1:]
    if tag == b"s":
        return rest.decode("utf-8", "surrogatepass")
    if tag == b"i":
        return int(rest)
    return bytes(rest)


key_hash = xxhash.xxh3_64_intdigest


def _r64(n: int) -> int:
    return (n + 63) & ~63


def encode(value: Any) -> tuple[int, bytes, list[Any]]:
    """``(kind, head, body buffers)`` for a value; the body is stored 64-byte aligned, per buffer.

    Raises:
        InvalidArgumentError: the value cannot be pickled (the message names its type and the reason).
    """
    if isinstance(value, (bytes, bytearray)):
        return KIND_BYTES, b"", [value]
    if isinstance(value, memoryview):
        return KIND_BYTES, b"", [value if value.contiguous else value.tobytes()]
    if isinstance(value, str):
        return KIND_STR, b"", [value.encode("utf-8", "surrogatepass")]
    np = _numpy_if_loaded()
    if np is not None and type(value) is np.ndarray and value.dtype.hasobject is False:
        arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        dt = arr.dtype.str.encode() if arr.dtype.names is None else repr(_descr(arr.dtype)).encode()
        head = _ND.pack(arr.ndim) + b"".join(_Q.pack(d) for d in arr.shape) + dt
        return KIND_NDARRAY, head, [arr]
    buffers: list[pickle.PickleBuffer] = []
    try:
        stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:  # PicklingError, TypeError, AttributeError, ... from arbitrary objects
        raise InvalidArgumentError(
            f"value of type {type(value).__name__} cannot be stored in a shared tier: it is not picklable "
            f"({type(exc).__name__}: {exc})") from exc
    raws = [b.raw() for b in buffers]
    head = _Q.pack(len(raws)) + b"".join(_Q.pack(r.nbytes) for r in raws) + stream
    return KIND_PICKLE, head, raws


def _descr(dtype: Any) -> Any:
    from numpy.lib import format as npy_format

    return npy_format.dtype_to_descr(dtype)


def _dtype_from(text: bytes) -> Any:
    """A dtype from its stored description: ``dtype.str`` or a structured ``.npy`` descr (no code is run)."""
    import numpy as np
    from numpy.lib import format as npy_format

    s = text.decode("ascii")
    if s.startswith("["):
        return npy_format.descr_to_dtype(ast.literal_eval(s))
    return np.dtype(s)


def decode(kind: int, head: bytes, body: Any, *, allow_pickle: bool = True) -> Any:
    """Rebuild a value from ``encode``'s parts; ``body`` may be a pinned zero-copy view (kept alive by the
    result for bytes, arrays and pickle buffers).

    Raises:
        TrustError: a pickled value while ``allow_pickle`` is false (its writer is not authenticated).
    """
    if kind == KIND_BYTES:
        return memoryview(body)
    if kind == KIND_STR:
        return bytes(body).decode("utf-8", "surrogatepass")
    if kind == KIND_NDARRAY:
        import numpy as np

        ndim = head[0]
        shape = tuple(_Q.unpack_from(head, 1 + 8 * i)[0] for i in range(ndim))
        rest = head[1 + 8 * ndim:]
        arr = np.frombuffer(body, dtype=_dtype_from(bytes(rest)), count=_count(shape))
        return arr.reshape(shape)
    if kind == KIND_PICKLE:
        if not allow_pickle:
            raise TrustError("refusing to unpickle a cached value whose writer is not authenticated (a namespace "
                             "shared by a group without allow_pickle); store bytes, str or arrays instead")
        n = _Q.unpack_from(head, 0)[0]
        lens = [_Q.unpack_from(head, 8 + 8 * i)[0] for i in range(n)]
        stream = head[8 + 8 * n:]
        mv = memoryview(body)
        bufs, pos = [], 0
        for ln in lens:
            bufs.append(mv[pos:pos + ln])
            pos += _r64(ln)
        return pickle.loads(stream, buffers=bufs)
    raise InvalidArgumentError(f"unknown value kind {kind}")


def join_body(parts: list[Any]) -> bytes:
    """One contiguous body as stored in a tier (each buffer 64-byte aligned when there are several)."""
    if len(parts) == 1:
        return bytes(memoryview(parts[0]).cast("B"))
    out = bytearray()
    for p in parts:
        mv = memoryview(p).cast("B")
        out += mv
        out += bytes(_r64(mv.nbytes) - mv.nbytes)
    return bytes(out)


def value_size(value: Any) -> int:
    """Approximate bytes a value holds (L1 weigher): buffer size for bytes/arrays/str, else 64."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 64
    if isinstance(value, memoryview):
        return value.nbytes + 64
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes + 128
    return 256


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _numpy_if_loaded() -> Any:
    import sys

    return sys.modules.get("numpy")
