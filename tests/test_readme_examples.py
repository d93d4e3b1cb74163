"""The Python examples of README.md and docs/*.md run as written (each ```python block in a fresh process).

A block may be preceded by a marker comment:
``<!-- readme-test: skip (why) -->`` (not run: e.g. it starts a study or needs user files),
``<!-- readme-test: after-smoke -->`` (run by tests/test_observe_smoke.py where
``results/smoke`` holds a finished smoke study). Unmarked blocks run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*([\w-]+)[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


@dataclass
class Block:
    line: int
    mode: str  # "run", "skip" or "after-smoke"
    code: str
    page: str = "README.md"


DOC_PAGES = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))


def _blocks(text: str, page: str) -> list[Block]:
    return [Block(text[: m.start(2)].count("\n") + 1, m.group(1) or "run", m.group(2), page)
            for m in _BLOCK.finditer(text)]


def readme_blocks(text: str | None = None) -> list[Block]:
    """The marked Python blocks of ``text``, or of README.md and every docs/*.md page."""
    if text is not None:
        return _blocks(text, "README.md")
    return [b for page in DOC_PAGES for b in _blocks((ROOT / page).read_text(), page)]


def test_the_parser_sees_markers() -> None:
    doc = "a\n```python\nx = 1\n```\n<!-- readme-test: skip (slow) -->\n```python\ny = 2\n```\n```yaml\nz: 1\n```\n"
    blocks = readme_blocks(doc)
    assert [(b.line, b.mode, b.code) for b in blocks] == [(3, "run", "x = 1\n"), (7, "skip", "y = 2\n")]
    assert {b.mode for b in readme_blocks()} <= {"run", "skip", "after-smoke"}


_RUN = [b for b in readme_blocks() if b.mode == "run"]


@pytest.mark.parametrize("block", _RUN, ids=[f"{b.page}:{b.line}" for b in _RUN])
@pytest.mark.timeout(300)
def test_readme_block_runs(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, f"{block.page}:{block.line}:\n{done.stderr[-3000:]}"
