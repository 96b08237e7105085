"""Dataset formats (``ft.formats``) and chat templates (``ft.templates``) are plugins.

ft-data's own are entry points in its pyproject.toml, found by :mod:`ft_config.plugins` the
same way as a third party's. A plugin that fails to load gives a warning, never a crash.
``FT_NO_PLUGINS=1`` or ``use_plugins(False)`` (tests do) keeps to ft's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ft_config.plugins import load_all, plugins_enabled, use_plugins

FORMATS_GROUP = "ft.formats"
TEMPLATES_GROUP = "ft.templates"


def discover(group: str) -> dict[str, Callable[..., Any]]:
    """Name -> factory for every plugin of ``group``, built-ins included.

    A factory is what the entry point names: a format class, or a function returning a
    template. One that fails to load is skipped with a warning.
    """
    return load_all(group)


__all__ = [
    "FORMATS_GROUP",
    "TEMPLATES_GROUP",
    "discover",
    "plugins_enabled",
    "use_plugins",
]
