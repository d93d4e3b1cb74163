"""README.md and docs/*.md: every relative link resolves (file and #anchor), every docs page is
reachable from the README or the docs index, and the README stays short (< 300 lines)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```.*?```", re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    """The relative link targets of ``page`` (code blocks left out)."""
    text = _FENCE.sub("", page.read_text())
    return [t for t in _LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_slug_matches_githubs() -> None:
    assert _slug("The study file (YAML schema)") == "the-study-file-yaml-schema"
    assert _slug("Resuming, failed trials, damaged results") == "resuming-failed-trials-damaged-results"
    assert _slug("The `loss` section") == "the-loss-section"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_every_docs_page_is_linked_from_the_readme_or_the_index() -> None:
    index = ROOT / "docs" / "README.md"
    linked = {(p.parent / t.partition("#")[0]).resolve() for p in (ROOT / "README.md", index) for t in links(p)}
    orphans = [p.name for p in PAGES[1:] if p != index and p.resolve() not in linked]
    assert not orphans, (f"docs pages linked from neither README.md nor docs/README.md: {orphans}; "
                         "add a line '- [Title](page.md): what it covers.' to docs/README.md")


def test_the_readme_links_the_docs_index() -> None:
    assert "docs/README.md" in links(ROOT / "README.md")


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines < 300, f"README.md has {lines} lines (keep it under 300: move detail to a docs/ page)"
