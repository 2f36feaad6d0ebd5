"""The one compression module: LZ4 frame vs block as a parameter, zlib, the sample check, the codec ids."""

from __future__ import annotations

import os

import lz4.block
import lz4.frame
import pytest

from sutazai_hwopt.cache import l3
from sutazai_hwopt.errors import CorruptionError, InvalidArgumentError
from sutazai_hwopt.memory import compression as comp

TEXT = b'{"agent": "agent_007", "event": "step", "loss": 0.125}\n' * 2000


@pytest.mark.parametrize("framing", ["frame", "block"])
@pytest.mark.parametrize("codec", [comp.LZ4, comp.ZLIB])
def test_round_trip(codec: int, framing: comp.Framing) -> None:
    """Every codec and framing decodes back to the input and shrinks repetitive text."""
    packed = comp.compress(codec, TEXT, framing=framing)
    assert len(packed) < len(TEXT) // 4
    assert comp.decompress(codec, memoryview(packed), framing=framing, size=len(TEXT)) == TEXT


def test_framing_is_the_lz4_wire_format() -> None:
    """'frame' is lz4.frame's self-describing format (what pool blocks store), 'block' the bare stream L3 stores."""
    assert lz4.frame.decompress(comp.compress(comp.LZ4, TEXT)) == TEXT
    assert lz4.block.decompress(comp.compress(comp.LZ4, TEXT, framing="block"), uncompressed_size=len(TEXT)) == TEXT
    with pytest.raises(InvalidArgumentError, match="size"):
        comp.decompress(comp.LZ4, comp.compress(comp.LZ4, TEXT, framing="block"), framing="block")


def test_ids_names_and_errors() -> None:
    """One set of codec ids for pools and L3; bad names and unknown ids are refused."""
    assert (l3.CODEC_NONE, l3.CODEC_LZ4, l3.CODEC_ZLIB) == (comp.RAW, comp.LZ4, comp.ZLIB) == (0, 1, 2)
    assert [comp.codec_id(c) for c in (None, "none", "lz4", "zlib")] == [0, 0, 1, 2]
    with pytest.raises(InvalidArgumentError):
        comp.codec_id("zstd")
    with pytest.raises(InvalidArgumentError):
        comp.compress(comp.RAW, TEXT)
    with pytest.raises(CorruptionError):
        comp.decompress(7, TEXT)
    assert comp.decompress(comp.RAW, memoryview(TEXT)) == TEXT


def test_sample_check() -> None:
    """Random bytes do not pay (stored raw), text does; L3's wrapper agrees and round-trips."""
    noise = os.urandom(1 << 16)
    assert not comp.pays(comp.LZ4, noise, framing="block") and comp.pays(comp.LZ4, TEXT, framing="block")
    assert l3._compress("lz4", noise) == (comp.RAW, noise)
    cid, data = l3._compress("zlib", TEXT)
    assert cid == comp.ZLIB and l3._decompress(cid, data, len(TEXT)) == TEXT
    assert l3._decompress(comp.RAW, memoryview(noise), len(noise)) == noise
