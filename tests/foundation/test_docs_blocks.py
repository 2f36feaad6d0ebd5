"""Every ```python block of README.md and docs/*.md runs as written, each in a fresh interpreter.

A block that cannot run on its own (an API summary with placeholders, a Protocol sketch) is marked, right before
its fence, with ``<!-- not-runnable: why -->``; the marker needs a reason, and is meant to be rare. A block runs in
an empty temporary directory (with ``XDG_STATE_HOME`` pointing inside it, so journals stay there too) and must
leave no shared-memory segment of this user behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*not-runnable:\s*((?:(?!-->).)*?)\s*-->\s*\Z", re.S)
SHM = Path("/dev/shm")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    source: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract(page: Path) -> list[Block]:
    """The ```python blocks of one Markdown page, with the not-runnable reason of each marked one."""
    text = page.read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()]
        mark = _MARK.search(before)
        reason = mark.group(1) if mark else None
        if mark is not None and not reason:
            raise AssertionError(f"{page}: a not-runnable marker needs a reason")
        blocks.append(Block(page, before.count("\n") + 1, m.group(1), reason))
    return blocks


BLOCKS = [b for page in PAGES if page.exists() for b in extract(page)]


def _own_segments() -> set[str]:
    prefix = f"sutazai_hwopt.u{os.geteuid()}."
    try:
        return {n for n in os.listdir(SHM) if n.startswith(prefix)}
    except OSError:
        return set()


def _namespaces_in(source: str) -> set[str]:
    """The namespaces a block names (segments of other namespaces may come from concurrent test runs)."""
    named = set(re.findall(r"""namespace["']?\s*[=:]\s*["']([A-Za-z0-9_-]+)["']""", source))
    return named | {"sutazai", "default"}


def test_extraction_finds_blocks_and_markers() -> None:
    """The extractor sees the README's Tour and honours a marker only right before a fence."""
    assert any(b.page.name == "README.md" for b in BLOCKS)
    assert all(b.skip_reason is None or len(b.skip_reason) > 3 for b in BLOCKS)


def test_marker_must_touch_the_fence(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("<!-- not-runnable: needs a GPU -->\n```python\nx = 1\n```\n\ntext\n\n```python\ny = 2\n```\n")
    first, second = extract(page)
    assert first.skip_reason == "needs a GPU" and second.skip_reason is None
    assert second.source == "y = 2\n"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block_runs(block: Block, tmp_path: Path) -> None:
    """The block exits 0 in a fresh interpreter and leaves no segment of its namespaces in /dev/shm."""
    if block.skip_reason is not None:
        pytest.skip(f"marked not runnable: {block.skip_reason}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "XDG_STATE_HOME": str(tmp_path / "state"), "SUTAZAI_HWOPT_RUNTIME_DIR": str(tmp_path / "run")}
    before = _own_segments()
    script = tmp_path / "block.py"
    script.write_text(block.source)
    run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, f"{block.id} failed:\n{run.stdout}\n{run.stderr}"
    namespaces = _namespaces_in(block.source)
    left = sorted(n for n in _own_segments() - before if n.split(".")[2] in namespaces)
    for name in left:
        (SHM / name).unlink(missing_ok=True)
    assert not left, f"{block.id} left shared-memory segments behind: {left}"
