"""`clean`, `stop --purge` and the /dev/shm line of `status`: a namespace's segments can be seen and removed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sutazai_hwopt.cli import main
from sutazai_hwopt.host.commands import NOT_RUNNING, SEGMENTS_BUSY
from sutazai_hwopt.host.segments import format_bytes, holders, usage
from sutazai_hwopt.memory import MemoryPoolManager
from sutazai_hwopt.shm import list_segment_names
from sutazai_hwopt.testing import throwaway_namespace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    """Two namespaces with one 1 MiB pool each (both removed at teardown whatever the test did)."""
    with throwaway_namespace("clean") as ns, throwaway_namespace("keep") as other:
        for name in (ns, other):
            with MemoryPoolManager(namespace=name) as pm:
                pm.create_pool("weights", size=1 << 20)
        yield ns, other


@pytest.fixture
def holder(two_namespaces: tuple[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A live process that maps the first namespace's pool until it is killed."""
    ns = two_namespaces[0]
    code = ("import sys, time\nfrom sutazai_hwopt.memory import MemoryPoolManager\n"
            f"pm = MemoryPoolManager(namespace={ns!r})\npm.stats('weights')\nprint('ready', flush=True)\n"
            "time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_usage_groups_segments_by_namespace(two_namespaces: tuple[str, str]) -> None:
    ns, other = two_namespaces
    found = usage()
    assert found[ns].segments == list_segment_names(ns)
    assert found[ns].apparent_bytes >= 1 << 20 and found[other].segments
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3) == "3 B"


def test_clean_removes_only_that_namespace(two_namespaces: tuple[str, str], capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ns, other = two_namespaces
    monkeypatch.setenv("SUTAZAI_HWOPT_RUNTIME_DIR", str(tmp_path / "rt"))
    assert main(["status"]) == NOT_RUNNING
    out = capsys.readouterr().out
    assert f"/dev/shm: {ns}\n  holds " in out and " in 1 segments" in out and "clean --namespace NS" in out
    assert main(["clean", "--namespace", ns]) == 0
    assert f"namespace {ns}: removed 1 segments" in capsys.readouterr().out
    assert list_segment_names(ns) == [] and list_segment_names(other) != []
    assert main(["clean", "--namespace", ns]) == 0
    assert "no segments" in capsys.readouterr().out


def test_clean_refuses_while_a_process_maps_them(two_namespaces: tuple[str, str], holder: subprocess.Popen[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ns = two_namespaces[0]
    assert set(holders(list_segment_names(ns))) == {holder.pid}
    assert main(["clean", "--namespace", ns]) == SEGMENTS_BUSY
    err = capsys.readouterr().err
    assert f"pid {holder.pid}" in err and "--force" in err
    assert list_segment_names(ns) != []
    assert main(["clean", "--namespace", ns, "--force"]) == 0
    assert "still map them" in capsys.readouterr().out
    assert list_segment_names(ns) == []


def test_stop_purge_without_a_service_still_purges(two_namespaces: tuple[str, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ns = two_namespaces[0]
    assert main(["stop", "--runtime-dir", str(tmp_path / "rt"), "--purge", "--namespace", ns]) == 0
    out = capsys.readouterr().out
    assert "not running" in out and "removed 1 segments" in out
    assert list_segment_names(ns) == []


def test_clean_rejects_a_bad_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clean", "--namespace", "../etc"]) == 1
    assert "namespace must be" in capsys.readouterr().err
