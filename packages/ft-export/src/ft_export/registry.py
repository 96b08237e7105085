"""Finding exporters: the entry point group `ft.exporters`, built-ins registered the same way.

A plugin that fails to load is skipped with a warning, not a crash; `FT_NO_PLUGINS=1` keeps
discovery to ft's own exporters (tests use it to be independent of what else is installed).
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from importlib.metadata import entry_points

from ft_export.types import Exporter, ExportError

GROUP = "ft.exporters"


@lru_cache(maxsize=1)
def exporters() -> dict[str, Exporter]:
    """Every registered exporter by format name."""
    found: dict[str, Exporter] = {}
    only_builtin = os.environ.get("FT_NO_PLUGINS") == "1"
    for entry in entry_points(group=GROUP):
        if only_builtin and not entry.value.startswith("ft_export."):
            continue
        try:
            loaded = entry.load()
            exporter = loaded() if isinstance(loaded, type) else loaded
        except Exception as error:  # a broken plugin must not break ft
            warnings.warn(f"exporter plugin {entry.name!r} failed to load: {error}", stacklevel=2)
            continue
        if not isinstance(exporter, Exporter):
            warnings.warn(f"exporter plugin {entry.name!r} is not an Exporter", stacklevel=2)
            continue
        found[entry.name] = exporter
    return found


def get_exporter(name: str) -> Exporter:
    """The exporter of format `name`; `ExportError` naming the formats there are."""
    found = exporters()
    if name not in found:
        raise ExportError(
            f"unknown export format {name!r}: choose one of {', '.join(sorted(found))}"
        )
    return found[name]
