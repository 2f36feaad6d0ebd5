"""The fleet benchmark (examples/agent_fleet) runs end to end, answers correctly and leaves nothing behind.

Small versions of the documented command run in a fresh interpreter; leaks are checked with the OS (/proc,
/dev/shm, the temp directory), not with the harness's own bookkeeping. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _our_processes() -> set[int]:
    """Processes of the harness: a command line naming it, or a redis-server running in its temp directory."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
            cwd = os.readlink(f"/proc/{entry}/cwd") if b"redis-server" in cmdline else ""
        except OSError:
            continue
        if b"examples.agent_fleet" in cmdline or "agent_fleet-" in cwd:
            found.add(int(entry))
    return found


def _our_segments() -> set[str]:
    """Segments of the harness's throwaway namespaces (prefixes fleet-, fleetc-, fleetk-), whatever the prefix."""
    return {n for n in os.listdir("/dev/shm") if re.search(r"\.fleet[ck]?-\d+-[0-9a-f]+\.", n)}


def _our_tempdirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("agent_fleet-")}


def _run(out: Path, *flags: str) -> dict:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (the savvy setup needs it)")
    if not (ROOT / "examples" / "agent_fleet").is_dir():
        pytest.skip("running outside the source tree")
    before = (_our_processes(), _our_segments(), _our_tempdirs())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "examples.agent_fleet", "--quick", "--shape", "light",
                          "--out", str(out), *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _our_processes() <= before[0], "a process of the harness outlived it"
    assert _our_segments() <= before[1], "a /dev/shm segment was left behind"
    assert _our_tempdirs() <= before[2], "a temporary directory was left behind"
    assert (out / "report.html").is_file()
    html = (out / "report.html").read_text()
    assert "plotly.js v" in html and 'src="http' not in html        # plotly.js embedded, no CDN
    return json.loads((out / "report.json").read_text())


def test_quick_fleet_report(tmp_path: Path) -> None:
    """The 16-agent --quick version, all three setups: every figure, the targets judged, no answer wrong."""
    report = _run(tmp_path / "out")
    assert report["args"]["agents"] == 16 and report["blas_threads_per_process"] == 1
    summary = report["summary"]["light"]
    assert set(summary) == {"naive", "savvy", "library"}
    for setup, figures in summary.items():
        assert figures["error"] is None, (setup, report["shapes"]["light"]["setups"][setup].get("log_tail"))
        for key in ("startup_s", "pss_total_mib", "pss_weights_mib", "warmup_p99_ms", "fixed_p50_ms",
                    "fixed_p99_ms", "fixed_p999_ms", "requests_per_cpu_s", "hit_ratio"):
            assert figures[key] is not None and figures[key] > 0, (setup, key)
        assert figures["verified"] > 0 and figures["wrong_answers"] == 0
        assert sum(figures["hit_levels"].values()) > 0
    for setup in ("savvy", "library"):
        assert summary[setup]["constrained_hit_ratio"] is not None
    assert summary["savvy"]["pss_redis_mib"] > 0 and summary["library"]["pss_redis_mib"] == 0
    # the split of the agents' PSS: only the library's agents map shared-memory segments (its pool and L2)
    assert summary["library"]["pss_agents_shmem_mib"] > 0
    assert summary["naive"]["pss_agents_shmem_mib"] == summary["savvy"]["pss_agents_shmem_mib"] == 0
    for figures in summary.values():
        assert figures["pss_agents_anon_mib"] <= figures["pss_total_mib"]
    assert all(report["bytecode_compiled"].values())
    assert report["wrong_answers"] == 0 and report["verified_answers"] > 0
    assert report["interrupted"] is False
    light = [t for t in report["targets"] if t["shape"] == "light"]
    assert len(light) == 3 and all(t["status"] in ("MET", "NOT MET") for t in light)
    assert {t["status"] for t in report["targets"] if t["shape"] == "heavy"} == {"N/A"}
    assert set(report["ratios"]["light"]) == {"library/naive", "library/savvy"}


def test_killed_agent_and_load_generator(tmp_path: Path) -> None:
    """Killing one agent and the load generator mid-run: the others keep serving, the report says so."""
    # with --quick the agent dies in the fixed phase (after a 0.5 s warm-up), the load generator just after it
    report = _run(tmp_path / "out", "--agents", "3", "--setups", "savvy,library", "--kill-agent-at", "1",
                  "--kill-loadgen-at", "2")
    assert report["interrupted"] is True
    events = [e["what"] for i in report["interruptions"] for e in i["events"]]
    assert "agent" in events and "load generator" in events
    for setup in ("savvy", "library"):
        res = report["shapes"]["light"]["setups"][setup]
        assert res.get("error") is None, res.get("log_tail")
        assert len(res["killed_agents"]) == 1
        # after the kills the remaining agents still answered the later phases
        assert res["constrained"]["answered"] > 0 and res["constrained"].get("interrupted") is None
        assert res["pss"]["agents_alive"] == 2
    assert report["wrong_answers"] == 0
