"""Plugin discovery for dataset formats (``ft.formats``) and chat templates (``ft.templates``).

Built-ins are registered through the same entry points as third-party plugins (see
ft-data's pyproject.toml). When ft-data runs from a tree whose entry points are not
installed yet, the built-ins table below stands in, so the built-ins are always there.

A plugin that fails to load gives a warning, never a crash. Discovery is cached; set the
environment variable ``FT_DATA_NO_PLUGINS=1`` or call ``use_plugins(False)`` (tests do) to
see the built-ins only.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

FORMATS_GROUP = "ft.formats"
TEMPLATES_GROUP = "ft.templates"

BUILTINS: dict[str, dict[str, str]] = {
    FORMATS_GROUP: {
        "alpaca": "ft_data.formats:AlpacaFormat",
        "sharegpt": "ft_data.formats:ShareGptFormat",
        "openai": "ft_data.formats:OpenAiFormat",
        "prompt_completion": "ft_data.formats:PromptCompletionFormat",
        "text": "ft_data.formats:TextFormat",
        "columns": "ft_data.formats:ColumnsFormat",
    },
    TEMPLATES_GROUP: {
        "alpaca": "ft_data.builtin_templates:alpaca",
        "chatml": "ft_data.builtin_templates:chatml",
        "llama3": "ft_data.builtin_templates:llama3",
        "mistral": "ft_data.builtin_templates:mistral",
    },
}

_enabled: bool | None = None  # None: follow FT_DATA_NO_PLUGINS


def use_plugins(enabled: bool | None) -> None:
    """Turn third-party discovery on or off (``None``: follow ``FT_DATA_NO_PLUGINS``)."""
    global _enabled
    _enabled = enabled
    discover.cache_clear()


def plugins_enabled() -> bool:
    """Whether entry points outside the built-ins are looked at."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("FT_DATA_NO_PLUGINS", "").strip().lower() not in ("1", "true", "yes")


@functools.cache
def discover(group: str) -> dict[str, Callable[..., Any]]:
    """Name -> factory for every plugin of ``group``, built-ins included.

    A factory is what the entry point names: a format class, or a function returning a
    template. Entry points that fail to load are skipped with a warning; a name registered
    twice keeps the first and warns.
    """
    found: dict[str, Callable[..., Any]] = {}
    sources: dict[str, str] = {}
    builtins = BUILTINS.get(group, {})
    if plugins_enabled():
        for point in entry_points(group=group):
            if point.name in found:
                if point.value != sources[point.name]:
                    warnings.warn(
                        f"{group} plugin {point.name!r} from {point.value} ignored: "
                        f"the name is already taken by {sources[point.name]}",
                        stacklevel=2,
                    )
                continue
            try:
                found[point.name] = point.load()
            except Exception as error:  # a broken plugin must not break ft
                warnings.warn(
                    f"{group} plugin {point.name!r} ({point.value}) failed to load: {error!r}",
                    stacklevel=2,
                )
                continue
            sources[point.name] = point.value
    for name, target in builtins.items():
        if name not in found:
            found[name] = _load(target)
    return found


def _load(target: str) -> Callable[..., Any]:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
