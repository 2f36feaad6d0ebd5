"""The examples do what their docstrings say: each runs in a fresh interpreter, tells its story, and leaves
nothing behind (no temporary directory, no shared-memory segment)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: Per example: the lines of its story, as regular expressions that must each match somewhere in its output.
STORIES: dict[str, list[str]] = {
    "quickstart.py": [r"compiled cores: True", r"cache: .* hit ratio 0\.\d+, loader ran \d+ times",
                      r"shared cache: agent_002 reads .* from L2", r"kept once \(dedup ratio 2\.0\)",
                      r"placement: agent_001 \(pid \d+\) pinned to cpus \[\d", r"rollback: [1-9]\d* kernel settings"],
    "load_balancer.py": [r"1\. three backends healthy: \{'agent_000': \d+, 'agent_001'",
                         r"agent_000 ejected \{'state': 'ejected'",
                         r"3\. health checks fail, it stays out: \{'agent_001': \d+, 'agent_002': \d+\} .*"
                         r"'active_healthy': False",
                         r"re-admitted after [\d.]+ s \{'state': 'healthy', 'active_healthy': True",
                         r"5\. all three serve again: \{'agent_000': \d+, 'agent_001': \d+, 'agent_002': \d+\}"],
    "placement.py": [r"agent_000 \(pid \d+, priority 9\) -> cpus", r"pid \d+: affinity \[", r"rolled back \d+"],
    "profile_and_fix.py": [r"(found \w+|no bottleneck detected)", r"rolled back \d+ kernel settings"],
    "shared_memory_and_cache.py": [r"kept once: dedup ratio 2\.0", r"read-only: True\); checksum matches: True",
                                   r"cached embedding from L2"],
}


def test_every_example_has_a_story() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(STORIES)


@pytest.mark.parametrize("script", sorted(STORIES))
def test_example_tells_its_story_and_leaves_nothing(script: str, tmp_path: Path) -> None:
    """Exit 0, every story line printed, an empty private TMPDIR and no segment of its namespaces afterwards."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    missing = [line for line in STORIES[script] if not re.search(line, out)]
    assert not missing, f"{script} did not print {missing}:\n{out}"
    assert len(out.splitlines()) <= (10 if script == "quickstart.py" else 30), out
    assert sorted(os.listdir(tmp)) == [], "left in TMPDIR"
    # throwaway namespaces carry the pid of the process that made them
    left = [n for n in os.listdir("/dev/shm") if n.startswith("sutazai_hwopt.") and f"-{proc.pid}-" in n]
    assert left == [], "left in /dev/shm"
