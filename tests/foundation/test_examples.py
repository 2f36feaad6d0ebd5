"""The examples run as documented (each in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(("script", "expected"), [
    ("quickstart.py", "compiled cores: True"),
    ("placement.py", "rolled back"),
    ("load_balancer.py", "round 2"),
    ("shared_memory_and_cache.py", "from L2"),
])
def test_example_runs(script: str, expected: str) -> None:
    """The example exits 0 and prints what it is about."""
    if not (EXAMPLES / script).exists():
        pytest.skip("running outside the source tree")
    run = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert expected in run.stdout
