"""`ft dataset`: prepare training data, look at it as the model will, and describe it.

`prepare` reads a file, folder, glob or URL, detects the format, renders it with the chat
template, tokenizes it with loss masks and writes the prepared HDF5 file (into the cache in
the app's datasets folder, or `--output`). `inspect` prints a few examples with the trained
tokens highlighted. `stats` counts rows and tokens. Settings come from `-c train.yml` (its
`data:` section), overridden by the options, or else from train.yml's defaults, so what
`ft dataset` shows is what `ft train` trains on.

ft-data and numpy are imported inside the commands: `ft --help` loads this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ft_cli.main import UserError

if TYPE_CHECKING:
    from ft_data import (
        ChatTemplate,
        Conversation,
        DataError,
        DataSettings,
        ModelTokenizer,
        PrepareOptions,
        PrepareResult,
    )

SHOWN_ROWS = 5  # row numbers listed per reason in the prepare report (all are counted)


class DatasetGroup(click.Group):
    """A click group whose data, config and file errors print as `error: <file>:<line>: ...`."""

    def invoke(self, ctx: click.Context) -> Any:
        from ft_config import ConfigError
        from ft_data import DataError

        try:
            return super().invoke(ctx)
        except DataError as error:
            raise UserError(data_error_message(error)) from None
        except ConfigError as error:
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
    ft dataset prepare data/train.jsonl --model ./my-model
    ft dataset inspect data/train.jsonl -n 3 -c train.yml
    ft dataset stats data/train.jsonl --model ./my-model --json
    """


# Options shared by the commands, and what they resolve to ------------------------------------


