"""The docs site (mkdocs.yml): it builds in strict mode (every link and anchor resolves, every
page is in the nav, the Python API renders from the docstrings), and its generated pages (the
CLI reference from Click, the REST API from ft-server's OpenAPI schema) are current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES_BEING_WRITTEN: set[str] = set()
"""Pages other issues are adding: the nav may list them ahead of their files."""


def _nav_pages(items: list) -> set[str]:
    pages: set[str] = set()
    for item in items:
        if isinstance(item, str):
            pages.add(item)
        elif isinstance(item, dict):
            for value in item.values():
                pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_docs_page_is_in_the_nav() -> None:
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert not pages - nav, f"add these pages to the nav in mkdocs.yml: {sorted(pages - nav)}"
    # Listed ahead of their files (scripts/mkdocs_hooks.py leaves them out until they exist).
    ahead = nav - pages
    assert ahead <= PAGES_BEING_WRITTEN, (
        f"the nav in mkdocs.yml names missing pages: {sorted(ahead)}"
    )


def test_generated_reference_pages_are_current() -> None:
    # In a fresh process, as `just docs` makes them: Click caches each command's help option
    # the first time anything asks for it, so a page made inside the test process would depend
    # on which CLI tests ran before it.
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs_reference.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "WARNING" not in done.stderr, done.stderr[-5000:]
    built = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert {"index.html", "cli-reference.html", "rest-api.html", "design/macos-app.html"} <= built
    api = (site / "python-api.html").read_text(encoding="utf-8")
    # mkdocstrings rendered the docstrings, not just the headings.
    assert 'id="ft_models.resolve.resolve_model"' in api
    assert "Resolve <code>name</code> to a folder ready to load" in api
    # The offline plugin: search works from file:// (its index is a script, not a fetch).
    assert (site / "search" / "search_index.js").is_file()
