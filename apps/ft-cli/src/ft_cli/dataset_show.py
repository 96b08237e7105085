"""How `ft dataset` shows its reports in a terminal: the prepare and stats summaries, rows
with their trained tokens highlighted, the quality tables, and progress while it reads.

Each function prints the plain data the command got from ft-data (see ft_data.summary,
ft_data.explain, ft_data.report); none computes anything a `--json` reader would miss.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ft_data import ExplainedRow, QualityReport
    from ft_data.explain import TokenPiece


# prepare ----------------------------------------------------------------------------------------


def print_prepare(summary: dict[str, Any]) -> None:
    click.echo(summary["detected"])
    if summary["template"]:
        own = " (the model's own chat template)" if summary["template"] == "tokenizer" else ""
        click.echo(f"template:  {summary['template']}{own}")
    if summary.get("kind") == "text":  # raw text: rows -> blocks, every token kept
        split = summary["split_rows"]
        click.echo(
            f"rows:      {summary['rows_read']:,} read -> {summary['examples']:,} blocks"
            + (
                f" ({split:,} {'row' if split == 1 else 'rows'} longer than "
                f"{summary['max_seq_length']:,} tokens split into blocks)"
                if split
                else ""
            )
            + f", {summary['left_out']:,} left out"
        )
    elif summary.get("kind") == "preference":
        click.echo(
            f"rows:      {summary['rows_read']:,} read -> {summary['examples']:,} preference "
            f"pairs (chosen and rejected), {summary['left_out']:,} left out"
        )
    else:
        click.echo(
            f"rows:      {summary['rows_read']:,} read, {summary['examples']:,} kept, "
            f"{summary['left_out']:,} left out"
        )
    share = summary["trained_tokens"] / summary["tokens"] if summary["tokens"] else 0.0
    click.echo(
        f"tokens:    {summary['tokens']:,} ({summary['trained_tokens']:,} trained, {share:.1%}), "
        f"longest {summary['longest']:,} of max {summary['max_seq_length']:,}"
        + (
            f"; the rejected sides {summary['rejected_tokens']:,} more"
            if summary.get("kind") == "preference"
            else ""
        )
    )
    label = "left out:"
    for kind, group in summary["left_out_by_reason"].items():
        click.echo(f"{label:<10} {kind} {group['count']:,}: {_rows_text(group)}")
        label = ""
    if summary["truncated"]["count"]:
        group = summary["truncated"]
        click.echo(f"truncated: {group['count']:,}: {_rows_text(group)}")
    if (group := summary.get("reasoning_not_rendered")) and group["count"]:
        click.echo(f"reasoning: {group['count']:,} not in the template: {_rows_text(group)}")
    if summary.get("sources"):
        _print_sources(summary["sources"])
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


# inspect ----------------------------------------------------------------------------------------


def print_rows(detected: str, rows: list[ExplainedRow], max_seq_length: int, color: bool) -> None:
    """`ft dataset inspect`: the detection line, each row with its trained text highlighted,
    and the legend."""
    click.echo(detected)
    for number, row in enumerate(rows, 1):
        _print_row(number, row, max_seq_length, color)
    trained = click.style("trained", fg="green", bold=True) if color else "«trained»"
    context = click.style("context", dim=True) if color else "context"
    click.echo(
        f"\nlegend: {trained} = tokens the model learns to write (the loss is computed on "
        f"them); {context} = what it reads but is not trained on",
        color=color,
    )


def _print_row(number: int, row: ExplainedRow, max_seq_length: int, color: bool) -> None:
    where = f"{Path(row.file).name} row {row.row}"
    if row.status == "invalid":
        click.echo(f"\n── {number}. {where}: left out: {row.problem}")
        return
    counts = f"{row.tokens:,} tokens, {row.trained_tokens:,} trained"
    note = {
        "truncated": f"; cut to {max_seq_length:,}",
        "too_long": f"; left out: longer than {max_seq_length:,}",
        "no_trained_tokens": "; left out: nothing to train on",
        "split": f"; kept whole as {row.blocks:,} blocks of up to {max_seq_length:,} tokens",
    }.get(row.status, "")
    click.echo(f"\n── {number}. {where} · {counts}{note} ──")
    click.echo(_styled(row.pieces, color, max_seq_length), color=color)


def _styled(pieces: list[TokenPiece], color: bool, max_seq_length: int) -> str:
    """The text with trained runs green and bold (or «marked»), the rest dim; where the tokens
    past max_seq_length start, a marker, and the text after it struck through."""
    out = []
    cut = f"[cut here: max_seq_length {max_seq_length:,}]"
    for (trained, kept), group in itertools.groupby(pieces, key=lambda p: (p.trained, p.kept)):
        piece = "".join(p.text for p in group)
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


# stats ------------------------------------------------------------------------------------------


def print_stats(report: dict[str, Any], quality: QualityReport | None) -> None:
    """`ft dataset stats`: the summary of the prepared dataset (and of each source of a
    mixture), then the quality checks (a mixture's are printed source by source)."""
    _print_summary(report)
    if report.get("sources"):
        _print_sources(report["sources"])
    if quality is not None:
        print_quality(report["quality"], quality)


def _print_sources(sources: list[dict[str, Any]]) -> None:
    click.echo("sources:")
    for entry in sources:
        click.echo(
            f"  {entry['source']} ({entry['amount']}): {entry['taken']:,} of "
            f"{entry['available']:,} examples ({entry['distinct']:,} distinct), "
            f"{entry['share']:.1%} of the mix's examples, {entry['token_share']:.1%} of its "
            f"tokens; {entry['detected']}"
        )


def _print_summary(report: dict[str, Any]) -> None:
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


def print_quality(quality: dict[str, Any], found: QualityReport) -> None:
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


# progress ---------------------------------------------------------------------------------------


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
