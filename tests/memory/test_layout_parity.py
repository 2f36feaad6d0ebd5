"""The pool tables' layout is one definition shared by C and numpy, and it is the pinned format of META_VERSION 1.

The C structs of ``_native/pool_table_layout.pxd`` are the definition; ``pool_table.struct_layouts()`` reports
them as compiled (offsetof / sizeof) and ``memory.tables`` builds its numpy dtypes from that. These tests fail if
the numpy side stops matching the C side field by field, if the compiled layout differs from the format that
segments already in ``/dev/shm`` use (a change needs a META_VERSION bump and a new table here), or if a value
written through one side is not read back through the other.
"""

from __future__ import annotations

import numpy as np
import pytest

from sutazai_hwopt._native import pool_table
from sutazai_hwopt.memory import tables
from sutazai_hwopt.memory.tables import Tables, meta_bytes, table_sizes

DTYPES = {"meta_hdr": tables.HEADER_DTYPE, "agent": tables.AGENT_DTYPE, "block": tables.BLOCK_DTYPE,
          "slot": tables.SLOT_DTYPE}

#: The on-segment format of META_VERSION 1: struct -> (size, ((field, offset, size, C type), ...)).
VERSION_1 = {
    "meta_hdr": (64, (("magic", 0, 8, "uint64_t"), ("version", 8, 4, "uint32_t"), ("destroyed", 12, 4, "uint32_t"),
                      ("n_agents", 16, 4, "uint32_t"), ("n_blocks", 20, 4, "uint32_t"),
                      ("n_holders", 24, 4, "uint32_t"), ("n_dedup", 28, 4, "uint32_t"), ("n_ext", 32, 8, "uint64_t"),
                      ("max_heap", 40, 8, "uint64_t"), ("ext_size", 48, 8, "uint64_t"), ("pad", 56, 8, "uint64_t"))),
    "agent": (64, (("name", 0, 48, "char [48]"), ("pid", 48, 4, "int32_t"), ("pad", 52, 4, "uint32_t"),
                   ("start", 56, 8, "uint64_t"))),
    "block": (64, (("state", 0, 1, "uint8_t"), ("codec", 1, 1, "uint8_t"), ("shuffle", 2, 1, "uint8_t"),
                   ("flags", 3, 1, "uint8_t"), ("gen", 4, 4, "uint32_t"), ("off", 8, 8, "uint64_t"),
                   ("size", 16, 8, "uint64_t"), ("nbytes", 24, 8, "uint64_t"), ("refs", 32, 4, "uint32_t"),
                   ("target", 36, 4, "int32_t"), ("h_lo", 40, 8, "uint64_t"), ("h_hi", 48, 8, "uint64_t"),
                   ("owner", 56, 4, "uint32_t"), ("head", 60, 4, "uint32_t"))),
    "slot": (16, (("key", 0, 8, "uint64_t"), ("val", 8, 4, "uint32_t"), ("pad", 12, 4, "uint32_t"))),
}


def mismatches(dtype: np.dtype, layout: tuple[int, tuple[tuple[str, int, int, str], ...]]) -> list[str]:
    """Every difference between a numpy dtype and a compiled struct: names, order, offsets, sizes, item size."""
    size, fields = layout
    out = [] if dtype.itemsize == size else [f"itemsize {dtype.itemsize} != sizeof {size}"]
    names = [f[0] for f in fields]
    if list(dtype.names or ()) != names:
        out.append(f"fields {dtype.names} != {tuple(names)}")
    for name, off, fsize, ctype in fields:
        if dtype.names is None or name not in dtype.names:
            continue
        ftype, foff = dtype.fields[name][:2]
        if (foff, ftype.itemsize) != (off, fsize):
            out.append(f"{name}: numpy offset {foff} size {ftype.itemsize}, C offset {off} size {fsize}")
        if ftype != np.dtype(tables.NUMPY_OF_C[ctype]):
            out.append(f"{name}: numpy type {ftype}, C type {ctype}")
    return out


@pytest.mark.parametrize("struct", sorted(DTYPES))
def test_numpy_dtype_matches_the_compiled_struct(struct: str) -> None:
    """Every field of the numpy dtype sits at the C field's offset, with its size and type."""
    assert mismatches(DTYPES[struct], pool_table.struct_layouts()[struct]) == []


@pytest.mark.parametrize("struct", sorted(VERSION_1))
def test_compiled_layout_is_the_version_1_format(struct: str) -> None:
    """The compiled structs are the format existing segments use; a change must bump META_VERSION."""
    assert pool_table.META_VERSION == 1, "META_VERSION changed: pin the new format in VERSION_1"
    assert pool_table.struct_layouts()[struct] == VERSION_1[struct]


