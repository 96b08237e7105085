"""Finding exporters: the entry point group `ft.exporters`, built-ins registered the same way.

Discovery is ft-config's (`ft_config.plugins`): a plugin that fails to load is skipped with a
warning, not a crash; `FT_NO_PLUGINS=1` keeps discovery to ft's own exporters (tests use it to
be independent of what else is installed).
"""

from __future__ import annotations

import warnings
from typing import Any

from ft_config import plugins
from ft_export.types import Exporter, ExportError

GROUP = "ft.exporters"


def exporters() -> dict[str, Exporter]:
    """Every registered exporter by format name (one that fails to load is skipped with a
    warning)."""
    found: dict[str, Exporter] = {}
    for name, loaded in plugins.load_all(GROUP).items():
        try:
            found[name] = _exporter(name, loaded)
        except ExportError as error:
            warnings.warn(str(error), plugins.PluginWarning, stacklevel=2)
    return found


def get_exporter(name: str) -> Exporter:
    """The exporter of format `name`, the only one loaded; `ExportError` naming the formats
    there are, or saying why that one failed to load."""
    names = plugins.discover(GROUP)
    if name not in names:
        raise ExportError(
            f"unknown export format {name!r}: choose one of {', '.join(sorted(names))}"
        )
    try:
        loaded = plugins.load(GROUP, name)
    except plugins.PluginError as error:
        raise ExportError(str(error)) from error.__cause__
    return _exporter(name, loaded)


def _exporter(name: str, loaded: Any) -> Exporter:
    try:
        exporter = loaded() if isinstance(loaded, type) else loaded
    except Exception as error:  # a broken plugin must not break ft
        raise ExportError(f"exporter plugin {name!r} failed to start: {error}") from error
    if not isinstance(exporter, Exporter):
        raise ExportError(f"exporter plugin {name!r} is not an Exporter")
    return exporter
