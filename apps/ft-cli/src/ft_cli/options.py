"""Options that several commands share: the config file and `--set` overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

DEFAULT_CONFIG = "train.yml"


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """`[CONFIG]`, `--set KEY=VALUE` (repeatable) and `--profile NAME`."""
    func = click.option(
        "--profile",
        "profile",
        default=None,
        metavar="NAME",
        help="Use this profile's defaults instead of the file's `profile:`.",
    )(func)
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a setting, e.g. --set training.learning_rate=1e-4 (repeatable).",
    )(func)
    return click.argument(
        "config_path",
        metavar="[CONFIG]",
        required=False,
        default=DEFAULT_CONFIG,
        type=click.Path(dir_okay=False, path_type=Path),
    )(func)
