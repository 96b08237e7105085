"""`ft evaluate`: validation loss, answers next to the base model's, and task metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


@click.command()
@click.argument("run_id", default="last")
@click.option(
    "--checkpoint",
    default=None,
    metavar="best|last|final|STEP",
    help="Which weights: the best checkpoint (default when there is one), the newest, the "
    "final adapter, or a step.",
)
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Evaluate on this file (any format ft reads) instead of the run's validation set.",
)
@click.option(
    "--samples", type=click.IntRange(min=0), default=5, show_default=True, help="Answers to show."
)
@click.option(
    "--max-examples",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Prompts to answer for the metrics.",
)
@click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--no-base", is_flag=True, help="Skip the base model (faster).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def evaluate(
    run_id: str,
    checkpoint: str | None,
    data: Path | None,
    samples: int,
    max_examples: int,
    max_tokens: int,
    no_base: bool,
    as_json: bool,
) -> None:
    """Evaluate RUN (default: the latest): loss and perplexity, answers to held-out prompts
    from the fine-tuned and the base model side by side, and exact match, token F1, ROUGE-L and
    BLEU against the reference answers. A classification run (model.task:
    sequence-classification) gets loss, accuracy and macro F1 instead, with predicted and true
    classes as samples (no base model: its head is untrained). Results are stored with the run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from ft_cli.main import UserError, quiet_libraries
    from ft_data.errors import DataError
    from ft_runs import RunNotFoundError, find_run
    from ft_runs.evaluate import evaluate_run
    from ft_runs.store import JobStore, StoreError

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    quiet_libraries()
    try:
        folder = find_run(run_id)
    except RunNotFoundError as exc:
        raise UserError(str(exc)) from None
    progress = Progress(
        TextColumn("answering as the {task.description} model"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def tick(role: str, done: int, total: int) -> None:
        if role not in tasks:
            tasks[role] = progress.add_task(role, total=total)
        progress.update(tasks[role], completed=done)

    try:
        store: Any = JobStore()
    except StoreError as exc:
        # The results still go to the run folder; the store can be rebuilt from it later.
        console.print(f"warning: not recording in the job store: {exc}", markup=False)
        store = None
    try:
        with progress:
            result = evaluate_run(
                folder,
                checkpoint=checkpoint,
                data=data,
                samples=samples,
                max_examples=max_examples,
                max_tokens=max_tokens,
                compare_base=not no_base,
                store=store if store is not None and _known(store, folder.id) else None,
                say=lambda text: console.print(text),
                progress=tick,
            )
    except (RunNotFoundError, DataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "file": str(result.file)}, indent=2))
        return
    out = Console() if Console().is_terminal else Console(width=160)
    out.print(f"[bold]{result.run}[/] at {result.checkpoint} on {result.data}", highlight=False)
    table = Table(box=None, pad_edge=False)
    table.add_column("metric")
    table.add_column("fine-tuned", justify="right")
    if result.base_metrics:
        table.add_column("base", justify="right")
    for key, value in result.metrics.items():
        base = result.base_metrics.get(key)
        cells = [f"{value:.4f}"] + (
            [f"{base:.4f}" if base is not None else "-"] if result.base_metrics else []
        )
        table.add_row(key, *cells)
    out.print(table)
    if result.samples:
        classify = "accuracy" in result.metrics  # samples are (text, predicted, true class)
        answers = Table(show_lines=True, expand=True)
        answers.add_column("text" if classify else "prompt", ratio=2)
        if result.base_metrics:
            answers.add_column("base model", ratio=3)
        answers.add_column("predicted" if classify else "fine-tuned", ratio=3)
        pairs = "rejected" in result.samples[0]  # preference pairs: chosen and rejected
        answers.add_column("label" if classify else "chosen" if pairs else "reference", ratio=3)
        if pairs:
            answers.add_column("rejected", ratio=3)
        for s in result.samples:
            row = [s["prompt"]] + ([s["base"] or ""] if result.base_metrics else [])
            answers.add_row(*row, s["tuned"], s["reference"], *([s["rejected"]] if pairs else []))
        out.print(answers)
    out.print(f"saved: {result.file}")


def _known(store: Any, run_id: str) -> bool:
    from ft_runs.store import RunNotFound

    try:
        store.get_run(run_id)
    except RunNotFound:
        return False
    return True
