"""The compiled /proc scanner: parser parity with the Python reference, slot bookkeeping, real processes."""

from __future__ import annotations

import math
import os
import subprocess
import time

import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sutazai_hwopt._native import procscan
from sutazai_hwopt.profiler import procfs

C = {n: i for i, n in enumerate(procscan.COLUMNS)}


def test_default_import_is_compiled() -> None:
    """The scanner is the compiled extension, not a Python fallback."""
    assert procscan.__file__.endswith(".so")
    assert len(procscan.COLUMNS) == procscan.NCOLUMNS


def _row() -> np.ndarray:
    return np.full(procscan.NCOLUMNS, np.nan)


comm = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00"),
               max_size=16)
nums = st.lists(st.integers(min_value=-(2**40), max_value=2**50), min_size=21, max_size=50)


@settings(max_examples=200, deadline=None)
@given(pid=st.integers(1, 2**22), name=comm, state=st.sampled_from("RSDZTtXI"), fields=nums)
def test_stat_parser_matches_reference(pid: int, name: str, state: str, fields: list[int]) -> None:
    """C and Python parse the same stat fields, even with spaces and parentheses in comm."""
    text = f"{pid} ({name}) {state} " + " ".join(map(str, fields)) + "\n"
    data = text.encode("utf-8")
    row = _row()
    rc = procscan.parse("stat", data, row)
    ref = procfs.parse_stat(data)
    assert (rc == 0) == (ref is not None)
    assert ref is not None
    for key, value in ref.items():
        got = row[C[key]]
        assert (math.isnan(got) and math.isnan(value)) or got == value, key


@settings(max_examples=100, deadline=None)
@given(vals=st.lists(st.integers(0, 2**52), min_size=7, max_size=7), junk=st.sampled_from(["", "x: 1\n"]))
def test_io_parser_matches_reference(vals: list[int], junk: str) -> None:
    """C and Python read the same /proc/<pid>/io counters."""
    keys = ["rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes", "cancelled_write_bytes"]
    data = (junk + "".join(f"{k}: {v}\n" for k, v in zip(keys, vals))).encode()
    row = _row()
    procscan.parse("io", data, row)
    ref = procfs.parse_io(data)
    assert ref == {k: float(v) for k, v in zip(keys, vals)}
    for k, v in ref.items():
        assert row[C[k]] == v


@settings(max_examples=100, deadline=None)
@given(vol=st.integers(0, 2**40), inv=st.integers(0, 2**40), swap=st.integers(0, 2**30))
def test_status_parser_matches_reference(vol: int, inv: int, swap: int) -> None:
    """Context switches and VmSwap come out of status the same in C and Python."""
    data = (f"Name:\tx\nVmSwap:\t   {swap} kB\nThreads:\t1\nvoluntary_ctxt_switches:\t{vol}\n"
            f"nonvoluntary_ctxt_switches:\t{inv}\n").encode()
    row = _row()
    procscan.parse("status", data, row)
    ref = procfs.parse_status(data)
    assert ref == {"voluntary_ctxt_switches": vol, "nonvoluntary_ctxt_switches": inv, "vmswap_kb": swap}
    assert (row[C["voluntary_ctxt_switches"]], row[C["nonvoluntary_ctxt_switches"]], row[C["vmswap_kb"]]) == (
        vol, inv, swap)


def test_malformed_texts_are_rejected() -> None:
    """A stat without ')' or with too few fields, or a short schedstat, is reported malformed."""
    row = _row()
    assert procscan.parse("stat", b"12 noparen S 1 2", row) == -1
    assert procscan.parse("stat", b"12 (x) S 1 2 3", row) == -1
    assert procfs.parse_stat(b"12 (x) S 1 2 3") is None
    assert procscan.parse("schedstat", b"1 2", row) == -1
    assert procfs.parse_schedstat(b"1 2") is None
    with pytest.raises(ValueError, match="kind must be one of"):
        procscan.parse("nope", b"", row)
    with pytest.raises(ValueError, match="columns"):
        procscan.parse("stat", b"", np.zeros(3))


def test_scan_reads_a_real_process_like_psutil() -> None:
    """Threads, RSS and start time read through held descriptors agree with psutil; exit is reported."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        for _ in range(500):  # bounded wait until the child has exec'd sleep (not a timing assertion)
            if psutil.Process(proc.pid).name() == "sleep":
                break
            time.sleep(0.01)
        sc = procscan.ProcScanner(4)
        assert sc.open_slot(2, proc.pid, True, True)
        out = np.full((4, procscan.NCOLUMNS), np.nan)
        ok = np.zeros(4, np.uint8)
        assert sc.open_slot(1, os.getpid())
        assert sc.scan(out, ok) == 2
        assert list(ok) == [0, 1, 1, 0]
        assert out[2, C["threads"]] == psutil.Process(proc.pid).num_threads()
        # RSS: compare on this (large) process; the kernel's per-CPU RSS counters are approximate, which
        # matters only for a tiny process like sleep
        rss = out[1, C["rss_pages"]] * os.sysconf("SC_PAGE_SIZE")
        assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.1)
        assert out[2, C["children_hash"]] == 0  # sleep has no children
        assert out[2, C["slices"]] >= 1
        proc.kill()
        proc.wait()
        assert sc.scan(out, ok) == 1 and ok[2] == 0 and ok[1] == 1
        sc.close_all()
        assert sc.open_fds == 0
    finally:
        proc.kill()
        proc.wait()


def test_scanner_rejects_bad_arguments() -> None:
    """Capacity, slot and output shapes are checked; a missing pid cannot be opened."""
    with pytest.raises(ValueError, match="capacity"):
        procscan.ProcScanner(0)
    sc = procscan.ProcScanner(2)
    with pytest.raises(IndexError, match="slot"):
        sc.open_slot(2, os.getpid())
    with pytest.raises(ValueError, match="shape"):
        sc.scan(np.zeros((1, procscan.NCOLUMNS)), np.zeros(2, np.uint8))
    assert not sc.open_slot(0, 2**22 + 12345)
    assert sc.open_fds == 0


class ScannerMachine(RuleBasedStateMachine):
    """ProcScanner slots against a dict model: which slots are open, how many fds, what scan reports."""

    def __init__(self) -> None:
        super().__init__()
        self.sc = procscan.ProcScanner(6)
        self.model: dict[int, bool] = {}  # slot -> with_status
        self.me = os.getpid()

    @rule(slot=st.integers(0, 5), status=st.booleans())
    def open(self, slot: int, status: bool) -> None:
        assert self.sc.open_slot(slot, self.me, status)
        self.model[slot] = status

    @rule(slot=st.integers(0, 5))
    def close(self, slot: int) -> None:
        self.sc.close_slot(slot)
        self.model.pop(slot, None)

    @precondition(lambda self: bool(self.model))
    @rule()
    def scan(self) -> None:
        out = np.full((6, procscan.NCOLUMNS), np.nan)
        ok = np.zeros(6, np.uint8)
        assert self.sc.scan(out, ok) == len(self.model)
        assert {i for i in range(6) if ok[i]} == set(self.model)
        for slot in self.model:
            assert out[slot, C["threads"]] >= 1

    @invariant()
    def fds_match(self) -> None:
        expected = sum(4 if s else 3 for s in self.model.values())
        assert self.sc.open_fds == expected
        assert all(self.sc.is_open(i) == (i in self.model) for i in range(6))

    def teardown(self) -> None:
        self.sc.close_all()
        assert self.sc.open_fds == 0


TestScannerMachine = ScannerMachine.TestCase
TestScannerMachine.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
