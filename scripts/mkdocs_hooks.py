"""mkdocs hooks (mkdocs.yml `hooks:`).

The nav may list a page before it exists: pages other people are writing are named there ahead
of time, and dropped from the nav until their file is in docs/. So the strict build never fails
on the order in which a page and its nav entry arrive, and tests/test_docs_site.py still checks
that every page in docs/ is in the nav.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def on_config(config: Any) -> Any:
    config["nav"] = _existing(config["nav"], Path(config["docs_dir"]))
    return config


def _existing(items: list[Any], docs: Path) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        if isinstance(item, str):
            if (docs / item).is_file():
                kept.append(item)
            continue
        ((title, value),) = item.items()
        if isinstance(value, list):
            inner = _existing(value, docs)
            if inner:
                kept.append({title: inner})
        elif value.startswith(("http://", "https://")) or (docs / value).is_file():
            kept.append(item)
    return kept
