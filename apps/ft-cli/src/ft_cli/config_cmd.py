"""`ft config`: check, show and describe train.yml."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ft_cli.options import config_options


@click.group()
def config() -> None:
    """Check, show and describe train.yml."""


@config.command()
@config_options
def validate(config_path: Path, overrides: tuple[str, ...], profile: str | None) -> None:
    """Check CONFIG (default: train.yml); list every problem with its line."""
    from ft_config import load_config, valid_config_line

    loaded = load_config(config_path, overrides=overrides, profile=profile)
    click.echo(valid_config_line(loaded, str(config_path)))


@config.command()
@config_options
@click.option(
    "--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
def show(config_path: Path, overrides: tuple[str, ...], profile: str | None, fmt: str) -> None:
    """Print every setting in force: defaults, profile, CONFIG and --set, merged."""
    from ft_config import dump_config, load_config, unstructure_config

    loaded = load_config(config_path, overrides=overrides, profile=profile)
    if fmt == "json":
        click.echo(json.dumps(unstructure_config(loaded), indent=2))
    else:
        click.echo(dump_config(loaded), nl=False)


@config.command()
@click.option("--markdown", is_flag=True, help="Print the Markdown reference instead.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file."
)
def schema(markdown: bool, output: Path | None) -> None:
    """Print the JSON Schema of train.yml (for editors), or the Markdown reference."""
    from ft_config import atomic_write_text, json_schema, markdown_reference

    text = markdown_reference() if markdown else json.dumps(json_schema(), indent=2) + "\n"
    if output:
        atomic_write_text(output, text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)
