"""Prepare a dataset: read, convert, validate, render, tokenize and write the HDF5 file.

``prepare_dataset(source, tokenizer, output)`` is the one entry point. It reuses ``output``
when its cache key matches (the same source bytes, tokenizer, template and options) and
rebuilds it otherwise. Rows that cannot be used are never dropped silently: each one is
counted in the report, with its file, row number and reason, and the report is stored in
the file's ``stats`` attribute.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ft_data.conversation import Conversation, check_conversation
from ft_data.errors import DataError, RowProblem
from ft_data.formats import Format, detect_format, get_format
from ft_data.hdf5 import PreparedWriter, read_attrs
from ft_data.readers import BadUtf8, local_files, read_file
from ft_data.templates import ChatTemplate, get_template
from ft_data.tokenize import TokenizedExample, TrainOn, tokenize_conversations, tokenize_texts
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

# Bump when a change here would tokenize the same input differently, so old caches rebuild.
PIPELINE_VERSION = 1
KEPT_ISSUES = 1000  # issues listed one by one in the report; all are counted


@dataclass(frozen=True)
class PrepareOptions:
    """How to turn rows into examples. Every field is part of the cache key."""

    format: str | None = None  # None: detect from the first detect_rows rows
    format_options: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"columns": {...}}
    template: str | None = None  # None: the tokenizer's chat_template; a name; a .jinja path
    max_length: int | None = 2048  # None: no limit (e.g. raw text to be chunked when batching)
    on_too_long: Literal["drop", "truncate", "error"] = "drop"
    on_invalid: Literal["skip", "error"] = "skip"  # rows with missing/empty fields
    train_on: TrainOn = "assistant"
    on_bad_utf8: BadUtf8 = "error"
    detect_rows: int = 1000


@dataclass(frozen=True)
class RowIssue:
    """Why one row was left out (or truncated): ``kind`` is one of ``invalid``,
    ``too_long``, ``truncated``, ``no_trained_tokens``, ``bad_utf8``."""

    kind: str
    file: str
    row: int
    reason: str


@dataclass
class PrepareReport:
    """What prepare did: counts, and the rows it left out or truncated and why."""

    format: str
    format_reason: str
    template: str | None
    rows_read: int = 0
    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    issues: list[RowIssue] = field(default_factory=list)

    def add_issue(self, kind: str, file: str | Path, row: int, reason: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.issues) < KEPT_ISSUES:
            self.issues.append(RowIssue(kind, str(file), row, reason))

    @property
    def left_out(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind != "truncated")

    def summary(self) -> str:
        """One paragraph for people: counts, then up to five issues."""
        text = (
            f"{self.format_reason}; {self.rows_read} rows -> {self.examples} examples, "
            f"{self.tokens} tokens ({self.trained_tokens} trained), longest {self.longest}"
        )
        if self.counts:
            text += "; " + ", ".join(f"{kind}: {n}" for kind, n in sorted(self.counts.items()))
            text += "".join(
                f"\n  {i.file}, row {i.row}: {i.kind}: {i.reason}" for i in self.issues[:5]
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrepareReport:
        values = dict(data)
        values["issues"] = [RowIssue(**issue) for issue in values.get("issues", [])]
        return cls(**values)


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    reused: bool  # True: an up-to-date file was already there
    report: PrepareReport


def prepare_dataset(
    source: str | Path,
    tokenizer: ModelTokenizer | str | Path,
    output: str | Path,
    options: PrepareOptions | None = None,
    *,
    rebuild: bool = False,
    batch_rows: int = 256,
    progress: Callable[[int], None] | None = None,
) -> PrepareResult:
    """Prepare ``source`` (file, folder, glob or URL) into the HDF5 file ``output``.

    Reuses ``output`` when its cache key matches, unless ``rebuild``. Raises
    :class:`DataError` for unreadable data, an undetectable format, and, as the options say,
    invalid rows or over-long examples; ``progress`` is called with the rows read so far.
    """
    options = options or PrepareOptions()
    tok = tokenizer if isinstance(tokenizer, ModelTokenizer) else load_tokenizer(tokenizer)
    output = Path(output)
    with local_files(source) as files:
        fmt, reason = _choose_format(source, files, options)
        template = (
            None
            if fmt.kind == "text"
            else get_template(options.template, tokenizer_template=tok.chat_template)
        )
        source_hash = hash_source(source, files, fmt.name, options)
        key = _cache_key(source_hash, tok, template, options)
        if not rebuild and (old := read_attrs(output)) is not None and old.get("cache_key") == key:
            return PrepareResult(output, True, PrepareReport.from_dict(old["stats"]))
        report = PrepareReport(fmt.name, reason, template.name if template else None)
        attrs = {
            "tokenizer_fingerprint": tok.fingerprint,
            "template_name": template.name if template else "",
            "template_sha256": template.sha256 if template else "",
            "max_length": options.max_length or 0,
            "source_hash": source_hash,
            "cache_key": key,
            "format": fmt.name,
            "train_on": options.train_on,
            "eos_token_id": _id(tok.eos_token_id),
            "pad_token_id": _id(tok.pad_token_id),
        }
        with PreparedWriter(output, attrs) as writer:
            for chunk in _chunks(_conversations(files, fmt, options, report), batch_rows):
                for (file, row), example in _tokenize(chunk, fmt, template, tok, options, report):
                    _write(writer, file, row, example, options, report)
                if progress:
                    progress(report.rows_read)
            writer.attrs["stats"] = report.to_dict()
    return PrepareResult(output, False, report)


def hash_source(
    source: str | Path, files: list[Path], format_name: str, options: PrepareOptions
) -> str:
    """sha256 over each file's name (relative to the source) and bytes, the format and the
    options that change how rows are read."""
    digest = hashlib.sha256()
    url = str(source).startswith(("http://", "https://"))
    root = Path(os.path.commonpath([file.parent for file in files])) if files else Path()
    for file in files:
        name = str(source) if url else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    read_options = {
        "format": format_name,
        "format_options": options.format_options,
        "on_bad_utf8": options.on_bad_utf8,
    }
    digest.update(json.dumps(read_options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cache_key(
    source_hash: str, tok: ModelTokenizer, template: ChatTemplate | None, options: PrepareOptions
) -> str:
    parts = {
        "pipeline": PIPELINE_VERSION,
        "source": source_hash,
        "tokenizer": tok.fingerprint,
        "special_tokens": tok.special_tokens,
        "template": [template.name, template.sha256] if template else None,
        "options": asdict(options),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _choose_format(
    source: str | Path, files: list[Path], options: PrepareOptions
) -> tuple[Format, str]:
    if options.format is not None:
        return get_format(
            options.format, **options.format_options
        ), f"format: {options.format} (as configured)"
    rows = (
        row
        for file in files
        for _, row in read_file(file, on_bad_utf8=options.on_bad_utf8, on_skip=_ignore)
    )
    detection = detect_format(
        itertools.islice(rows, options.detect_rows), sample=options.detect_rows, where=str(source)
    )
    return detection.format, detection.reason


Located = tuple[str, int]  # (file, row)


def _conversations(
    files: list[Path], fmt: Format, options: PrepareOptions, report: PrepareReport
) -> Iterator[tuple[Located, Conversation]]:
    def skipped(file: Path, line: int, reason: str) -> None:
        report.add_issue("bad_utf8", file, line, f"{reason} (line {line})")

    for file in files:
        for row_number, row in read_file(file, on_bad_utf8=options.on_bad_utf8, on_skip=skipped):
            report.rows_read += 1
            try:
                conversation = fmt.to_conversation(row)
                if fmt.kind == "chat":
                    check_conversation(conversation)
            except RowProblem as problem:
                if options.on_invalid == "error":
                    raise problem.at(
                        file=file,
                        row=row_number,
                        hint="fix the row, or prepare with on_invalid='skip'",
                    ) from None
                report.add_issue("invalid", file, row_number, str(problem))
                continue
            yield (str(file), row_number), conversation


def _tokenize(
    chunk: list[tuple[Located, Conversation]],
    fmt: Format,
    template: ChatTemplate | None,
    tok: ModelTokenizer,
    options: PrepareOptions,
    report: PrepareReport,
) -> list[tuple[Located, TokenizedExample]]:
    where = [located for located, _ in chunk]
    conversations = [conversation for _, conversation in chunk]
    if template is None:
        return list(zip(where, tokenize_texts([c.text for c in conversations], tok), strict=True))
    try:
        return list(
            zip(
                where,
                tokenize_conversations(conversations, template, tok, train_on=options.train_on),
                strict=True,
            )
        )
    except RowProblem:
        pass  # one of them failed: go one by one to find it (rare, so the batch path stays fast)
    done = []
    for (file, row), conversation in chunk:
        try:
            done.append(
                (
                    (file, row),
                    tokenize_conversations(
                        [conversation], template, tok, train_on=options.train_on
                    )[0],
                )
            )
        except RowProblem as problem:
            if options.on_invalid == "error":
                raise problem.at(file=file, row=row) from None
            report.add_issue("invalid", file, row, str(problem))
    return done


def _write(
    writer: PreparedWriter,
    file: str,
    row: int,
    example: TokenizedExample,
    options: PrepareOptions,
    report: PrepareReport,
) -> None:
    tokens, mask = example.tokens, example.loss_mask
    limit = options.max_length
    if limit and len(tokens) > limit:
        if options.on_too_long == "error":
            raise DataError(
                f"the example has {len(tokens)} tokens, more than max_length {limit}",
                file=file,
                row=row,
                hint="raise max_length, or set on_too_long to 'truncate' or 'drop'",
            )
        if options.on_too_long == "drop":
            report.add_issue("too_long", file, row, f"{len(tokens)} tokens > max_length {limit}")
            return
        report.add_issue("truncated", file, row, f"{len(tokens)} tokens cut to max_length {limit}")
        tokens, mask = tokens[:limit], mask[:limit]
    trained = int(mask.sum())
    if trained == 0:
        report.add_issue(
            "no_trained_tokens",
            file,
            row,
            "no tokens left to train on"
            + (" after truncation" if limit and len(example) > limit else ""),
        )
        return
    writer.add(tokens, mask)
    report.examples += 1
    report.tokens += len(tokens)
    report.trained_tokens += trained
    report.longest = max(report.longest, len(tokens))


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _id(token_id: int | None) -> int:
    return -1 if token_id is None else token_id


def _ignore(file: Path, line: int, reason: str) -> None:
    return None