def test_struct_layouts_cover_the_meta_area() -> None:
    """The compiled structs are exactly the ones the meta area is made of, and meta_bytes() sums them."""
    layouts = pool_table.struct_layouts()
    assert set(layouts) == set(VERSION_1)
    sizes = table_sizes(10, 3)
    assert meta_bytes(sizes) == (layouts["meta_hdr"][0] + sizes["n_agents"] * layouts["agent"][0]
                                 + sizes["n_blocks"] * layouts["block"][0]
                                 + (sizes["n_holders"] + sizes["n_dedup"]) * layouts["slot"][0])


@pytest.mark.parametrize("struct", sorted(DTYPES))
def test_the_check_catches_a_moved_or_resized_field(struct: str) -> None:
    """A dtype with one field moved, retyped or dropped is reported (the check above cannot pass vacuously)."""
    layout = pool_table.struct_layouts()[struct]
    dt = DTYPES[struct]
    names = list(dt.names or ())
    last = names[-1]
    moved = np.dtype({"names": names, "formats": [dt.fields[n][0] for n in names],
                      "offsets": [dt.fields[n][1] + (1 if n == last else 0) for n in names],
                      "itemsize": dt.itemsize + 1})
    assert mismatches(moved, layout)
    first = names[0]
    wider = "<u8" if dt.fields[first][0] != np.dtype("<u8") else "<u4"
    retyped = np.dtype({"names": names, "formats": [wider if n == first else dt.fields[n][0] for n in names],
                        "offsets": [dt.fields[n][1] for n in names], "itemsize": dt.itemsize})
    assert mismatches(retyped, layout)
    dropped = np.dtype({"names": names[1:], "formats": [dt.fields[n][0] for n in names[1:]],
                        "offsets": [dt.fields[n][1] for n in names[1:]], "itemsize": dt.itemsize})
    assert mismatches(dropped, layout)


def test_shared_constants_come_from_the_core() -> None:
    """States, flags and the holder key's agent bits are the compiled module's values, not copies."""
    assert (tables.FREE, tables.WRITING, tables.SEALED, tables.ALIAS) == (
        pool_table.FREE, pool_table.WRITING, pool_table.SEALED, pool_table.ALIAS) == (0, 1, 2, 3)
    assert (tables.F_DEDUP, tables.F_INDEXED) == (pool_table.F_DEDUP, pool_table.F_INDEXED) == (1, 2)
    assert tables.MAX_AGENTS == 1 << pool_table.AGENT_BITS
    assert tables.META_MAGIC == pool_table.META_MAGIC == int.from_bytes(b"SZHWMETA", "little")


def test_values_cross_between_c_and_numpy() -> None:
    """Fields written by the C core read back through the numpy views, and the other way round."""
    sizes = table_sizes(8, 4)
    buf = bytearray(meta_bytes(sizes) + 64)
    t = Tables(memoryview(buf), 64, len(buf) - 64, sizes)
    try:
        t.register_agent(b"agent-x", 4321, 99)                     # numpy writes, C reads
        assert t.core.agent_is(0, b"agent-x") and not t.core.agent_is(0, b"agent-y")
        gen = t.core.new_block(5, tables.WRITING, 0x1234_5678_9A, 1000, 2000, 2, 8, tables.F_DEDUP, 0, -1,
                               0x1111_2222_3333_4444, 0x5555_6666_7777_8888, 0xABCDEF)   # C writes, numpy reads
        row = t.blocks[5]
        assert (int(row["state"]), int(row["codec"]), int(row["shuffle"]), int(row["flags"])) == (
            tables.WRITING, 2, 8, tables.F_DEDUP)
        assert (int(row["gen"]), int(row["off"]), int(row["size"]), int(row["nbytes"])) == (
            gen, 0x1234_5678_9A, 1000, 2000)
        assert (int(row["refs"]), int(row["target"]), int(row["owner"]), int(row["head"])) == (1, -1, 0, 0xABCDEF)
        assert (int(row["h_lo"]), int(row["h_hi"])) == (0x1111_2222_3333_4444, 0x5555_6666_7777_8888)
        assert t.holders.items() == [(tables.holder_key(5, 0), 1)]     # the C holder entry, probed by numpy
        t.core.dedup_insert(0x77, 5)
        assert t.dedup.find(tables.dedup_key(0x77)) >= 0 and t.dedup_lookup(0x77) == 5
        assert not t.destroyed
        t.mark_destroyed()                                             # numpy writes the header, C reads it
        assert t.destroyed and t.core.destroyed()
    finally:
        t.close()