@dataclass(frozen=True)
class DataArgs:
    """The options every `ft dataset` command shares (see :func:`data_options`)."""

    src: str | None
    config_path: Path | None
    model: str | None
    tokenizer: Path | None
    fmt: str | None
    template: str | None
    max_seq_length: int | None
    as_json: bool

    def setup(self, **overrides: Any) -> Setup:
        """The source, settings and tokenizer these options (and ``overrides`` of train.yml's
        data section, e.g. ``label_column``) name."""
        return resolve_setup(
            self.src,
            self.config_path,
            self.model,
            self.tokenizer,
            self.fmt,
            self.template,
            self.max_seq_length,
            **overrides,
        )


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """SRC, `-c train.yml`, the tokenizer, the settings that override train.yml's, `--json`;
    the command receives them as one :class:`DataArgs` argument, ``data``."""
    options = [
        click.argument("src", required=False),
        click.option(
            "-c",
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="Take the data settings (and the model) from this train.yml.",
        ),
        click.option(
            "--model",
            metavar="NAME_OR_PATH",
            help="The model whose tokenizer and chat template to use (a model folder).",
        ),
        click.option(
            "--tokenizer",
            type=click.Path(exists=True, path_type=Path),
            help="A folder with tokenizer.json (or the file); wins over --model.",
        ),
        click.option("--format", "fmt", metavar="FORMAT", help="Data format (default: detected)."),
        click.option(
            "--template",
            metavar="NAME_OR_FILE",
            help="Chat template: alpaca, chatml, llama3, mistral or a .jinja file "
            "(default: the tokenizer's).",
        ),
        click.option(
            "--max-seq-length", type=click.IntRange(min=8), help="Longest sequence in tokens."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]
    names = [field.name for field in dataclasses.fields(DataArgs)]

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        data = DataArgs(**{name: kwargs.pop(name) for name in names})
        return func(data, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True)
class Setup:
    """What a command works on: the source, the settings, and the tokenizer."""

    source: str
    settings: DataSettings
    tokenizer: ModelTokenizer
    model: str


def resolve_setup(
    src: str | None,
    config_path: Path | None,
    model: str | None,
    tokenizer: Path | None,
    fmt: str | None,
    template: str | None,
    max_seq_length: int | None,
    **overrides: Any,
) -> Setup:
    """Settings precedence: options over train.yml over train.yml's defaults. ``overrides``
    are more data-section settings (None: not given)."""
    import attrs

    from ft_config import DataConfig, ModelConfig, load_config
    from ft_data import options_from_config

    if config_path is not None:
        config = load_config(config_path)
        data, model_config, base = config.data, config.model, config_path.parent
    else:
        data, model_config, base = DataConfig(), ModelConfig(), Path.cwd()
    changes: dict[str, Any] = {}
    if fmt is not None:
        changes["format"] = fmt
    if template is not None:  # a file named on the command line is relative to here
        changes["template"] = (
            str(Path(template).absolute()) if Path(template).is_file() else template
        )
    if max_seq_length is not None:
        changes["max_seq_length"] = max_seq_length
    changes.update({key: value for key, value in overrides.items() if value is not None})
    settings = options_from_config(attrs.evolve(data, **changes), config_dir=base)
    if src is None:
        if config_path is None:
            raise click.UsageError("give the data (SRC), or -c train.yml to use its data.train")
        src = settings.train
    if tokenizer is not None:
        name = str(tokenizer)
    elif model is not None:
        name = model
    else:  # train.yml's model; a relative folder there is relative to train.yml
        name = model_config.name
        if config_path is not None and (base / name).is_dir():
            name = str(base / name)
    return Setup(src, settings, _tokenizer_for(name), name)


def _tokenizer_for(name: str) -> ModelTokenizer:
    """The tokenizer of the model called ``name``.

    FT-MODELS INTEGRATION POINT: replace this body with ft-models' resolver (catalog aliases,
    Hugging Face repo ids, .gguf files, the embedded SmolLM2). Until then a model folder that
    holds tokenizer.json, or the tokenizer.json file itself, is accepted.
    """
    from ft_data import load_tokenizer

    path = Path(name).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".json"):
        return load_tokenizer(path)
    raise UserError(
        f"model {name!r} is not a model folder here. Resolving model names (catalog aliases "
        "such as smollm2-135m, Hugging Face repo ids, .gguf files) comes with ft-models and "
        "is not wired into `ft dataset` yet.\n"
        "hint: give a folder that holds tokenizer.json: --model PATH or --tokenizer PATH"
    )


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
def prepare(data: DataArgs, output: Path | None, rebuild: bool) -> None:
    """Prepare SRC (a file, folder, glob or URL) for training.

    Detects the format, renders every row with the chat template, tokenizes it with its loss
    mask (what the model learns) and writes the prepared dataset, then reports the rows kept,
    those left out and why, and the tokens. The result is cached: preparing the same data
    the same way again is instant.
    """
    from ft_data import DatasetCache, prepare_dataset

    setup = data.setup()
    options = setup.settings.prepare
    started = time.perf_counter()
    evicted: tuple[Any, ...] = ()
    with row_progress("prepare", setup.source) as progress:
        if output is not None:
            result = prepare_dataset(
                setup.source,
                setup.tokenizer,
                _output_file(output, setup.source),
                options,
                rebuild=rebuild,
                progress=progress,
            )
        else:
            result = DatasetCache().prepare(
                setup.source, setup.tokenizer, options, rebuild=rebuild, progress=progress
            )
            evicted = result.evicted
    summary = prepare_summary(setup, result, time.perf_counter() - started)
    summary["evicted"] = [str(entry.path) for entry in evicted]
    if data.as_json:
        _echo_json(summary)
    else:
        _print_prepare(summary)


