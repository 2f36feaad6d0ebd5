"""`status` as people read it: tables within 80 columns, figures with units, no JSON dumps."""

from __future__ import annotations

import pytest

from sutazai_hwopt.host.commands import _print_status

SNAPSHOT = {
    "status": {"pid": 4242, "mode": "balanced", "uptime_s": 125.4,
               "services": {"sampler": "running", "eliminator": "running", "api": "running"}},
    "agents": [{"agent_id": "agent_with_a_rather_long_name_001", "pid": 1234, "cpus": list(range(64)),
                "requirements": {"priority": 8},
                "report": {"cpus": [0, 1], "thread_pools": [{"user_api": "blas", "num_threads": 2}]}}],
    "load": {"agent_with_a_rather_long_name_001": {"cpu_percent": 12.345, "rss_bytes": 300 * 2**20}},
    "cache": {"levels": {"L2": {"hit_ratio": 0.8765, "hits": 10, "misses": 2, "entries": 12, "bytes": 3 << 20,
                                "budget": 1 << 30, "evictions": 0},
                         "L3": {"error": "segment damaged"}}},
    "pools": {"model_weights": {"capacity": 1 << 30, "used": 5 << 20, "free": 1, "largest_free_block": 1,
                                "fragmentation": 0.25, "blocks": 3, "dedup_ratio": 2.0,
                                "compression_ratio": 1.0}},
    "bottlenecks": {},
}


def test_status_tables_fit_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    _print_status(SNAPSHOT, "http://127.0.0.1:8787")
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for expected in ("pid 4242", "http://127.0.0.1:8787", "shared cache", "0.88", "3.0 MiB / 1.0 GiB",
                     "error: segment damaged", "memory pools", "5.0 MiB / 1.0 GiB", "2.0x", "25%", "300.0", "blas 2"):
        assert expected in out, expected
    assert "{" not in out   # no JSON dump
