"""`ft evaluate` (being built; see the issue tracker)."""

import click

from ft_cli.main import UserError


@click.command()
def evaluate() -> None:
    """Not built yet."""
    raise UserError("`ft evaluate` is not built yet in this version of ft.")
