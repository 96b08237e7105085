"""`ft export` (being built; see the issue tracker)."""

import click

from ft_cli.main import UserError


@click.command()
def export() -> None:
    """Not built yet."""
    raise UserError("`ft export` is not built yet in this version of ft.")
