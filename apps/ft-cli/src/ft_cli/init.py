"""`ft init`: a project folder with train.yml, passwords.yml, starter data and a git history."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

GITIGNORE_LINES = [
    "# ft: secrets, runs and caches stay out of git",
    "passwords.yml",
    "runs/",
    ".ft/cache/",
    "*.safetensors",
    "*.gguf",
    "*.h5",
]
SCHEMA_FILE = ".ft/train.schema.json"


@click.command()
@click.argument(
    "directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path)
)
@click.option(
    "--profile",
    default="chat",
    show_default=True,
    metavar="NAME",
    help="Defaults to start from: chat, instruction, code or domain.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing train.yml (passwords.yml is always kept)."
)
@click.option("--no-git", is_flag=True, help="Do not create a git repository.")
def init(directory: Path, profile: str, force: bool, no_git: bool) -> None:
    """Create a project in DIRECTORY (default: here).

    Writes train.yml (commented), passwords.yml (readable by you only), starter data in
    data/train.jsonl, .gitignore, and a git repository with the configs committed, so every
    run can record the config's commit.
    """
    from ft_cli.main import UserError
    from ft_cli.samples import sample_jsonl
    from ft_config import ConfigError, atomic_write_text, json_schema, render_train_yml
    from ft_config.profiles import BUILTIN, ProfileNotFound, find_profile
    from ft_config.secrets import PASSWORDS_FILE, write_passwords_file

    try:
        find_profile(profile, Path.cwd())
        train_yml = render_train_yml(profile, schema_path=SCHEMA_FILE)
    except (ProfileNotFound, ConfigError) as exc:
        raise UserError(f"--profile {profile}: {exc}") from None

    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "train.yml"
    if config_file.exists() and not force:
        raise UserError(f"{config_file} already exists; use --force to replace it")

    written: list[tuple[Path, str]] = []
    atomic_write_text(config_file, train_yml)
    written.append((config_file, f"the training job (profile {profile})"))

    import json

    atomic_write_text(directory / SCHEMA_FILE, json.dumps(json_schema(), indent=2) + "\n")
    written.append((directory / SCHEMA_FILE, "JSON Schema, so editors check train.yml as you type"))

    passwords = directory / PASSWORDS_FILE
    if passwords.exists():
        written.append((passwords, "kept as it was"))
    else:
        write_passwords_file(passwords)
        written.append((passwords, "secrets, mode 0600, not in git"))

    data_file = directory / "data" / "train.jsonl"
    if data_file.exists():
        written.append((data_file, "kept as it was"))
    else:
        atomic_write_text(data_file, sample_jsonl(profile if profile in BUILTIN else None))
        written.append((data_file, "starter data: replace it with yours"))

    gitignore = directory / ".gitignore"
    existing = gitignore.read_text(encoding="utf-8").splitlines() if gitignore.exists() else []
    missing = [line for line in GITIGNORE_LINES if line not in existing]
    if missing:
        prefix = existing + ([""] if existing and existing[-1] else [])
        atomic_write_text(gitignore, "\n".join(prefix + missing) + "\n")
    written.append((gitignore, "keeps secrets, runs and weights out of git"))

    for path, what in written:
        click.echo(f"  {click.style(str(path), bold=True)}  {what}")

    if no_git:
        pass
    elif shutil.which("git") is None:
        click.echo(
            "git is not installed: config history is not versioned (install git, then `git init`)."
        )
    else:
        tracked = [config_file, directory / SCHEMA_FILE, gitignore, data_file]
        click.echo(_commit_configs(directory, tracked, profile))

    click.echo()
    click.echo("Next:")
    if directory.resolve() != Path.cwd().resolve():
        click.echo(f"  cd {directory}")
    click.echo("  ft config validate     # check train.yml")
    click.echo("  ft train               # fine-tune (smollm2-135m works offline)")


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, text=True, check=False
    )


def _commit_configs(directory: Path, files: list[Path], profile: str) -> str:
    """git init (unless inside a repository already) and commit the config files."""
    inside = _git(directory, "rev-parse", "--is-inside-work-tree")
    if inside.returncode == 0 and inside.stdout.strip() == "true":
        return "This folder is in a git repository already: commit train.yml when you are ready."
    result = _git(directory, "init", "-q")
    if result.returncode != 0:
        return f"git init failed ({result.stderr.strip()}); config history is not versioned."
    _git(directory, "add", "--", *[str(f.relative_to(directory)) for f in files])
    identity: list[str] = []
    if not _git(directory, "config", "user.email").stdout.strip():
        # No git identity configured: commit as ft rather than fail; the user can amend.
        identity = ["-c", "user.name=ft init", "-c", "user.email=ft@localhost"]
    commit = subprocess.run(
        [
            "git",
            "-C",
            str(directory),
            *identity,
            "commit",
            "-q",
            "-m",
            f"ft init: training config (profile {profile})",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if commit.returncode != 0:
        return f"git commit failed ({commit.stderr.strip()}); commit train.yml yourself."
    sha = _git(directory, "rev-parse", "--short", "HEAD").stdout.strip()
    return f"Created a git repository and committed the configs ({sha})."
