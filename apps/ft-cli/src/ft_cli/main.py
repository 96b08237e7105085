"""The `ft` meta-CLI: assembles the commands that packages contribute, lazily.

Each command is an entry point in the group `ft.commands` (ft's own included, so a third-party
package adds a command the same way), found through `ft_config.plugins`. Nothing is imported
until a command runs or its help is shown, and command modules import their heavy libraries
(torch, mlx, transformers) inside the function bodies, so `ft --help` stays fast.
`FT_NO_PLUGINS=1` loads only the commands ft itself ships.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from ft_cli import __version__
from ft_config import plugins
from ft_config.telemetry import switch_off_telemetry

COMMANDS_GROUP = "ft.commands"
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def command_entry_points() -> dict[str, metadata.EntryPoint]:
    """The `ft.commands` entry points by command name (discovered once per process).

    ft's own commands (distributions named `ft-*`) win over a plugin's command of the same
    name; the plugin's is ignored with a warning.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", plugins.PluginWarning)
        found = plugins.discover(COMMANDS_GROUP)
    for warning in caught:
        if issubclass(warning.category, plugins.PluginWarning):
            click.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return found


def quiet_libraries() -> None:
    """Hide what the model libraries print that tells a user nothing: transformers' "Loading
    weights" bars and a deprecation warning peft triggers. Downloads keep their progress bars
    (huggingface_hub's own). Call it in commands that load models, before loading."""
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


class UserError(click.ClickException):
    """An error the user can fix; printed as `error: ...` without a traceback, then where the
    command's log is (`details in ...`)."""

    log_file: Path | None = None
    """The command's log (set by the `ft` group on the way out)."""

    def format_message(self) -> str:
        return self.message

    def show(self, file: Any = None) -> None:
        for i, line in enumerate(self.format_message().splitlines()):
            prefix = click.style("error: ", fg="red", bold=True) if i == 0 else "       "
            click.echo(prefix + line, err=True)
        if self.log_file is not None:
            click.echo(f"       details in {self.log_file}", err=True)


class LazyGroup(click.Group):
    """A click group whose subcommands are entry points, loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(command_entry_points()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        ep = command_entry_points().get(name)
        if ep is None:
            return None
        try:
            with warnings.catch_warnings():
                # Said below, in the CLI's words, instead of as a Python warning.
                warnings.simplefilter("ignore", plugins.PluginWarning)
                loaded = plugins.load_entry_point(ep)
        except plugins.PluginError as exc:  # a broken plugin must not take the whole CLI down
            click.echo(
                f"warning: command {name!r} ({ep.value}) failed to load: {exc.__cause__}",
                err=True,
            )
            return None
        if not isinstance(loaded, click.Command):
            click.echo(f"warning: entry point {ep.value} is not a click command", err=True)
            return None
        return loaded

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        # Suggest the closest command for a typo, as git does.
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" Did you mean 'ft {close[0]}'?" if close else ""
            raise click.UsageError(f"no command {name!r}.{hint} See 'ft --help'.", ctx)
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ft.argv"] = ["ft", *args]  # for the log: the command as typed
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        # Errors from the libraries that a user can fix become `error: ...` lines, exit 1.
        # Every command's log goes to the app's logs folder (ft_config.command_log).
        from ft_config import ConfigError, SecretsError
        from ft_config.command_log import start_command_log
        from ft_runs.store import StoreError  # the job store's errors name its file

        switch_off_telemetry()
        command_log = start_command_log(ctx.meta.get("ft.argv", ["ft"]))
        status = "exit 0"
        try:
            return super().invoke(ctx)
        except (ConfigError, SecretsError, StoreError) as exc:
            status = "exit 1"
            log.error("error: %s", exc)
            error = UserError(str(exc))
            error.log_file = command_log.path if command_log else None
            raise error from None
        except click.exceptions.Exit as exc:
            status = f"exit {exc.exit_code}"
            raise
        except click.ClickException as exc:
            status = f"exit {exc.exit_code}"
            log.error("error: %s", exc.format_message())
            if isinstance(exc, UserError) and command_log is not None:
                exc.log_file = command_log.path
            raise
        except SystemExit as exc:
            status = f"exit {exc.code}"
            raise
        except (KeyboardInterrupt, click.Abort):
            status = "stopped (Ctrl-C or SIGTERM)"
            raise
        except Exception:
            status = "crashed"
            log.exception("unexpected error")
            raise
        finally:
            if command_log is not None:
                command_log.close(status)


def _ft_versions() -> str:
    lines = [f"ft {__version__}"]
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        name = dist.metadata["Name"] or ""
        if name.startswith("ft-"):
            lines.append(f"  {name} {dist.version}")
    return "\n".join(lines)


def _print_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_ft_versions())
        ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the versions of ft's packages and exit.",
)
def cli() -> None:
    """ft: fine-tune language models on your own machine.

    \b
    Start:     ft init my-project && cd my-project && ft train
    Check:     ft doctor
    Configure: ft config show | validate | schema
    """


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point."""
    switch_off_telemetry()  # before any command imports huggingface_hub
    # SIGTERM (a service manager, `kill`) stops a command as Ctrl-C does: at once, through the
    # same clean-up (temporary files removed, the run marked interrupted). `ft train` answers
    # both with its own handler (ft_runs.launching.StopFlag) once it runs.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        code = cli.main(prog_name="ft", standalone_mode=True) or 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if not isinstance(done.code, int) and done.code is not None:
            print(done.code, file=sys.stderr)
    _leave_now_if_compiling(code)
    sys.exit(code)


def _leave_now_if_compiling(code: int) -> None:
    # `ft chat` and `ft serve` compile the decode step in a builder process; a command that
    # ends first stops it and leaves at once.
    compiled_decode = sys.modules.get("ft_models.generation.compiled_decode")
    if compiled_decode is not None:
        compiled_decode.exit_now_if_compiling(code)
