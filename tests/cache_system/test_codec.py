"""Key normalisation and the value encoding round-trip (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sutazai_hwopt.cache.codec import decode, encode, join_body, key_bytes, key_from_bytes
from sutazai_hwopt.errors import InvalidArgumentError

KEYS = st.one_of(st.text(max_size=50), st.binary(max_size=50), st.integers(-(10**30), 10**30))
PLAIN = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
              st.binary(max_size=40)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
ARRAYS = hnp.arrays(dtype=st.sampled_from([np.int8, np.int64, np.float32, np.float64, np.complex64, np.bool_]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))


@settings(max_examples=200, deadline=None)
@given(KEYS)
def test_key_round_trip(key: object) -> None:
    """Every str/bytes/int key maps to tagged bytes and back, and distinct types never collide."""
    kb = key_bytes(key)
    assert key_from_bytes(kb) == key and type(key_from_bytes(kb)) is type(key)


@settings(max_examples=150, deadline=None)
@given(st.one_of(PLAIN, st.binary(max_size=300), st.text(max_size=100)))
def test_value_round_trip(value: object) -> None:
    """Plain values come back equal through encode / join_body / decode (the layout every tier stores)."""
    kind, head, body = encode(value)
    out = decode(kind, head, join_body(body) if body else b"")
    if isinstance(value, (bytes, bytearray)):
        assert bytes(out) == value
    else:
        assert out == value


@settings(max_examples=100, deadline=None)
@given(ARRAYS)
def test_array_round_trip(arr: np.ndarray) -> None:
    """Arrays (also non-contiguous views, 0-d) come back with their dtype, shape and values, read-only."""
    for a in (arr, arr.T):
        kind, head, body = encode(a)
        out = decode(kind, head, join_body(body))
        assert out.dtype == a.dtype and out.shape == a.shape and not out.flags.writeable
        np.testing.assert_array_equal(out, a)


def test_object_with_arrays_uses_out_of_band_buffers() -> None:
    """Arrays inside objects travel as raw out-of-band buffers, not inside the pickle stream."""
    big = np.arange(100_000, dtype=np.float64)
    kind, head, body = encode({"w": big, "b": [1, 2]})
    assert len(head) < 1000 and sum(memoryview(b).nbytes for b in body) >= big.nbytes
    out = decode(kind, head, join_body(body))
    np.testing.assert_array_equal(out["w"], big)


def test_long_key_is_rejected() -> None:
    """Keys longer than 65534 bytes raise InvalidArgumentError."""
    key_bytes("x" * 65534)
    with pytest.raises(InvalidArgumentError, match="at most"):
        key_bytes("x" * 65535)