def prepare_summary(setup: Setup, result: PrepareResult, seconds: float) -> dict[str, Any]:
    """The prepare report as plain data (what `--json` prints)."""
    report = result.report
    by_kind: dict[str, dict[str, Any]] = {}
    for kind, count in sorted(report.counts.items()):
        issues = [issue for issue in report.issues if issue.kind == kind][:SHOWN_ROWS]
        by_kind[kind] = {
            "count": count,
            "rows": [
                {"file": issue.file, "row": issue.row, "reason": issue.reason} for issue in issues
            ],
        }
    truncated = by_kind.pop("truncated", {"count": 0, "rows": []})
    return {
        "source": setup.source,
        "output": str(result.path),
        "reused": result.reused,
        "format": report.format,
        "detected": report.format_reason,
        "template": report.template,
        "model": setup.model,
        "max_seq_length": setup.settings.max_seq_length,
        "rows_read": report.rows_read,
        "examples": report.examples,
        "left_out": report.left_out,
        "left_out_by_reason": by_kind,
        "truncated": truncated,
        "tokens": report.tokens,
        "trained_tokens": report.trained_tokens,
        "longest": report.longest,
        "label_names": report.label_names,
        "seconds": round(seconds, 3),
    }


def _print_prepare(summary: dict[str, Any]) -> None:
    click.echo(summary["detected"])
    if summary["template"]:
        own = " (the model's own chat template)" if summary["template"] == "tokenizer" else ""
        click.echo(f"template:  {summary['template']}{own}")
    click.echo(
        f"rows:      {summary['rows_read']:,} read, {summary['examples']:,} kept, "
        f"{summary['left_out']:,} left out"
    )
    share = summary["trained_tokens"] / summary["tokens"] if summary["tokens"] else 0.0
    click.echo(
        f"tokens:    {summary['tokens']:,} ({summary['trained_tokens']:,} trained, {share:.1%}), "
        f"longest {summary['longest']:,} of max {summary['max_seq_length']:,}"
    )
    label = "left out:"
    for kind, group in summary["left_out_by_reason"].items():
        click.echo(f"{label:<10} {kind} {group['count']:,}: {_rows_text(group)}")
        label = ""
    if summary["truncated"]["count"]:
        group = summary["truncated"]
        click.echo(f"truncated: {group['count']:,}: {_rows_text(group)}")
    size = Path(summary["output"]).stat().st_size / 1e6
    verb = "reused" if summary["reused"] else "wrote"
    click.echo(
        f"{verb + ':':<10} {summary['output']} ({size:.1f} MB) in {summary['seconds']:.1f} s"
    )
    if summary["evicted"]:
        click.echo(f"evicted:   {len(summary['evicted'])} least recently used prepared datasets")


def _rows_text(group: dict[str, Any]) -> str:
    rows = group["rows"]
    if not rows:
        return "rows not listed"
    files = {row["file"] for row in rows}
    if len(files) == 1:
        where = "row" + ("s " if len(rows) > 1 else " ") + ", ".join(str(r["row"]) for r in rows)
        where += f" of {Path(next(iter(files))).name}"
    else:
        where = ", ".join(f"{Path(r['file']).name} row {r['row']}" for r in rows)
    more = group["count"] - len(rows)
    return where + (f" and {more:,} more" if more > 0 else "") + f" ({rows[0]['reason']})"


def _output_file(output: Path, source: str) -> Path:
    if output.suffix.lower() in (".h5", ".hdf5"):
        return output
    name = Path(source.rstrip("/")).stem if "*" not in source and "?" not in source else ""
    return output / f"{name or 'dataset'}.h5"


