"""The documentation site's API page covers the public API, with a docstring for every name it
lists, and every page in docs/ is in the site's navigation. (`bash scripts/docs.sh` builds the
site itself, strictly, in CI.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pgq

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "reference" / "api.md"
ALIASES = {"Celery"}  # `Celery = App`: documented on the App


def _api_blocks() -> list[tuple[str, list[str]]]:
    """(`::: path`, the members it lists) for each mkdocstrings block of the API page."""
    text = API_PAGE.read_text()
    blocks = re.findall(r"^::: (\S+)\n((?:    .*\n)*)", text, re.M)
    return [(path, re.findall(r"^        - (\S+)$", options, re.M)) for path, options in blocks]


def test_every_public_name_is_on_the_api_page() -> None:
    documented = {path.removeprefix("pgq.") for path, _ in _api_blocks()}
    missing = sorted(set(pgq.__all__) - ALIASES - documented)
    assert not missing, f"add `::: pgq.NAME` blocks to docs/reference/api.md for {missing}"


def test_every_name_on_the_api_page_has_a_docstring() -> None:
    griffe = pytest.importorskip("griffe")
    package = griffe.load("pgq", search_paths=[str(ROOT)])
    undocumented = []
    for path, members in _api_blocks():
        obj = package[path.removeprefix("pgq.")]
        if not obj.docstring:
            undocumented.append(path)
        for member in members:
            found = obj.all_members.get(member)
            if found is None or not found.docstring:
                undocumented.append(f"{path}.{member}")
    assert not undocumented, f"no docstring (or no such member): {undocumented}"


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"^\s+- [^:\n]+: (\S+\.md)\s*$", nav, re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages - listed == set(), "add these pages to `nav` in mkdocs.yml"
    assert listed - pages == set(), "these nav entries have no page in docs/"
