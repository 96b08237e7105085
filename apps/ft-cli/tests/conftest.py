"""What the CLI tests share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from ft_cli.main import cli

RunFt = Callable[..., tuple[int, str]]


@pytest.fixture
def run_ft() -> RunFt:
    """`run_ft(*args, cwd=folder) -> (exit code, output)`: the `ft` command in `folder`, as a
    user types it (stdout and stderr together)."""

    def run(*args: str, cwd: Path) -> tuple[int, str]:
        old = Path.cwd()
        os.chdir(cwd)
        try:
            result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        finally:
            os.chdir(old)
        return result.exit_code, result.output

    return run
