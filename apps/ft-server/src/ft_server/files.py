"""Paths a client names: every one stays inside the app's folders.

A client never sends a path that is used as given: names are checked against a strict pattern
(`safe_name`) and every resolved path is checked to lie under its root (`inside`), symlinks
resolved, so `../`, absolute paths, `%2e%2e` (decoded by then) and links out are all refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from ft_server.errors import ApiError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def safe_name(name: str, *, what: str = "name", param: str | None = None) -> str:
    """`name` if it is one plain file or folder name (letters, digits, `.`, `_`, `-`; no
    leading dot, no `..`), else a 400."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise ApiError(
            400,
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' only "
            "(at most 128, not starting with '.')",
            code="invalid_name",
            param=param or what,
        )
    return name


def inside(root: Path, *parts: str, what: str = "path", param: str | None = None) -> Path:
    """`root/parts...` resolved, if it stays under `root`; else a 400."""
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise ApiError(
            400,
            f"{what} {'/'.join(parts)!r} leads outside the server's folders",
            code="path_outside",
            param=param or what,
        )
    return target


def inside_any(roots: tuple[Path, ...], path: Path, *, what: str, param: str | None = None) -> Path:
    """`path` resolved, if it lies under one of `roots`; else a 400 naming it."""
    target = path.resolve()
    for root in roots:
        base = root.resolve()
        if target == base or base in target.parents:
            return target
    raise ApiError(
        400,
        f"{what} {str(path)!r} is outside the server's folders; upload it, or start the server "
        "with that folder allowed (--allow-root)",
        code="path_outside",
        param=param or what,
    )
