"""`ft dataset augment`: new training rows from a local model (the work is ft_runs.augment's).

Registered on the `ft dataset` group by ft_cli.dataset_cmd; ft-runs and ft-models are imported
inside the command, so `ft --help` stays light.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ft_cli.main import UserError

METHOD_NAMES = ("paraphrase", "backtranslate", "qa", "self-instruct")


@click.command()
@click.argument("source", metavar="SRC")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The JSONL file the new rows are appended to (dropped rows go to "
    "OUTPUT's .rejected.jsonl). Needed unless --preview.",
)
@click.option(
    "-m",
    "--model",
    default="smollm2-135m",
    show_default=True,
    help="The model that writes: a folder, catalog alias, Hub repo id or .gguf file.",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(METHOD_NAMES),
    help="Augmentation method; repeat for several (default: paraphrase).",
)
@click.option(
    "-n", "--variants", default=1, show_default=True, type=click.IntRange(min=1),
    help="Rows to write per source row and method.",
)  # fmt: skip
@click.option(
    "--pivot",
    "pivots",
    multiple=True,
    help="Pivot language of backtranslate; repeat for several, used in turn by the variants "
    "(default: French).",
)
@click.option("--language", default="English", show_default=True, help="The language of the data.")
@click.option(
    "--seed-examples", default=3, show_default=True, type=click.IntRange(min=1),
    help="Seed rows shown per self-instruct prompt.",
)  # fmt: skip
@click.option("--rows", type=click.IntRange(min=1), help="Augment only the first ROWS rows of SRC.")
@click.option("--format", "format_name", help="SRC's format, when detection cannot tell.")
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(min=0))
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--max-tokens", default=512, show_default=True, type=click.IntRange(min=1),
    help="The most tokens per generated text.",
)  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of all sampling.")
@click.option(
    "--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
    help="Rows generated, filtered and appended together.",
)  # fmt: skip
@click.option(
    "--max-similarity", default=0.9, show_default=True, type=click.FloatRange(0, 1),
    help="Drop a row whose character 5-gram Jaccard similarity to its source row is at "
    "least this.",
)  # fmt: skip
@click.option(
    "--min-similarity", default=0.0, show_default=True, type=click.FloatRange(0, 1),
    help="Drop a paraphrase or back-translation whose similarity to its source row is below "
    "this (it drifted); 0 is off.",
)  # fmt: skip
@click.option(
    "--near-threshold", default=0.85, show_default=True, type=click.FloatRange(0, 1),
    help="Jaccard similarity from which a row is a near duplicate of a source or kept row.",
)  # fmt: skip
@click.option(
    "--keep-cut",
    is_flag=True,
    help="Keep rows whose text the model had not finished at --max-tokens (dropped by default).",
)
@click.option(
    "--eval",
    "eval_source",
    metavar="PATH",
    help="Evaluation or test data: new rows that overlap its rows are dropped (contamination).",
)
@click.option(
    "--preview", type=click.IntRange(min=1), metavar="N",
    help="Generate the first N rows, show them with the filters' verdicts, and write nothing.",
)  # fmt: skip
@click.option("--backend", default="auto", show_default=True, help="auto, torch or mlx.")
@click.option("--template", help="Chat template for the prompts (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def augment(
    source: str,
    output: Path | None,
    model: str,
    methods: tuple[str, ...],
    variants: int,
    pivots: tuple[str, ...],
    language: str,
    seed_examples: int,
    rows: int | None,
    format_name: str | None,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    batch_size: int,
    max_similarity: float,
    min_similarity: float,
    near_threshold: float,
    keep_cut: bool,
    eval_source: str | None,
    preview: int | None,
    backend: str,
    template: str | None,
    as_json: bool,
) -> None:
    """Write new training rows from SRC's rows with a local model: paraphrases of prompts and
    answers, back-translations through a pivot language, question/answer pairs from raw text,
    or new examples in the style of the rows (self-instruct).

    Each new row is tagged with its origin (source row), method and variant under the key
    `augment`. Rows too similar to their source, duplicates of a source or earlier row, and
    rows that overlap --eval data are dropped, with the reason, into OUTPUT's .rejected.jsonl.
    Run the same command again after an interruption: it goes on where it stopped.

    \b
    ft dataset augment data/train.jsonl --preview 3
    ft dataset augment data/train.jsonl -o data/augmented.jsonl -n 2 --method paraphrase
    ft dataset augment notes.md -o qa.jsonl --method qa --model ./my-model
    """
    from ft_runs.augment import Augmenter, AugmentSettings, read_sources, read_texts

    if output is None and preview is None:
        raise click.UsageError("give -o OUTPUT (a .jsonl file), or --preview N to look first")
    settings = AugmentSettings(
        methods=methods or ("paraphrase",),
        variants=variants,
        pivots=pivots or ("French",),
        language=language,
        seed_examples=seed_examples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        batch_size=batch_size,
        max_similarity=max_similarity,
        min_similarity=min_similarity,
        near_threshold=near_threshold,
        keep_cut=keep_cut,
    )
    sources = read_sources(source, format=format_name)
    if rows is not None:
        sources = sources[:rows]
    eval_texts = read_texts(eval_source) if eval_source else []
    generator = _load(model, backend, template)
    augmenter = Augmenter(
        generator,
        sources,
        settings,
        origin=source,
        model_name=model,
        eval_texts=eval_texts,
    )
    if preview is not None:
        outcomes = augmenter.preview(preview)
        if as_json:
            click.echo(
                json.dumps(
                    [{**o.record, "dropped": o.reason} for o in outcomes],
                    indent=2,
                    ensure_ascii=False,
                )
            )
            return
        for outcome in outcomes:
            _print_outcome(outcome)
        click.echo(
            f"preview: {sum(o.reason is None for o in outcomes)} of {len(outcomes)} rows kept; "
            f"the whole run makes {len(augmenter.units)} rows before filtering (nothing written)"
        )
        return
    assert output is not None
    with _progress(len(augmenter.units)) as progress:
        summary = augmenter.run(output, on_progress=progress)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    dropped = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.dropped.items()))
    resumed = f" ({summary.already_done} done before: resumed)" if summary.already_done else ""
    click.echo(
        f"{summary.kept} rows written to {output}{resumed}; "
        f"{sum(summary.dropped.values())} dropped"
        + (f" ({dropped}) -> {summary.rejected}" if dropped else "")
    )


def _load(model: str, backend: str, template: str | None) -> Any:
    from ft_cli.main import quiet_libraries
    from ft_models.device import DeviceError
    from ft_models.generate import GenerationError, Generator
    from ft_models.hub import ModelError
    from ft_models.load import ModelLoadError

    quiet_libraries()
    try:
        generator = Generator.load(model, backend=backend, template=template)
    except (GenerationError, ModelError, ModelLoadError, DeviceError, ImportError) as error:
        raise UserError(str(error)) from None
    click.echo(f"model: {generator.reason}", err=True)
    return generator


def _print_outcome(outcome: Any) -> None:
    unit = outcome.unit
    verdict = "kept" if outcome.reason is None else f"dropped: {outcome.reason}"
    click.secho(
        f"--- {unit.method} #{unit.variant} of row {unit.row} ({verdict})",
        bold=True,
        fg="green" if outcome.reason is None else "yellow",
    )
    record = outcome.record
    if "text" in record:
        click.echo(record["text"])
    else:
        for message in record["messages"]:
            click.echo(f"{message['role']}: {message['content']}")


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int, int], None] | None]:
    """A bar of rows generated on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("augment"), BarColumn(), MofNCompleteColumn(), TextColumn("rows")]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("augment", total=total)
        yield lambda done, all_: progress.update(task, completed=done, total=all_)
