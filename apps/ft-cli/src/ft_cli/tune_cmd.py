"""`ft tune`: a hyper-parameter study of train.yml, with a live table of its trials, and
`ft tune promote`: the best trial's settings and adapter made the project's.

The work is ft_runs.tune; this module parses, draws the table and prints the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

STATE_STYLE = {
    "COMPLETE": "green",
    "PRUNED": "yellow",
    "RUNNING": "cyan",
    "FAIL": "red",
    "SKIPPED": "magenta",
    "WAITING": "dim",
}


def _config(config: Path | None) -> Path:
    from ft_cli.main import UserError

    config = config or Path("train.yml")
    if not config.exists():
        raise UserError(f"{config}: no such file (`ft init` writes a train.yml)")
    return config


def trials_table(rows: list[dict[str, Any]], metric: str) -> Any:
    """The rich table of a study's trials: state, settings, metric, progress, pruned at."""
    from rich.table import Table

    from ft_runs.tune import format_value

    names = sorted({k for r in rows for k in r["settings"]})
    table = Table(title="trials", title_justify="left", expand=False)
    table.add_column("#", justify="right")
    table.add_column("state")
    for name in names:
        table.add_column(name.split(".")[-1], justify="right")
    table.add_column(metric, justify="right")
    table.add_column("step", justify="right")
    table.add_column("pruned at", justify="right")
    table.add_column("run / note")
    for r in rows:
        state = r["state"]
        value = f"{r['value']:.4f}" if isinstance(r["value"], float) else ""
        step = f"{r['step']}/{r['total_steps'] or '?'}" if r.get("step") is not None else ""
        table.add_row(
            str(r["number"]),
            f"[{STATE_STYLE.get(state, 'white')}]{state.lower()}[/]",
            *[format_value(r["settings"][n]) if n in r["settings"] else "-" for n in names],
            value,
            step,
            str(r["pruned_at"] or ""),
            r["note"] if state in ("FAIL", "SKIPPED") and r.get("note") else (r["run_id"] or ""),
        )
    return table


@click.group(invoke_without_command=True)
@click.option(
    "--config",
    "-c",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The train.yml to tune (default: ./train.yml).",
)
@click.option(
    "--trials", type=click.IntRange(min=1), help="Finished trials to reach (tune.trials)."
)
@click.option(
    "--timeout",
    "timeout_minutes",
    type=click.FloatRange(min=0, min_open=True),
    metavar="MIN",
    help="Start no new trial after MIN minutes (tune.timeout_minutes).",
)
@click.option(
    "--sampler", type=click.Choice(["tpe", "random", "grid"]), help="tune.sampler for a new study."
)
@click.option("--name", help="The new study's name (default: study-DATE-TIME).")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[STUDY]",
    help="Continue STUDY (alone: the newest) where it stopped; dead trials are retried.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting of every trial (repeatable), e.g. --set training.max_steps=50.",
)
@click.option("--profile", help="Start from a profile's defaults.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON at the end.")
@click.pass_context
def tune(
    ctx: click.Context,
    config: Path | None,
    trials: int | None,
    timeout_minutes: float | None,
    sampler: str | None,
    name: str | None,
    resume: str | None,
    overrides: tuple[str, ...],
    profile: str | None,
    as_json: bool,
) -> None:
    """Search hyper-parameters: train.yml's runs with settings drawn from tune.search_space.

    \b
    ft tune --trials 20 --timeout 120     # TPE; stops unpromising trials early
    ft tune --sampler random --trials 8
    ft tune --resume                      # continue the newest study
    ft tune promote                       # the best trial becomes train.yml and ./model
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.live import Live

    from ft_cli.main import UserError, quiet_libraries
    from ft_config import ConfigError, load_config
    from ft_data.errors import DataError
    from ft_runs import tune as tuning
    from ft_runs.tune_space import SearchSpaceError

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    quiet_libraries()
    try:
        if resume:
            project = (config or Path("train.yml")).resolve().parent
            files = tuning.find_study(project, None if resume == "latest" else resume)
            if overrides or sampler or profile or name:
                raise UserError(
                    "--resume continues a study as it started: --set, --sampler, --profile and "
                    "--name apply to a new study only"
                )
        else:
            files = tuning.start_study(
                _config(config),
                name=name,
                overrides=overrides,
                profile=profile,
                trials=trials,
                timeout_minutes=timeout_minutes,
                sampler=sampler,
            )
        info = json.loads(files.info.read_text(encoding="utf-8"))
        metric = load_config(
            info["config_path"], overrides=info["overrides"], profile=info["profile"]
        ).tune.metric
        console.print(f"study {files.name}: {files.dir}", markup=False)
        with Live(
            trials_table([], metric), console=console, refresh_per_second=4, transient=False
        ) as live:

            def say(text: str) -> None:
                live.console.print(text, markup=False)

            def update(rows: list[dict[str, Any]]) -> None:
                live.update(trials_table(rows, metric))

            result = tuning.run_study(
                files,
                trials=trials if resume else None,
                timeout_minutes=timeout_minutes if resume else None,
                say=say,
                on_change=update,
            )
            update(result.trials)
    except (ConfigError, DataError, SearchSpaceError, tuning.TuneError) as exc:
        raise UserError(str(exc)) from None
    except (ValueError, ImportError) as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        raise UserError(
            "stopped at once (second Ctrl-C): `ft tune --resume` continues the study"
        ) from None
    summary = {
        "study": files.name,
        "folder": str(files.dir),
        "stopped_by": result.stopped_by,
        "best": result.best,
        "report": str(result.report) if result.report else None,
        "trials": result.trials,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    if result.best is not None:
        best = result.best
        console.print(
            f"[green]best[/]: trial {best['number']}, {metric} {best['value']:.4f}, "
            f"run {best['run_id']}"
        )
    if result.report is not None:
        console.print(f"  report   {result.report}")
    console.print(f"  promote  ft tune promote --study {files.name}")
    if result.stopped_by == "interrupted":
        console.print(f"  resume   ft tune --resume {files.name}")


@tune.command()
@click.option(
    "--config",
    "-c",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The project's train.yml (default: ./train.yml); its folder holds the studies.",
)
@click.option("--study", help="The study (default: the newest).")
@click.option("--trial", type=click.IntRange(min=0), help="A trial other than the best.")
def promote(config: Path | None, study: str | None, trial: int | None) -> None:
    """Make the best trial the project's: its settings into train.yml (a git commit) and its
    adapter into ./model."""
    from ft_cli.main import UserError
    from ft_config import ConfigError
    from ft_runs import tune as tuning
    from ft_runs.store import RunNotFound
    from ft_runs.tune_promote import promote as promote_trial

    project = (config or Path("train.yml")).resolve().parent
    try:
        files = tuning.find_study(project, study)
        promote_trial(files, trial, say=click.echo)
    except (ConfigError, tuning.TuneError, RunNotFound) as exc:
        raise UserError(str(exc)) from None
