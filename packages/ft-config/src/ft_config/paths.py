"""Where ft keeps its files: models, prepared datasets, configs and logs (each command's log,
see `ft_config.command_log`). Checkpoints live in each run's folder, beside its train.yml.

macOS: everything under `~/Library/Application Support/FineTune`. Linux: the XDG base
directories (`$XDG_DATA_HOME/FineTune` for data, `$XDG_CONFIG_HOME/FineTune` for configs,
`$XDG_STATE_HOME/FineTune/log` for logs). Windows: `%LOCALAPPDATA%\\FineTune`. `FT_HOME`
puts everything under one folder instead, which is what tests and portable setups use.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import attrs
import platformdirs
import platformdirs.macos
import platformdirs.unix
import platformdirs.windows

APP_NAME = "FineTune"
HOME_ENV = "FT_HOME"


@attrs.frozen
class AppPaths:
    """The folders ft reads and writes outside a project. Nothing is created until `ensure()`."""

    home: Path
    models: Path
    datasets: Path
    configs: Path
    logs: Path

    @property
    def database(self) -> Path:
        """The SQLite job store."""
        return self.home / "ft.db"

    def ensure(self) -> AppPaths:
        """Create every folder (mode 0700: runs and caches can hold private data)."""
        for folder in (
            self.home,
            self.models,
            self.datasets,
            self.configs,
            self.logs,
        ):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    def as_dict(self) -> dict[str, str]:
        """The folders by name, as strings (for `ft doctor` and JSON output)."""
        return {
            name: str(getattr(self, name))
            for name in ("home", "models", "datasets", "configs", "logs")
        } | {"database": str(self.database)}


def app_paths(environ: Mapping[str, str] | None = None, platform: str | None = None) -> AppPaths:
    """The app folders for this machine and user; `FT_HOME` (in `environ`) overrides them all.

    `platform` (a `sys.platform` value) is for tests and docs; it defaults to this machine's.
    """
    env = os.environ if environ is None else environ
    override = env.get(HOME_ENV)
    if override:
        return _under(Path(override).expanduser().resolve())
    platform = platform or sys.platform
    if platform == "darwin":
        # One folder holds everything, as Mac apps do.
        return _under(Path(platformdirs.macos.MacOS(APP_NAME).user_data_dir))
    if platform.startswith("win"):
        return _under(Path(platformdirs.windows.Windows(APP_NAME, appauthor=False).user_data_dir))
    xdg = platformdirs.unix.Unix(APP_NAME)
    data = Path(xdg.user_data_dir)
    return AppPaths(
        home=data,
        models=data / "models",
        datasets=data / "datasets",
        configs=Path(xdg.user_config_dir),
        logs=Path(xdg.user_log_dir),
    )


def _under(home: Path) -> AppPaths:
    return AppPaths(
        home=home,
        models=home / "models",
        datasets=home / "datasets",
        configs=home / "configs",
        logs=home / "logs",
    )
