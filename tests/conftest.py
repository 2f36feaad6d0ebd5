"""Suite-wide: after the whole run, nothing the suite made is left in /tmp or /dev/shm.

Temporary files: the session points ``TMPDIR`` (and :mod:`tempfile`) at one private directory under /tmp, so every
temporary file of the suite, its subprocesses and the browsers it drives lands there; whatever is still in it at
the end (pytest's own ``pytest-of-*`` aside) was left behind by a test. New top-level /tmp entries with the
library's prefixes (something that ignored ``TMPDIR``, or another run on the same machine) are printed, not failed.

Shared memory: segments of this user (``sutazai_hwopt.*``) present at the end and not at the start are leftovers,
unless another run on the same machine still uses them: a live process outside this session maps them, or their
throwaway namespace (``<prefix>-<pid>-<hex>``) names a live process other than this one.

``SUTAZAI_HWOPT_LEFTOVERS=warn`` prints the leftovers without failing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM = Path("/dev/shm")
TMP = Path("/tmp")
#: Names the library and this suite create in /tmp (the ``hwopt-*`` prefixes of the tests and examples, the
#: runtime directory, redis' and chromium's scratch directories).
TMP_PREFIXES = ("hwopt-", "sutazai_hwopt", "szcache-", "org.chromium.Chromium.")

_session_tmp = Path(tempfile.mkdtemp(prefix="hwopt-pytest-"))
_session_tmp.chmod(0o711)   # traversable: tests hand subdirectories to an unprivileged user
os.environ["TMPDIR"] = str(_session_tmp)
tempfile.tempdir = None     # recomputed from TMPDIR on next use
# removed after pytest itself finished with it (its tmp_path directories, pytest-of-*, live there too)
atexit.register(shutil.rmtree, _session_tmp, ignore_errors=True)


def _own_segments() -> set[str]:
    uid = os.geteuid()
    out = set()
    for name in os.listdir(SHM) if SHM.is_dir() else []:
        try:
            if name.startswith("sutazai_hwopt.") and (SHM / name).stat(follow_symlinks=False).st_uid == uid:
                out.add(name)
        except OSError:
            continue
    return out


def _tmp_entries() -> set[str]:
    return {n for n in os.listdir(TMP) if n.startswith(TMP_PREFIXES)} - {_session_tmp.name}


def _used_by_another_run(name: str) -> bool:
    """The segment's throwaway namespace (``<prefix>-<pid>-<hex>``) names a live process that is not this one."""
    parts = name.split(".")
    fields = parts[2].split("-") if len(parts) > 3 else []
    pid = int(fields[-2]) if len(fields) >= 3 and fields[-2].isdigit() else None
    return pid is not None and pid != os.getpid() and Path(f"/proc/{pid}").exists()


def leftovers(shm_before: set[str]) -> dict[str, list[str]]:
    """What this session left: files in its TMPDIR, and new segments of this user no other run uses."""
    from sutazai_hwopt.host.segments import holders

    in_session_tmp = sorted(n for n in os.listdir(_session_tmp) if not n.startswith("pytest-of-"))
    new_shm = _own_segments() - shm_before
    mapped_elsewhere = {n for names in holders(new_shm).values() for n in names}
    return {f"{_session_tmp} (the suite's TMPDIR)": in_session_tmp,
            f"{SHM} (new segments of this user)":
                sorted(n for n in new_shm - mapped_elsewhere if not _used_by_another_run(n))}


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Fail the session (at its last teardown) if it left files in /tmp or segments in /dev/shm."""
    shm_before, tmp_before = _own_segments(), _tmp_entries()
    yield
    found = {where: names for where, names in leftovers(shm_before).items() if names}
    elsewhere = sorted(_tmp_entries() - tmp_before)
    if elsewhere:
        print(f"\nnote: new in {TMP} during the session (this suite's files go to {_session_tmp}; these ignored "
              f"TMPDIR or belong to another run on this machine): {', '.join(elsewhere)}")
    if not found:
        return
    report = "\n".join(f"  {where}: {', '.join(names)}" for where, names in found.items())
    message = f"the test suite left these behind:\n{report}"
    if os.environ.get("SUTAZAI_HWOPT_LEFTOVERS") == "warn":
        print(f"\nWARNING: {message}")
    else:
        pytest.fail(message, pytrace=False)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """One real agent process (sleep), killed at teardown."""
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()
