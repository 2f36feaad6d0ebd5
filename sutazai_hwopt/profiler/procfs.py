"""Readers for the host-wide /proc files and plain-Python parsers of the per-process ones.

Host files (``/proc/stat``, ``meminfo``, ``pressure/*``, ``loadavg``, ``diskstats``, ``net/dev``) are read
once per pass through held descriptors (``os.pread`` at offset 0 regenerates a seq_file), which is cheaper
than psutil's open/parse/close per call. The per-process parsers here are the reference model of the
compiled scanner (:mod:`sutazai_hwopt._native.procscan`); tests compare the two on generated texts.
Formats: proc(5); PSI in Documentation/accounting/psi.rst; diskstats in Documentation/admin-guide/iostats.rst.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

__all__ = [
    "HostReader",
    "HostSnapshot",
    "parse_io",
    "parse_schedstat",
    "parse_stat",
    "parse_status",
    "read_children",
    "read_smaps_rollup",
]

_STAT_FIELDS = {10: "minflt", 12: "majflt", 14: "utime", 15: "stime", 19: "nice", 20: "threads",
                22: "starttime", 24: "rss_pages", 39: "processor", 41: "policy", 42: "blkio_ticks"}
_IO_KEYS = {"rchar": "rchar", "wchar": "wchar", "syscr": "syscr", "syscw": "syscw",
            "read_bytes": "read_bytes", "write_bytes": "write_bytes",
            "cancelled_write_bytes": "cancelled_write_bytes"}
_STATUS_KEYS = {"voluntary_ctxt_switches": "voluntary_ctxt_switches",
                "nonvoluntary_ctxt_switches": "nonvoluntary_ctxt_switches", "VmSwap": "vmswap_kb"}


def _int(tok: str) -> float:
    """Leading optionally-signed integer of ``tok`` (what the C parser accepts), NaN when none."""
    sign = 1.0
    i = 0
    if tok[:1] == "-":
        sign, i = -1.0, 1
    j = i
    while j < len(tok) and tok[j].isascii() and tok[j].isdigit():
        j += 1
    return sign * float(int(tok[i:j])) if j > i else math.nan


def parse_stat(data: bytes) -> dict[str, float] | None:
    """Fields of ``/proc/<pid>/stat`` by name; ``None`` when malformed (no ')' or too few fields)."""
    text = data.decode("latin-1")
    rp = text.rfind(")")
    if rp < 0 or rp + 2 >= len(text):
        return None
    rest = text[rp + 2:].split("\n", 1)[0]
    out: dict[str, float] = {"state": float(ord(rest[0]))}
    toks = rest[1:].split(" ")
    toks = [t for t in toks if t != ""]
    for idx, tok in enumerate(toks[:39]):
        name = _STAT_FIELDS.get(idx + 4)
        if name is not None:
            out[name] = _int(tok)
    if len(toks) < 21:
        return None
    return out


def parse_schedstat(data: bytes) -> dict[str, float] | None:
    """``run_ns``, ``wait_ns`` (run-queue wait) and ``slices`` from ``/proc/<pid>/schedstat``."""
    toks = data.split()
    if len(toks) < 3:
        return None
    try:
        return {"run_ns": float(int(toks[0])), "wait_ns": float(int(toks[1])), "slices": float(int(toks[2]))}
    except ValueError:
        return None


def _parse_keyed(data: bytes, keys: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in data.decode("latin-1").split("\n"):
        key, sep, value = line.partition(":")
        if sep and key in keys:
            v = _int(value.lstrip(" \t"))
            if not math.isnan(v):
                out[keys[key]] = v
    return out


def parse_io(data: bytes) -> dict[str, float]:
    """Byte and syscall counters of ``/proc/<pid>/io``."""
    return _parse_keyed(data, _IO_KEYS)


def parse_status(data: bytes) -> dict[str, float]:
    """Context switches (voluntary / involuntary) and VmSwap from ``/proc/<pid>/status``."""
    return _parse_keyed(data, _STATUS_KEYS)


def read_smaps_rollup(pid: int) -> tuple[int, int, int] | None:
    """(USS, PSS, swap) bytes of ``pid`` from ``smaps_rollup``; ``None`` if gone or not permitted.

    USS = Private_Clean + Private_Dirty (the memory freed if the process exits); PSS shares each shared page
    among its mappers, so summing PSS over agents does not double count shared pools.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    uss = pss = swap = 0
    for line in text.split(b"\n"):
        if line.startswith(b"Pss:"):
            pss = int(line.split()[1]) * 1024
        elif line.startswith(b"Private_Clean:") or line.startswith(b"Private_Dirty:"):
            uss += int(line.split()[1]) * 1024
        elif line.startswith(b"Swap:"):
            swap = int(line.split()[1]) * 1024
    return uss, pss, swap


