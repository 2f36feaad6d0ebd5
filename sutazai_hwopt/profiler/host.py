"""Host-wide metrics: rates between two snapshots of the /proc counters, as a ring row and a metrics dict.

PSI shares are computed from the cumulative ``total`` stall microseconds over the sampling interval
(more responsive than the kernel's ``avg10`` decaying average, which is also reported).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .procfs import HostReader, HostSnapshot

__all__ = ["HOST_COLUMNS", "HostSampler"]

HOST_COLUMNS = ("cpu_util", "cpu_user", "cpu_system", "cpu_iowait", "cpu_steal", "mem_available",
                "mem_used_pct", "mem_cached", "swap_used", "load1", "runnable", "psi_cpu_some",
                "psi_memory_some", "psi_memory_full", "psi_io_some", "psi_io_full", "disk_read_bps",
                "disk_write_bps", "disk_util_pct", "net_rx_bps", "net_tx_bps", "net_errors_ps", "net_drops_ps",
                "disk_free")
H = {name: i for i, name in enumerate(HOST_COLUMNS)}
_NAN = float("nan")


def _cpu_pcts(a: list[float], b: list[float]) -> dict[str, float]:
    d = [max(0.0, y - x) for x, y in zip(a, b)]
    total = sum(d)
    if total <= 0:
        return {"utilization": _NAN, "user": _NAN, "system": _NAN, "iowait": _NAN, "steal": _NAN}
    user, nice, system, idle, iowait, irq, softirq, steal = d[:8]
    return {"utilization": 100.0 * (total - idle - iowait) / total, "user": 100.0 * (user + nice) / total,
            "system": 100.0 * (system + irq + softirq) / total, "iowait": 100.0 * iowait / total,
            "steal": 100.0 * steal / total}


class HostSampler:
    """Turns consecutive :class:`HostSnapshot` readings into rates; ``disk_paths`` are watched for free space."""

    def __init__(self, *, disk_paths: Sequence[str] = ("/",), clock: Callable[[], float] = time.monotonic) -> None:
        self._reader = HostReader()
        self._clock = clock
        self.disk_paths = tuple(disk_paths)
        self._prev: HostSnapshot | None = None
        self._prev_t = 0.0
        self.ncpu = os.cpu_count() or 1

    @property
    def has_psi(self) -> bool:
        return self._reader.has_psi

    def close(self) -> None:
        self._reader.close()

    def sample(self) -> tuple[float, np.ndarray, dict[str, Any]]:
        """One pass: (time, ring row, ``system_metrics`` dict)."""
        t = self._clock()
        snap = self._reader.read()
        row = np.full(len(HOST_COLUMNS), np.nan)
        prev, dt = self._prev, t - self._prev_t
        rates = prev is not None and dt > 0
        m = snap.meminfo
        total = float(m.get("MemTotal", 0))
        avail = float(m.get("MemAvailable", m.get("MemFree", 0)))
        swap_used = float(m.get("SwapTotal", 0) - m.get("SwapFree", 0))
        cached = float(m.get("Cached", 0))
        memory = {"total": total, "available": avail, "used_percent": 100.0 * (1 - avail / total) if total else _NAN,
                  "cached": cached, "buffers": float(m.get("Buffers", 0)), "swap_total": float(m.get("SwapTotal", 0)),
                  "swap_used": swap_used, "dirty": float(m.get("Dirty", 0))}
        cpu: dict[str, Any] = {"count": self.ncpu, "load1": snap.loadavg[0], "load5": snap.loadavg[1],
                               "load15": snap.loadavg[2], "runnable": float(snap.runnable)}
        pressure: dict[str, dict[str, float]] = {}
        disk: dict[str, Any] = {"free_bytes": {}}
        network: dict[str, float] = {}
        for path in self.disk_paths:
            try:
                st = os.statvfs(path)
                disk["free_bytes"][path] = float(st.f_bavail * st.f_frsize)
                disk.setdefault("total_bytes", {})[path] = float(st.f_blocks * st.f_frsize)
            except OSError:
                continue
        for res, vals in snap.pressure.items():
            entry = {k: v for k, v in vals.items() if "avg" in k}
            if rates and prev is not None and res in prev.pressure:
                for kind in ("some", "full"):
                    key = f"{kind}_total"
                    if key in vals and key in prev.pressure[res]:
                        entry[kind] = max(0.0, vals[key] - prev.pressure[res][key]) / (dt * 1e6) * 100.0
            pressure[res] = entry
        if rates and prev is not None:
            if "cpu" in snap.cpu and "cpu" in prev.cpu:
                cpu.update(_cpu_pcts(prev.cpu["cpu"], snap.cpu["cpu"]))
            cpu["per_cpu"] = [_cpu_pcts(prev.cpu[k], v)["utilization"] for k, v in snap.cpu.items()
                              if k != "cpu" and k in prev.cpu]
            rd = sum(max(0, v[0] - prev.disks[k][0]) for k, v in snap.disks.items() if k in prev.disks)
            wr = sum(max(0, v[1] - prev.disks[k][1]) for k, v in snap.disks.items() if k in prev.disks)
            busy = max((max(0, v[2] - prev.disks[k][2]) for k, v in snap.disks.items() if k in prev.disks),
                       default=0)
            disk.update({"read_bps": rd * 512 / dt, "write_bps": wr * 512 / dt,
                         "util_percent": min(100.0, busy / (dt * 1000) * 100.0)})
            rx = sum(max(0, v[0] - prev.net[k][0]) for k, v in snap.net.items() if k in prev.net)
            tx = sum(max(0, v[1] - prev.net[k][1]) for k, v in snap.net.items() if k in prev.net)
            er = sum(max(0, v[2] - prev.net[k][2]) for k, v in snap.net.items() if k in prev.net)
            dr = sum(max(0, v[3] - prev.net[k][3]) for k, v in snap.net.items() if k in prev.net)
            network = {"rx_bps": rx / dt, "tx_bps": tx / dt, "errors_ps": er / dt, "drops_ps": dr / dt}
        self._prev, self._prev_t = snap, t
        vals_row = {
            "cpu_util": cpu.get("utilization"), "cpu_user": cpu.get("user"), "cpu_system": cpu.get("system"),
            "cpu_iowait": cpu.get("iowait"), "cpu_steal": cpu.get("steal"), "mem_available": avail,
            "mem_used_pct": memory["used_percent"], "mem_cached": cached, "swap_used": swap_used,
            "load1": snap.loadavg[0], "runnable": float(snap.runnable),
            "psi_cpu_some": pressure.get("cpu", {}).get("some"),
            "psi_memory_some": pressure.get("memory", {}).get("some"),
            "psi_memory_full": pressure.get("memory", {}).get("full"),
            "psi_io_some": pressure.get("io", {}).get("some"), "psi_io_full": pressure.get("io", {}).get("full"),
            "disk_read_bps": disk.get("read_bps"), "disk_write_bps": disk.get("write_bps"),
            "disk_util_pct": disk.get("util_percent"), "net_rx_bps": network.get("rx_bps"),
            "net_tx_bps": network.get("tx_bps"), "net_errors_ps": network.get("errors_ps"),
            "net_drops_ps": network.get("drops_ps"),
            "disk_free": next(iter(disk["free_bytes"].values()), None),
        }
        for k, v in vals_row.items():
            if v is not None:
                row[H[k]] = v
        metrics = {"timestamp": t, "interval_s": dt if rates else _NAN, "cpu": cpu, "memory": memory,
                   "disk": disk, "network": network, "pressure": pressure}
        return t, row, metrics
