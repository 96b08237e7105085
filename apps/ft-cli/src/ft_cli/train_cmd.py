"""`ft train` (being built; see the issue tracker)."""

import click

from ft_cli.main import UserError


@click.command()
def train() -> None:
    """Not built yet."""
    raise UserError("`ft train` is not built yet in this version of ft.")
