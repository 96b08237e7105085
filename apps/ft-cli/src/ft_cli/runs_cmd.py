"""`ft runs`: the runs in the job store, and one run in detail."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    delta = time.time() - seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit} ago"
    return "just now"


def _duration(start: float | None, end: float | None) -> str:
    if start is None:
        return "-"
    seconds = int((end or time.time()) - start)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "queued": "cyan",
    "failed": "red",
    "interrupted": "yellow",
    "stopped": "yellow",
}


@click.group()
def runs() -> None:
    """List training runs and show one in detail."""


@runs.command("list")
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "completed", "failed", "interrupted", "stopped"]),
)
@click.option(
    "-n", "--limit", type=int, default=20, show_default=True, help="How many runs (newest first)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
def list_(status: str | None, limit: int, as_json: bool) -> None:
    """The newest runs: status, model, method, progress, best validation loss."""
    from rich.console import Console
    from rich.table import Table

    from ft_runs.store import JobStore

    records = JobStore().list_runs(status=status, limit=limit)
    if as_json:
        click.echo(json.dumps([_record_dict(r) for r in records], indent=2))
        return
    if not records:
        click.echo("No runs yet: `ft train` starts one.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("run", "status", "model", "method", "step", "best eval loss", "started", "took"):
        table.add_column(column, no_wrap=column in ("run", "status", "model"))
    for r in records:
        step = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
        best = f"{r.best_eval_loss:.4f}" if r.best_eval_loss is not None else "-"
        style = STATUS_STYLE.get(r.status, "")
        table.add_row(
            r.id,
            f"[{style}]{r.status}[/]",
            r.model,
            r.method,
            step,
            best,
            _age(r.started_at),
            _duration(r.started_at, r.ended_at),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: keep whole ids and names, don't wrap at 80
    console.print(table)


@runs.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def show(run_id: str, as_json: bool) -> None:
    """One run: config highlights, data, metrics, checkpoints, where its files are."""
    from ft_cli.main import UserError
    from ft_runs.run_folder import RunFolder
    from ft_runs.store import JobStore, RunNotFound

    store = JobStore()
    store.mark_stale_runs()
    try:
        record = store.get_run(run_id)
    except RunNotFound as exc:
        raise UserError(str(exc)) from None
    train = store.metrics(record.id, "train")
    evals = store.metrics(record.id, "eval")
    folder = RunFolder(Path(record.run_dir))
    info = folder.info() if folder.info_file.exists() else {}
    summary = {
        **_record_dict(record),
        "last_loss": train[-1].get("loss") if train else None,
        "last_eval_loss": evals[-1].get("eval_loss") if evals else None,
        "tokens_per_s": _mean([m.get("tokens_per_s") for m in train[-20:]]),
        "peak_memory_bytes": max((m.get("memory_bytes") or 0 for m in train), default=None) or None,
        "checkpoints": store.checkpoints(record.id),
        "data": info.get("data"),
        "resolved_model": info.get("model"),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    config = record.config
    style = STATUS_STYLE.get(record.status, "")
    lines = [
        f"[bold]{record.id}[/]  [{style}]{record.status}[/]"
        + (f" ({record.reason})" if record.reason else ""),
        f"  model      {record.model}  method {record.method}  backend {record.backend or '-'}",
        f"  training   lr {config.get('training', {}).get('learning_rate')}  epochs {config.get('training', {}).get('epochs')}"
        f"  batch {config.get('training', {}).get('batch_size')}  seq {config.get('data', {}).get('max_seq_length')}",
        f"  progress   step {record.step}"
        + (f"/{record.total_steps}" if record.total_steps else "")
        + f"  took {_duration(record.started_at, record.ended_at)}",
    ]
    if summary["last_loss"] is not None:
        lines.append(
            f"  loss       last {summary['last_loss']:.4f}"
            + (
                f"  eval {summary['last_eval_loss']:.4f}"
                if summary["last_eval_loss"] is not None
                else ""
            )
            + (
                f"  best eval {record.best_eval_loss:.4f}"
                if record.best_eval_loss is not None
                else ""
            )
        )
    if summary["tokens_per_s"]:
        lines.append(f"  speed      {summary['tokens_per_s']:,.0f} tokens/s")
    if summary["peak_memory_bytes"]:
        lines.append(f"  memory     {summary['peak_memory_bytes'] / 2**30:.2f} GiB peak")
    if record.error:
        lines.append(f"  [red]error[/]      {record.error}")
    lines.append(f"  folder     {record.run_dir}")
    if record.adapter_path:
        lines.append(f"  adapter    {record.adapter_path}")
    if record.best_checkpoint:
        lines.append(f"  best       {record.best_checkpoint}")
    if record.config_commit:
        lines.append(f"  config     commit {record.config_commit[:12]}")
    from rich.console import Console

    console = Console()
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, int | float)]
    return sum(numbers) / len(numbers) if numbers else None


def _record_dict(record: Any) -> dict[str, Any]:
    import attrs

    data = attrs.asdict(record)
    data.pop("config_json")
    return data


@runs.command()
@click.argument("run_id", default="last")
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Folder for the files."
)
def report(run_id: str, output: Path | None) -> None:
    """Write RUN's report (default: the latest run): report.html and report.png with the loss,
    validation loss, learning rate, tokens/s and memory curves and the sample generations."""
    from ft_cli.main import UserError
    from ft_runs import RunNotFoundError, find_run
    from ft_runs.report import write_report

    try:
        folder = find_run(run_id)
    except RunNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not folder.events("step"):
        raise UserError(f"run {folder.id} has no training steps recorded yet: nothing to plot")
    written = write_report(folder, output)
    click.echo(f"report: {written.html}")
    click.echo(f"curves: {written.png}")


@runs.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(run_ids: tuple[str, ...], as_json: bool) -> None:
    """Compare runs side by side: the settings that differ, training figures and the latest
    evaluation of each."""
    from rich.console import Console
    from rich.table import Table

    from ft_cli.main import UserError
    from ft_config import load_config, unstructure_config
    from ft_runs import RunNotFoundError, find_run
    from ft_runs.report import latest_evaluation, run_summary
    from ft_train_core.state import flatten_settings

    if len(run_ids) < 2:
        raise UserError("give at least two runs to compare, e.g. `ft runs compare A B`")
    try:
        folders = [find_run(r) for r in run_ids]
    except RunNotFoundError as exc:
        raise UserError(str(exc)) from None
    settings = [flatten_settings(unstructure_config(load_config(f.config_file))) for f in folders]
    keys = sorted(set().union(*settings))
    differing = {
        k: [s.get(k) for s in settings]
        for k in keys
        if len({json.dumps(s.get(k)) for s in settings}) > 1
    }
    summaries = [run_summary(f) for f in folders]
    evaluations = [latest_evaluation(f) or {} for f in folders]
    figures: dict[str, list[Any]] = {
        "steps": [s["steps"] for s in summaries],
        "last loss": [s["last_loss"] for s in summaries],
        "best eval loss": [(s["best_eval"] or {}).get("eval_loss") for s in summaries],
        "tokens/s": [s["tokens_per_s"] for s in summaries],
        "peak memory GiB": [
            s["peak_memory_bytes"] / 2**30 if s["peak_memory_bytes"] else None for s in summaries
        ],
        "train seconds": [s["train_seconds"] for s in summaries],
    }
    metric_names = sorted({k for e in evaluations for k in e.get("metrics", {})})
    for name in metric_names:
        figures[f"eval {name}"] = [e.get("metrics", {}).get(name) for e in evaluations]
    if as_json:
        click.echo(
            json.dumps(
                {"runs": [f.id for f in folders], "settings": differing, "figures": figures},
                indent=2,
                default=str,
            )
        )
        return
    console = Console() if Console().is_terminal else Console(width=200)
    table = Table(box=None, pad_edge=False)
    table.add_column("")
    for f in folders:
        table.add_column(f.id, overflow="fold")
    for key, values in differing.items():
        table.add_row(f"[dim]{key}[/]", *[str(v) for v in values])
    if differing:
        table.add_section()
    for name, values in figures.items():
        finite = [v for v in values if isinstance(v, int | float)]
        lower_better = "loss" in name or "memory" in name or "seconds" in name
        best = (
            (min(finite) if lower_better else max(finite)) if finite and len(finite) > 1 else None
        )
        cells = []
        for v in values:
            text = "-" if v is None else (f"{v:,.4f}" if isinstance(v, float) else str(v))
            cells.append(f"[bold green]{text}[/]" if v is not None and v == best else text)
        table.add_row(name, *cells)
    console.print(table)


@runs.command()
@click.argument("folders", nargs=-1, type=click.Path(file_okay=False, path_type=Path))
def rebuild(folders: tuple[Path, ...]) -> None:
    """Rebuild the job store from the run folders, which hold the truth: the database
    (ft.db) is moved aside as ft.db.broken-<time>, never deleted. Runs are found in FOLDERS
    (run folders, or folders of them such as a project's runs/), in the list of run folders
    kept beside the database, and in the old database when it can still be read; the trials
    of those projects' `ft tune` studies are recorded again from their journals.

    \b
    ft runs rebuild                  # after "ft.db is damaged"
    ft runs rebuild ~/proj/runs      # and the runs of this project
    """
    from ft_runs.rebuild import rebuild_store

    done = rebuild_store(folders=folders, say=click.echo)
    click.echo(
        f"rebuilt {done.database}: {len(done.runs)} run(s) recorded"
        + (
            f", the trials of {len(done.studies)} tune "
            + ("study" if len(done.studies) == 1 else "studies")
            if done.studies
            else ""
        )
        + (f", {len(done.skipped)} folder(s) skipped" if done.skipped else "")
    )
