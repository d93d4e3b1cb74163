"""The README's Python examples run as written (each ```python block in a fresh process).

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


def readme_blocks(text: str | None = None) -> list[Block]:
    text = (ROOT / "README.md").read_text() if text is None else text
    return [Block(text[: m.start(2)].count("\n") + 1, m.group(1) or "run", m.group(2)) for m in _BLOCK.finditer(text)]


def test_the_parser_sees_markers() -> None:
    doc = "a\n```python\nx = 1\n```\n<!-- readme-test: skip (slow) -->\n```python\ny = 2\n```\n```yaml\nz: 1\n```\n"
    blocks = readme_blocks(doc)
    assert [(b.line, b.mode, b.code) for b in blocks] == [(3, "run", "x = 1\n"), (7, "skip", "y = 2\n")]
    assert {b.mode for b in readme_blocks()} <= {"run", "skip", "after-smoke"}


_RUN = [b for b in readme_blocks() if b.mode == "run"]


@pytest.mark.parametrize("block", _RUN, ids=[f"README.md:{b.line}" for b in _RUN])
@pytest.mark.timeout(300)
def test_readme_block_runs(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, f"README.md:{block.line}:\n{done.stderr[-3000:]}"
