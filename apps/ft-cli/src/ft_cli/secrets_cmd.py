"""`ft secrets`: see, set, encrypt and decrypt passwords.yml without printing a secret."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

file_option = click.option(
    "--file",
    "path",
    default="passwords.yml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The passwords file.",
)


def _passphrase(path: Path, *, confirm: bool = False) -> str | None:
    from ft_config.secrets import PASSPHRASE_ENV

    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        return None
    return click.prompt(f"Passphrase for {path}", hide_input=True, confirmation_prompt=confirm)


def _read(path: Path) -> tuple[dict[str, str | None], str | None]:
    """The file's values and its passphrase (None when it is not encrypted)."""
    from ft_config.secrets import check_permissions, is_encrypted, read_passwords_file

    if not path.exists():
        return {}, None
    check_permissions(path)
    passphrase = _passphrase(path) if is_encrypted(path) else None
    return read_passwords_file(path, passphrase=passphrase), passphrase


@click.group()
def secrets() -> None:
    """See, set, encrypt and decrypt passwords.yml (values are never printed)."""


@secrets.command("list")
@file_option
def list_(path: Path) -> None:
    """Which secrets are set, and where each comes from."""
    from ft_config.secrets import SECRET_SPECS, is_encrypted, load_secrets

    passphrase = _passphrase(path) if path.exists() and is_encrypted(path) else None
    found = load_secrets(path, passphrase=passphrase)
    for spec in SECRET_SPECS:
        source = found.source(spec.name)
        state = f"set (from {source})" if source else f"not set (file or ${spec.env})"
        click.echo(f"  {spec.name:<14} {state}")


@secrets.command("set")
@file_option
@click.argument("name")
def set_(path: Path, name: str) -> None:
    """Set secret NAME, read from the terminal (hidden) or standard input."""
    from ft_config.secrets import SECRET_NAMES, write_passwords_file

    if name not in SECRET_NAMES:
        raise click.BadParameter(f"secrets are {', '.join(SECRET_NAMES)}", param_hint="NAME")
    values, passphrase = _read(path)
    value = (
        click.prompt(name, hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
    )
    if not value:
        raise click.UsageError("empty value; use `ft secrets unset` to remove a secret")
    values[name] = value
    write_passwords_file(path, values, passphrase=passphrase)
    click.echo(f"{name} saved in {path}" + (" (encrypted)" if passphrase else ""))


@secrets.command()
@file_option
@click.argument("name")
def unset(path: Path, name: str) -> None:
    """Remove secret NAME from the file."""
    from ft_config.secrets import write_passwords_file

    values, passphrase = _read(path)
    values[name] = None
    write_passwords_file(path, values, passphrase=passphrase)
    click.echo(f"{name} removed from {path}")


@secrets.command()
@file_option
def encrypt(path: Path) -> None:
    """Encrypt the file with a passphrase (asked twice, or $FT_PASSPHRASE)."""
    from ft_config.secrets import is_encrypted, write_passwords_file

    if path.exists() and is_encrypted(path):
        raise click.UsageError(f"{path} is encrypted already")
    values, _ = _read(path)
    passphrase = _passphrase(path, confirm=True)
    if not passphrase:
        raise click.UsageError("no passphrase: set FT_PASSPHRASE or run in a terminal")
    write_passwords_file(path, values, passphrase=passphrase)
    click.echo(f"{path} is now encrypted; ft asks for the passphrase (or reads $FT_PASSPHRASE).")


@secrets.command()
@file_option
def decrypt(path: Path) -> None:
    """Turn an encrypted file back into plain text (still mode 0600)."""
    from ft_config.secrets import is_encrypted, write_passwords_file

    if not path.exists() or not is_encrypted(path):
        raise click.UsageError(f"{path} is not encrypted")
    values, _ = _read(path)
    write_passwords_file(path, values)
    click.echo(f"{path} is plain text again (readable by you only).")