# Progress ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def row_progress(label: str, source: str) -> Iterator[Callable[[int], None] | None]:
    """A progress callback for `prepare_dataset` (rows read so far), drawn on stderr when it is
    a terminal: a bar when the rows can be counted cheaply (JSON Lines), else a running count."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    columns += [
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=_count_rows(source))
        yield lambda rows: progress.update(task, completed=rows)


def _count_rows(source: str) -> int | None:
    """The number of lines of a JSON Lines source (its rows, give or take blank lines)."""
    from ft_data import DataError, find_files

    if "://" in source:
        return None
    try:
        files = find_files(source)
    except DataError:
        return None
    if not all(file.suffix.lower() in (".jsonl", ".ndjson") for file in files):
        return None
    lines = 0
    for file in files:
        with open(file, "rb") as handle:
            while block := handle.read(1 << 24):
                lines += block.count(b"\n")
    return lines


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
    setup = data.setup()
    reason, examples = inspect_examples(setup, count)
    if data.as_json:
        public = [
            {k: v for k, v in example.items() if not k.startswith("_")} for example in examples
        ]
        _echo_json({"source": setup.source, "detected": reason, "examples": public})
        return
    if color is None:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    click.echo(reason)
    for number, example in enumerate(examples, 1):
        _print_example(number, example, setup.settings.max_seq_length, color)
    trained = click.style("trained", fg="green", bold=True) if color else "«trained»"
    context = click.style("context", dim=True) if color else "context"
    click.echo(
        f"\nlegend: {trained} = tokens the model learns to write (the loss is computed on "
        f"them); {context} = what it reads but is not trained on",
        color=color,
    )


def inspect_examples(setup: Setup, count: int) -> tuple[str, list[dict[str, Any]]]:
    """The detection line and the first ``count`` rows, each as a dict: file, row, status
    (kept, truncated, too_long, no_trained_tokens or invalid), text, tokens, trained_tokens,
    trained_spans ([start, end) character spans of the trained tokens in text)."""
    from ft_data import (
        RowProblem,
        check_conversation,
        detect_format,
        get_format,
        get_template,
        local_files,
        read_file,
    )
    from ft_data.prepare import add_system_prompt

    options = setup.settings.prepare
    with local_files(setup.source) as files:
        rows = (
            (file, number, row)
            for file in files
            for number, row in read_file(file, on_bad_utf8=options.on_bad_utf8, on_skip=_ignore)
        )
        if options.format is not None:
            fmt = get_format(options.format, **options.format_options)
            reason = f"format: {options.format} (as configured)"
        else:
            sample = (row for _, _, row in itertools.islice(rows, options.detect_rows))
            detection = detect_format(sample, sample=options.detect_rows, where=setup.source)
            fmt, reason = detection.format, detection.reason
            rows = (
                (file, number, row)
                for file in files
                for number, row in read_file(file, on_bad_utf8=options.on_bad_utf8, on_skip=_ignore)
            )
        chat = None
        if fmt.kind != "text":
            chat = get_template(options.template, tokenizer_template=setup.tokenizer.chat_template)
        examples = []
        for file, number, row in itertools.islice(rows, count):
            where = {"file": str(file), "row": number}
            try:
                conversation = fmt.to_conversation(row)
                if fmt.kind != "text":
                    check_conversation(conversation)
                    conversation = add_system_prompt(conversation, options.system_prompt)
                examples.append(where | _explain(conversation, chat, setup.tokenizer, options))
            except RowProblem as problem:
                examples.append(where | {"status": "invalid", "problem": str(problem)})
    return reason, examples


def _explain(
    conversation: Conversation,
    template: ChatTemplate | None,
    tok: ModelTokenizer,
    options: PrepareOptions,
) -> dict[str, Any]:
    """One row as prepare tokenizes it, with the character offsets of each token."""
    from ft_data import tokenize_conversations, tokenize_texts
    from ft_data.tokenize import char_limit

    limit = options.max_length
    max_chars = char_limit(tok, limit) if limit else None
    if template is None:
        text = conversation.text
        [example] = tokenize_texts([text], tok, max_chars=max_chars)
        add_special = True
    else:
        text, _ = template.render_with_spans(conversation, tok.special_tokens)
        [example] = tokenize_conversations(
            [conversation], template, tok, train_on=options.train_on, max_chars=max_chars
        )
        add_special = False
    text = text[:max_chars] if max_chars else text
    encoding = tok.tokenizer.encode(text, add_special_tokens=add_special)
    mask = example.loss_mask.tolist()
    status = "kept"
    if limit and len(example) > limit:
        status = "truncated" if options.on_too_long == "truncate" else "too_long"
    kept = limit if status == "truncated" and limit else len(example)
    if status != "too_long" and not any(mask[:kept]):
        status = "no_trained_tokens"
    # Runs of (text, trained, kept): each token's text, from the end of the one before it (so
    # nothing is lost between tokens); a token without text of its own (a special token the
    # tokenizer added, the eos appended to raw text) shows as itself.
    runs: list[tuple[str, bool, bool]] = []
    spans: list[list[int]] = []
    position, in_span = 0, False
    for index, token in enumerate(example.tokens.tolist()):
        trained = bool(mask[index])
        start, end = encoding.offsets[index] if index < len(encoding.offsets) else (0, 0)
        if start == end:
            piece = tok.tokenizer.id_to_token(token) or ""
        elif end <= position:
            continue  # a second token inside one character (byte-level BPE)
        else:
            piece, position = text[position:end], end
            if trained and in_span:
                spans[-1][1] = end
            elif trained:
                spans.append([start, end])
        in_span = trained and (in_span or start != end)
        runs.append((piece, trained, index < kept))
    runs.append((text[position:], False, True))
    return {
        "status": status,
        "text": text,
        "tokens": len(example),
        "trained_tokens": int(sum(mask)),
        "kept_tokens": kept if status in ("kept", "truncated") else 0,
        "trained_spans": spans,
        "_runs": runs,
    }


def _print_example(number: int, example: dict[str, Any], max_seq_length: int, color: bool) -> None:
    where = f"{Path(example['file']).name} row {example['row']}"
    if example["status"] == "invalid":
        click.echo(f"\n── {number}. {where}: left out: {example['problem']}")
        return
    counts = f"{example['tokens']:,} tokens, {example['trained_tokens']:,} trained"
    note = {
        "truncated": f"; cut to {max_seq_length:,}",
        "too_long": f"; left out: longer than {max_seq_length:,}",
        "no_trained_tokens": "; left out: nothing to train on",
    }.get(example["status"], "")
    click.echo(f"\n── {number}. {where} · {counts}{note} ──")
    click.echo(_styled(example["_runs"], color, max_seq_length), color=color)


def _styled(runs: list[tuple[str, bool, bool]], color: bool, max_seq_length: int) -> str:
    """The text with trained runs green and bold (or «marked»), the rest dim; where the tokens
    past max_seq_length start, a marker, and the text after it struck through."""
    out = []
    cut = f"[cut here: max_seq_length {max_seq_length:,}]"
    for (trained, kept), group in itertools.groupby(runs, key=lambda run: run[1:]):
        piece = "".join(run[0] for run in group)
        if not piece:
            continue
        if not kept and cut:
            out.append(click.style(cut, fg="red", bold=True) if color else cut)
            cut = ""
        if color:
            style: dict[str, Any] = {"fg": "green", "bold": True} if trained else {"dim": True}
            out.append(click.style(piece, strikethrough=True if not kept else None, **style))
        else:
            out.append(f"«{piece}»" if trained else piece)
    return "".join(out)


def _ignore(file: Path, line: int, reason: str) -> None:
    return None


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
    from ft_data import DatasetCache
    from ft_data.report import quality_report

    setup = data.setup(near_dup_threshold=near_threshold, label_column=label_column)
    settings = setup.settings
    with row_progress("prepare", setup.source) as progress:
        result = DatasetCache().prepare(
            setup.source, setup.tokenizer, settings.prepare, progress=progress
        )
    report = stats_report(setup, result)
    quality = quality_report(
        setup.source,
        setup.tokenizer,
        settings.prepare,
        near_threshold=settings.near_dup_threshold,
        max_seq_length=settings.max_seq_length,
        eval_source=eval_source,
    )
    report["quality"] = quality.to_dict(shown=shown)
    if data.as_json:
        _echo_json(report)
    else:
        _print_stats(report)
        _print_quality(report["quality"], quality)


def stats_report(setup: Setup, result: PrepareResult) -> dict[str, Any]:
    """What `ft dataset stats` reports of the prepared dataset, as plain data (the quality
    checks of the source rows are added as ``report["quality"]``)."""
    import numpy as np

    from ft_data import Batches, PreparedDataset

    prepared = result.report
    with PreparedDataset(result.path) as data:
        lengths = data.lengths
        trained = _trained_per_example(data)
        sequences = 0
        if len(data) and data.labels() is None:  # classification data is never packed
            packer = Batches(
                data,
                batch_size=1,
                max_seq_length=setup.settings.max_seq_length,
                mode="pack",
                shuffle=False,
            )
            sequences = len(packer.rows(0))
    return {
        "source": setup.source,
        "prepared": str(result.path),
        "format": prepared.format,
        "detected": prepared.format_reason,
        "template": prepared.template,
        "label_names": prepared.label_names,
        "rows": {
            "read": prepared.rows_read,
            "examples": prepared.examples,
            "left_out": prepared.left_out,
            "by_reason": dict(sorted(prepared.counts.items())),
        },
        "tokens": {
            "total": prepared.tokens,
            "trained": prepared.trained_tokens,
            "trained_share": round(prepared.trained_tokens / prepared.tokens, 4)
            if prepared.tokens
            else 0.0,
        },
        "example_tokens": _distribution(np, lengths),
        "trained_tokens_per_example": _distribution(np, trained),
        "packing": {
            "max_seq_length": setup.settings.max_seq_length,
            "sequences": sequences,
            "fill": round(prepared.tokens / (sequences * setup.settings.max_seq_length), 4)
            if sequences
            else 0.0,
        },
    }


def _distribution(np: Any, values: Any) -> dict[str, float | int]:
    if len(values) == 0:
        return {}
    quantiles = {f"p{q}": int(np.percentile(values, q, method="nearest")) for q in (50, 90, 95, 99)}
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 1),
        **quantiles,
        "max": int(values.max()),
    }


def _trained_per_example(data: Any, block_tokens: int = 1 << 22) -> Any:
    """The number of trained tokens of each example, reading the mask a block at a time."""
    import numpy as np

    offsets = data.offsets
    trained = np.zeros(len(data), dtype=np.int64)
    start = 0
    while start < len(data):
        stop = int(np.searchsorted(offsets, offsets[start] + block_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), len(data))
        _, mask = data.read_tokens(int(offsets[start]), int(offsets[stop]))
        sums = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        local = offsets[start : stop + 1] - offsets[start]
        trained[start:stop] = sums[local[1:]] - sums[local[:-1]]
        start = stop
    return trained


def _print_stats(report: dict[str, Any]) -> None:
    rows, tokens, packing = report["rows"], report["tokens"], report["packing"]
    click.echo(report["detected"])
    reasons = ", ".join(f"{kind} {n:,}" for kind, n in rows["by_reason"].items())
    click.echo(
        f"rows:      {rows['read']:,} read -> {rows['examples']:,} examples"
        + (f" ({reasons})" if reasons else "")
    )
    click.echo(
        f"tokens:    {tokens['total']:,} ({tokens['trained']:,} trained, "
        f"{tokens['trained_share']:.1%})"
    )
    for label, key in (("length:", "example_tokens"), ("trained:", "trained_tokens_per_example")):
        values = report[key]
        if values:
            click.echo(f"{label:<10} " + " · ".join(f"{name} {v:,}" for name, v in values.items()))
    if packing["sequences"]:
        click.echo(
            f"packing:   {rows['examples']:,} examples -> {packing['sequences']:,} sequences of "
            f"{packing['max_seq_length']:,} tokens ({packing['fill']:.1%} full)"
        )


def _print_quality(quality: dict[str, Any], found: Any) -> None:
    """The quality checks as rich tables, and the length histograms drawn in the terminal."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ft_data.stats import render_lengths

    console = Console(highlight=False, soft_wrap=True)

    def table(title: str, *columns: str) -> Table:
        grid = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
        for index, column in enumerate(columns):
            grid.add_column(column, justify="left" if index == 0 else "right")
        return grid

    duplicates = quality["duplicates"]
    dups = table("duplicates", "kind", "rows", "examples (row: duplicate of)")
    for kind, label in (("exact", "exact"), ("near", f"near (>= {duplicates['near_threshold']})")):
        rows = duplicates[f"{kind}_rows"]
        listed = ", ".join(f"{row['row']}: {row['duplicate_of']}" for row in rows[:5])
        more = duplicates[kind] - min(len(rows), 5)
        dups.add_row(
            label, f"{duplicates[kind]:,}", listed + (f" and {more:,} more" if more > 0 else "")
        )
    console.print(dups)

    lengths = table("lengths", "in", "mean", "p50", "p90", "p95", "p99", "max", "over max")
    for unit, values in quality["lengths"].items():
        if values:
            over = (
                ""
                if values["above_max"] is None
                else f"{values['above_max']:,} > {values['max_length']:,}"
            )
            lengths.add_row(
                unit,
                f"{values['mean']:,.1f}",
                *(f"{values[key]:,}" for key in ("p50", "p90", "p95", "p99", "max")),
                over,
            )
    console.print(lengths)
    if found.stats.chars is not None:
        click.echo("\n".join(render_lengths("characters per row", found.stats.chars)))
    if found.stats.tokens is not None:
        click.echo(
            "\n".join(render_lengths("tokens per row (without the template)", found.stats.tokens))
        )

    if (c := quality["complexity"]) is not None:
        complexity = table("\ntoken complexity", "measure", "value")
        complexity.add_row("tokens", f"{c['tokens']:,}")
        complexity.add_row("distinct tokens", f"{c['distinct_tokens']:,}")
        complexity.add_row("type/token ratio", f"{c['type_token_ratio']:.4f}")
        complexity.add_row("characters per token", f"{c['chars_per_token']:.2f}")
        complexity.add_row("unknown tokens", f"{c['unknown_tokens']:,} ({c['unknown_share']:.2%})")
        complexity.add_row(
            "byte-fallback tokens",
            f"{c['byte_fallback_tokens']:,} ({c['byte_fallback_share']:.2%})",
        )
        console.print(complexity)

    if (labels := quality["labels"]) is not None:
        balance = table(
            f"class balance (imbalance ratio {labels['imbalance_ratio']:.2f})",
            "label",
            "rows",
            "share",
        )
        for label, count in labels["counts"].items():
            balance.add_row(label, f"{count:,}", f"{labels['shares'][label]:.1%}")
        if labels["unlabelled"]:
            balance.add_row("(no label)", f"{labels['unlabelled']:,}", "")
        console.print(balance)

    if (overlap := quality["contamination"]) is not None:
        click.echo(
            f"contamination: {overlap['contaminated_eval_rows']:,} of {overlap['eval_rows']:,} "
            f"rows of {overlap['eval']} overlap {overlap['contaminated_train_rows']:,} of "
            f"{overlap['train_rows']:,} training rows (rule: {overlap['rule']})"
        )
        if overlap["overlaps"]:
            pairs = table("overlapping rows", "train row", "eval row", "share", "shared text")
            pairs.columns[-1].justify = "left"
            for pair in overlap["overlaps"]:
                pairs.add_row(
                    str(pair["train_row"]),
                    str(pair["eval_row"]),
                    f"{pair['share']:.0%}",
                    pair["snippet"],
                )
            console.print(pairs)
            if overlap["pairs"] > len(overlap["overlaps"]):
                click.echo(
                    f"{len(overlap['overlaps']):,} of {overlap['pairs']:,} pairs listed "
                    "(--shown N lists more)"
                )


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
