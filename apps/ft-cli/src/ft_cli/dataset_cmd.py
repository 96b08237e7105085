"""`ft dataset`: prepare training data, look at it as the model will, and describe it.

`prepare` reads a file, folder, glob or URL, detects the format, renders it with the chat
template, tokenizes it with loss masks and writes the prepared HDF5 file (into the cache in
the app's datasets folder, or `--output`). `inspect` prints a few examples with the trained
tokens highlighted. `stats` counts rows and tokens. Settings come from `-c train.yml` (or
./train.yml), overridden by the options, so what `ft dataset` shows is what `ft train` trains
on (see ft_cli.dataset_setup); the work is ft-data's, the printing ft_cli.dataset_show's.

ft-data is imported inside the commands: `ft --help` loads this module.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ft_cli.dataset_setup import DataArgs, data_options
from ft_cli.dataset_show import (
    print_prepare,
    print_quality,
    print_rows,
    print_stats,
    row_progress,
)
from ft_cli.main import UserError
from ft_config import redact_url

if TYPE_CHECKING:
    from ft_data import DataError


class DatasetGroup(click.Group):
    """A click group whose data, config, model and file errors print as
    `error: <file>:<line>: ...`."""

    def invoke(self, ctx: click.Context) -> Any:
        from ft_config import ConfigError, SecretsError
        from ft_data import DataError
        from ft_models.hub import ModelError

        try:
            return super().invoke(ctx)
        except DataError as error:
            raise UserError(data_error_message(error)) from None
        except (ConfigError, SecretsError, ModelError) as error:
            raise UserError(str(error)) from None
        except OSError as error:
            if error.filename is None:  # not about a file the user named: a bug, show it
                raise
            raise UserError(f"{error.filename}: {error.strerror or error}") from None


def data_error_message(error: DataError) -> str:
    """`file:line: key 'x': what` and the hint on a line of its own."""
    where = []
    if error.file and error.line is not None:
        where.append(f"{error.file}:{error.line}")
    elif error.file or error.line is not None:
        where.append(error.file or f"line {error.line}")
    if error.row is not None:
        where.append(f"row {error.row}")
    if error.key is not None:
        where.append(f"key {error.key!r}")
    text = ": ".join([*where, error.what])
    return f"{text}\nhint: {error.hint}" if error.hint else text


@click.group(cls=DatasetGroup)
def dataset() -> None:
    """Prepare, inspect and describe training data.

    \b
    ft dataset prepare data/train.jsonl
    ft dataset inspect data/train.jsonl -n 3 -c train.yml
    ft dataset stats data/train.jsonl --model ./my-model --json
    """


def _echo_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


# prepare ----------------------------------------------------------------------------------------


@dataset.command()
@data_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write here (a .h5 file, or a folder) instead of into the cache.",
)
@click.option("--rebuild", is_flag=True, help="Prepare again even if an up-to-date file exists.")
@click.option(
    "--force", is_flag=True, help="Replace the file --output names when it exists already."
)
def prepare(data: DataArgs, output: Path | None, rebuild: bool, force: bool) -> None:
    """Prepare SRC (a file, folder, glob or URL) for training.

    Detects the format, renders every row with the chat template, tokenizes it with its loss
    mask (what the model learns) and writes the prepared dataset, then reports the rows kept,
    those left out and why, and the tokens. The result is cached: preparing the same data
    the same way again is instant.
    """
    from ft_data import DatasetCache, prepare_dataset, prepare_summary

    setup = data.setup()
    options = setup.settings.prepare
    started = time.perf_counter()
    evicted: tuple[Any, ...] = ()
    target = _output_file(output, str(setup.source), force) if output is not None else None
    with row_progress("prepare", redact_url(setup.source)) as progress:
        if target is not None:
            result = prepare_dataset(
                setup.source,
                setup.tokenizer,
                target,
                options,
                rebuild=rebuild,
                progress=progress,
                url_token=setup.url_token,
            )
        else:
            result = DatasetCache().prepare(
                setup.source,
                setup.tokenizer,
                options,
                rebuild=rebuild,
                progress=progress,
                url_token=setup.url_token,
            )
            evicted = result.evicted
    summary = prepare_summary(
        result,
        source=redact_url(setup.source),
        model=setup.model,
        max_seq_length=setup.settings.max_seq_length,
        seconds=time.perf_counter() - started,
    )
    summary["evicted"] = [str(entry.path) for entry in evicted]
    if data.as_json:
        _echo_json(summary)
    else:
        print_prepare(summary)


def _output_file(output: Path, source: str, force: bool) -> Path:
    """The file `-o OUTPUT` names: itself (a .h5 path), or a file in the folder OUTPUT named
    after the source. An existing file is replaced only with --force, never silently."""
    h5 = output.suffix.lower() in (".h5", ".hdf5")
    if output.exists() and not output.is_dir() and not h5 and not force:
        raise UserError(
            f"{output} exists and is a file, not a folder: -o takes a .h5 file or a folder. "
            "Choose another path, or add --force to replace the file with the prepared dataset"
        )
    if h5 or (output.exists() and not output.is_dir()):
        target = output
    else:
        name = Path(source.rstrip("/")).stem if "*" not in source and "?" not in source else ""
        target = output / f"{name or 'dataset'}.h5"
    if target.exists() and not force:
        raise UserError(
            f"{target} exists: ft dataset prepare does not overwrite it. Choose another "
            "-o path, or add --force to replace it"
        )
    if target.is_dir():
        raise UserError(f"{target} is a folder; give the path of a .h5 file to write")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


# inspect ----------------------------------------------------------------------------------------


@dataset.command()
@data_options
@click.option(
    "-n", "count", default=3, show_default=True, type=click.IntRange(min=1), help="Rows to show."
)
@click.option(
    "--color/--no-color",
    default=None,
    help="Highlight with colours (default: when printing to a terminal); "
    "without, trained text is marked «like this».",
)
def inspect(data: DataArgs, count: int, color: bool | None) -> None:
    """Show the first N rows of SRC as the model sees them: the template applied, and the
    tokens it learns (the loss mask) highlighted."""
    from ft_data import explain_rows
    from ft_data.mixture import Mixture, source_of

    setup = data.setup()
    # A mixture: the first rows of each of its sources.
    sources = setup.source.sources if isinstance(setup.source, Mixture) else None
    explained = [
        explain_rows(
            source_of(one) if sources else setup.source,
            setup.tokenizer,
            setup.settings.prepare,
            count,
        )
        for one in (sources or [None])
    ]
    if data.as_json:
        if sources:
            _echo_json({"sources": [one.to_dict() for one in explained]})
        else:
            _echo_json(explained[0].to_dict())
        return
    if color is None:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for index, one in enumerate(explained):
        if sources:
            click.echo(f"{'' if index == 0 else chr(10)}source {index + 1}: {sources[index].path}")
        print_rows(one.detected, one.rows, setup.settings.max_seq_length, color)


# stats ------------------------------------------------------------------------------------------


@dataset.command()
@data_options
@click.option(
    "--near-threshold",
    type=click.FloatRange(0.0, 1.0),
    help="Jaccard similarity from which rows count as near duplicates "
    "(default: train.yml's near_dup_threshold, 0.85).",
)
@click.option(
    "--label-column",
    metavar="COLUMN",
    help="The column holding a class label: its class balance is shown "
    "(default: train.yml's label_column).",
)
@click.option(
    "--eval",
    "eval_source",
    metavar="PATH",
    help="Evaluation or test data (file, folder, glob or URL): training rows that overlap "
    "its rows are listed (contamination).",
)
@click.option(
    "--shown", default=20, show_default=True, type=click.IntRange(min=0), help="Rows listed."
)
def stats(
    data: DataArgs,
    near_threshold: float | None,
    label_column: str | None,
    eval_source: str | None,
    shown: int,
) -> None:
    """Describe SRC: rows and tokens, lengths, duplicates, token complexity, class balance,
    and overlap with evaluation data (--eval).

    Prepares SRC (or reuses the cached result) with the same settings as `prepare`, then
    reads its rows again for the quality checks: exact duplicates (the rule `prepare` drops
    by), near duplicates (MinHash), lengths in characters and tokens with a histogram.
    """
    from ft_data import DatasetCache, quality_report, stats_summary

    setup = data.setup(near_dup_threshold=near_threshold, label_column=label_column)
    settings = setup.settings
    with row_progress("prepare", redact_url(setup.source)) as progress:
        result = DatasetCache().prepare(
            setup.source, setup.tokenizer, settings.prepare, progress=progress
        )
    from ft_data.mixture import Mixture, source_of

    report = stats_summary(
        result, source=redact_url(str(setup.source)), max_seq_length=settings.max_seq_length
    )
    # A mixture: the quality checks read each source's rows, source by source.
    sources = setup.source.sources if isinstance(setup.source, Mixture) else None
    qualities = [
        quality_report(
            source_of(one) if sources else setup.source,
            setup.tokenizer,
            settings.prepare,
            near_threshold=settings.near_dup_threshold,
            max_seq_length=settings.max_seq_length,
            eval_source=eval_source,
        )
        for one in (sources or [None])
    ]
    if sources:
        report["quality"] = {
            "per_source": [
                {"source": one.path, **quality.to_dict(shown=shown)}
                for one, quality in zip(sources, qualities, strict=True)
            ]
        }
    else:
        report["quality"] = qualities[0].to_dict(shown=shown)
    if data.as_json:
        _echo_json(report)
    elif sources:
        print_stats(report, None)
        for one, quality in zip(sources, qualities, strict=True):
            click.echo(f"\nquality of {one.path}:")
            print_quality(quality.to_dict(shown=shown), quality)
    else:
        print_stats(report, qualities[0])


# cache ------------------------------------------------------------------------------------------


@dataset.group()
def cache() -> None:
    """The prepared-dataset cache in the app's datasets folder (FT_DATASET_CACHE_GB caps it)."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cache_list(as_json: bool) -> None:
    """The prepared datasets in the cache, least recently used first."""
    from ft_data import DatasetCache

    store = DatasetCache()
    entries = store.entries()
    if as_json:
        _echo_json(
            {
                "folder": str(store.folder),
                "limit_bytes": store.limit_bytes,
                "entries": [
                    {
                        "path": str(entry.path),
                        "size": entry.size,
                        "last_used": entry.last_used,
                        "source": entry.source,
                    }
                    for entry in entries
                ],
            }
        )
        return
    total = sum(entry.size for entry in entries)
    click.echo(
        f"{store.folder}: {len(entries)} prepared datasets, {total / 1e9:.2f} of "
        f"{store.limit_bytes / 1e9:g} GB"
    )
    for entry in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        click.echo(
            f"  {entry.path.name}  {entry.size / 1e6:9.1f} MB  {used}  {entry.source or '?'}"
        )


@cache.command("clear")
@click.option("--yes", is_flag=True, help="Do not ask.")
def cache_clear(yes: bool) -> None:
    """Delete every prepared dataset in the cache (they are prepared again when needed)."""
    from ft_data import DatasetCache

    store = DatasetCache()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete the prepared datasets in {store.folder}?", abort=True)
    removed = store.clear()
    freed = sum(entry.size for entry in removed)
    click.echo(f"deleted {len(removed)} prepared datasets ({freed / 1e6:.1f} MB)")


# augment ----------------------------------------------------------------------------------------

from ft_cli.augment_cmd import augment  # noqa: E402  (its own module; registered here)

dataset.add_command(augment)