def read_children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (``/proc/<pid>/task/<tid>/children``), [] if gone."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out.extend(int(x) for x in fh.read().split())
        except (OSError, ValueError):
            continue
    return out


@dataclass
class HostSnapshot:
    """One reading of the host counters (cumulative values; rates come from two snapshots)."""

    cpu: dict[str, list[float]] = field(default_factory=dict)  # "cpu", "cpu0"... -> jiffies per state
    meminfo: dict[str, int] = field(default_factory=dict)  # bytes
    pressure: dict[str, dict[str, float]] = field(default_factory=dict)  # cpu/memory/io -> some_avg10...
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    runnable: int = 0
    disks: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # sectors read, written, io ms
    net: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # rx bytes, tx bytes, errs, drops


_CPU_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class HostReader:
    """Held descriptors on the host files; :meth:`read` takes one snapshot (files missing here are skipped)."""

    FILES = ("stat", "meminfo", "loadavg", "diskstats", "net/dev", "pressure/cpu", "pressure/memory",
             "pressure/io")

    def __init__(self, proc: str = "/proc") -> None:
        self._fds: dict[str, int] = {}
        try:  # whole physical disks: /sys/block minus loop/ram/zram/dm devices
            self._whole_disks = {d for d in os.listdir("/sys/block")
                                 if not d.startswith(("loop", "ram", "zram", "dm-", "md"))}
        except OSError:
            self._whole_disks = set()
        for name in self.FILES:
            try:
                self._fds[name] = os.open(f"{proc}/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue

    @property
    def has_psi(self) -> bool:
        return "pressure/cpu" in self._fds

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _read(self, name: str) -> bytes | None:
        fd = self._fds.get(name)
        if fd is None:
            return None
        chunks = []
        off = 0
        while True:
            chunk = os.pread(fd, 65536, off)
            if not chunk:
                break
            chunks.append(chunk)
            off += len(chunk)
            if len(chunk) < 65536:
                break
        return b"".join(chunks)

    def read(self) -> HostSnapshot:
        snap = HostSnapshot()
        data = self._read("stat")
        if data:
            for line in data.split(b"\n"):
                if not line.startswith(b"cpu"):
                    break
                parts = line.split()
                snap.cpu[parts[0].decode()] = [float(x) for x in parts[1:9]]
        data = self._read("meminfo")
        if data:
            for line in data.split(b"\n"):
                parts = line.split()
                if len(parts) >= 2:
                    mult = 1024 if len(parts) > 2 else 1
                    snap.meminfo[parts[0].rstrip(b":").decode()] = int(parts[1]) * mult
        data = self._read("loadavg")
        if data:
            parts = data.split()
            snap.loadavg = (float(parts[0]), float(parts[1]), float(parts[2]))
            snap.runnable = int(parts[3].split(b"/")[0])
        data = self._read("diskstats")
        if data:
            for line in data.split(b"\n"):
                parts = line.split()
                if len(parts) >= 14:
                    name = parts[2].decode()
                    if name not in self._whole_disks:
                        continue  # partitions and virtual devices would double count the whole disk
                    snap.disks[name] = (int(parts[5]), int(parts[9]), int(parts[12]))
        data = self._read("net/dev")
        if data:
            for line in data.split(b"\n")[2:]:
                raw_name, sep, rest = line.partition(b":")
                if not sep:
                    continue
                f = rest.split()
                iface = raw_name.strip().decode()
                if iface == "lo":
                    continue
                snap.net[iface] = (int(f[0]), int(f[8]), int(f[2]) + int(f[10]), int(f[3]) + int(f[11]))
        for res in ("cpu", "memory", "io"):
            data = self._read(f"pressure/{res}")
            if not data:
                continue
            vals: dict[str, float] = {}
            for line in data.split(b"\n"):
                parts = line.split()
                if not parts:
                    continue
                kind = parts[0].decode()
                for kv in parts[1:]:
                    k, _, v = kv.partition(b"=")
                    vals[f"{kind}_{k.decode()}"] = float(v)
            snap.pressure[res] = vals
        return snap


def cpu_states() -> tuple[str, ...]:
    """Names of the /proc/stat CPU columns this module keeps."""
    return _CPU_STATES
