"""Finding plugins: one discovery for every entry point group ft reads.

ft is extended through entry point groups: ``ft.formats`` and ``ft.templates`` (ft-data),
``ft.exporters`` (ft-export), ``ft.trainers`` (ft-train-torch, ft-train-mlx) and
``ft.commands`` (ft-cli). ft's own implementations are entry points in its packages'
``pyproject.toml`` too, so they are found exactly the way a third party's are.

    >>> from ft_config import plugins
    >>> sorted(plugins.discover("ft.formats"))  # names only: nothing is imported yet
    ['alpaca', 'columns', 'openai', 'prompt_completion', 'sharegpt', 'text']
    >>> plugins.load("ft.formats", "alpaca")  # imports that one plugin
    <class 'ft_data.formats.AlpacaFormat'>

A plugin that fails to load gives a :class:`PluginWarning` naming it, its distribution and
the error; ``load`` then raises :class:`PluginError` for that name, ``load_all`` skips it, and
every other plugin keeps working.

``FT_NO_PLUGINS=1`` (or ``use_plugins(False)``) keeps discovery to ft's own entry points, those
of distributions named ``ft-*``, whatever else is installed. Tests use it.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from importlib import metadata
from typing import Any

NO_PLUGINS_ENV = "FT_NO_PLUGINS"
_TRUE = ("1", "true", "yes", "on")

_override: bool | None = None  # set by use_plugins(); None: follow FT_NO_PLUGINS


class PluginWarning(UserWarning):
    """A plugin was ignored: it failed to load, or another one took its name."""


class PluginError(LookupError):
    """No plugin has that name in the group, or the plugin failed to load (the loading error
    is the ``__cause__``)."""

    def __init__(self, message: str, *, group: str, name: str) -> None:
        super().__init__(message)
        self.group = group
        self.name = name


def use_plugins(enabled: bool | None) -> None:
    """Turn third-party plugins on or off for this process (``None``: follow
    ``FT_NO_PLUGINS`` again), and forget what was discovered."""
    global _override
    _override = enabled
    cache_clear()


def plugins_enabled() -> bool:
    """Whether entry points of distributions other than ft's own are looked at."""
    if _override is not None:
        return _override
    return os.environ.get(NO_PLUGINS_ENV, "").strip().lower() not in _TRUE


def distribution(entry_point: metadata.EntryPoint) -> str | None:
    """The normalized name of the distribution that declares ``entry_point`` (``ft-data``),
    or None when unknown (an entry point built by hand)."""
    dist = getattr(entry_point, "dist", None)
    name = dist.name if dist is not None else None
    return re.sub(r"[-_.]+", "-", name).lower() if name else None


def is_builtin(entry_point: metadata.EntryPoint) -> bool:
    """Whether ``entry_point`` is one of ft's own: declared by a distribution named ``ft-*``."""
    return (distribution(entry_point) or "").startswith("ft-")


def discover(group: str) -> dict[str, metadata.EntryPoint]:
    """Every plugin of ``group`` by name, sorted, without loading any.

    ft's own entry points win over a third party's of the same name; an entry point that
    loses its name is reported with a :class:`PluginWarning`. The result is cached per group
    (``cache_clear()`` forgets it).
    """
    return dict(_discover(group, plugins_enabled()))


def load_entry_point(entry_point: metadata.EntryPoint) -> Any:
    """What ``entry_point`` names, imported now.

    When that fails: a :class:`PluginWarning` naming the plugin, its distribution and the
    error, then :class:`PluginError` (the import error is its ``__cause__``).
    """
    try:
        return entry_point.load()
    except Exception as error:  # a broken plugin must break only itself
        dist = distribution(entry_point)
        hint = f"; reinstall or uninstall {dist}" if dist else ""
        message = (
            f"{entry_point.group} plugin {_describe(entry_point)} failed to load: "
            f"{type(error).__name__}: {error}{hint}"
        )
        warnings.warn(message, PluginWarning, stacklevel=2)
        raise PluginError(message, group=entry_point.group, name=entry_point.name) from error


def load(group: str, name: str) -> Any:
    """The plugin ``name`` of ``group``, loaded. :class:`PluginError` when there is none of
    that name (the message lists those there are) or when it fails to load."""
    found = discover(group)
    if name not in found:
        installed = ", ".join(found) or "none"
        raise PluginError(
            f"no {group} plugin named {name!r} (installed: {installed})", group=group, name=name
        )
    return load_entry_point(found[name])


def load_all(group: str) -> dict[str, Any]:
    """Every plugin of ``group`` by name, loaded; one that fails to load is skipped with a
    :class:`PluginWarning`. Cached per group, like :func:`discover`."""
    return dict(_load_all(group, plugins_enabled()))


def cache_clear() -> None:
    """Forget what was discovered and loaded (tests that install or fake plugins call it)."""
    _discover.cache_clear()
    _load_all.cache_clear()


# The caches are keyed on whether plugins are enabled, so FT_NO_PLUGINS set after a first
# discovery still takes effect.


@functools.cache
def _discover(group: str, enabled: bool) -> tuple[tuple[str, metadata.EntryPoint], ...]:
    builtin: dict[str, metadata.EntryPoint] = {}
    third_party: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=group):
        own = is_builtin(entry_point)
        if not (own or enabled):
            continue
        table = builtin if own else third_party
        taken = table.get(entry_point.name)
        if taken is None:
            table[entry_point.name] = entry_point
        elif taken.value != entry_point.value:
            _warn_shadowed(group, entry_point, taken)
    for name, entry_point in third_party.items():
        if name in builtin:
            _warn_shadowed(group, entry_point, builtin[name])
    found = third_party | builtin
    return tuple(sorted(found.items()))


@functools.cache
def _load_all(group: str, enabled: bool) -> tuple[tuple[str, Any], ...]:
    loaded: list[tuple[str, Any]] = []
    for name, entry_point in _discover(group, enabled):
        try:
            loaded.append((name, load_entry_point(entry_point)))
        except PluginError:
            continue  # load_entry_point warned
    return tuple(loaded)


def _warn_shadowed(group: str, ignored: metadata.EntryPoint, kept: metadata.EntryPoint) -> None:
    warnings.warn(
        f"{group} plugin {_describe(ignored)} ignored: the name is taken by {kept.value} "
        f"from {_origin(kept)}",
        PluginWarning,
        stacklevel=4,
    )


def _describe(entry_point: metadata.EntryPoint) -> str:
    """`'name' (module:attr, from distribution dist)`."""
    return f"{entry_point.name!r} ({entry_point.value}, from {_origin(entry_point)})"


def _origin(entry_point: metadata.EntryPoint) -> str:
    dist = distribution(entry_point)
    return f"distribution {dist}" if dist else "an unknown distribution"
