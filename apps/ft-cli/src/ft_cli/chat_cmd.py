"""`ft chat` (being built; see the issue tracker)."""

import click

from ft_cli.main import UserError


@click.command()
def chat() -> None:
    """Not built yet."""
    raise UserError("`ft chat` is not built yet in this version of ft.")
