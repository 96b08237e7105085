"""`ft demo` (being built; see the issue tracker)."""

import click

from ft_cli.main import UserError


@click.command()
def demo() -> None:
    """Not built yet."""
    raise UserError("`ft demo` is not built yet in this version of ft.")
