"""`ft generate` (being built; see the issue tracker)."""

import click

from ft_cli.main import UserError


@click.command()
def generate() -> None:
    """Not built yet."""
    raise UserError("`ft generate` is not built yet in this version of ft.")
