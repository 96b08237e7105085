"""Prepare a dataset: read, convert, validate, render, tokenize and write the HDF5 file.

``prepare_dataset(source, tokenizer, output)`` is the one entry point. It reuses ``output``
when its cache key matches (the same source bytes, tokenizer, template and options) and
rebuilds it otherwise; ``output`` may also be a function of the cache key, which is how the
content-addressed cache (``ft_data.cache``) names its files. Rows that cannot be used are
never dropped silently: each one is counted in the report, with its file, row number and
reason, and the report is stored in the file's ``stats`` attribute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ft_config.secrets import redact_url
from ft_data.conversation import Conversation, Message, check_conversation
from ft_data.errors import DataError, RowProblem
from ft_data.formats import Format, detect_format, get_format
from ft_data.hdf5 import PreparedWriter, read_attrs
from ft_data.minhash import MinHasher, NearDuplicateIndex
from ft_data.ngrams import word_ngrams
from ft_data.quality import conversation_text, normalized_digest
from ft_data.readers import BadUtf8, Documents, Row, local_files, read_file
from ft_data.templates import ChatTemplate, get_template
from ft_data.tokenize import (
    TokenizedExample,
    TrainOn,
    char_limit,
    tokenize_conversations,
    tokenize_texts,
)
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

# Bump when a change here would tokenize the same input differently, so old caches rebuild.
PIPELINE_VERSION = 3  # 2: exact dedup by normalized text; 3: raw text split into blocks
NEAR_NUM_PERM, NEAR_NGRAM = 64, 5  # find_duplicates' defaults, so stats and prepare agree
KEPT_ISSUES = 1000  # issues of each kind listed one by one in the report; all are counted
# Issues of rows that are kept all the same: cut to max_length, or their reasoning left out
# because the chat template does not write it.
KEPT_ROW_ISSUES = ("truncated", "reasoning_not_rendered")


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
    system_prompt: str | None = None  # added first to every chat conversation that has none
    # "exact": leave out repeats of a conversation (compared as quality.normalize_text of
    # quality.conversation_text, as `ft dataset stats` compares them); "near": also rows whose
    # word 5-grams have a Jaccard similarity >= near_dup_threshold with a kept row (MinHash).
    dedup: Literal["none", "exact", "near"] = "none"
    near_dup_threshold: float = 0.85
    # The column holding a class label (sequence classification): written as `labels`.
    label_column: str | None = None
    # Raw text: how .txt/.md/.html files are cut into documents (each ends with eos), and how
    # many tokens each block of a document longer than max_length repeats from the block
    # before it, as context that is not trained again.
    text_documents: Documents = "file"
    text_overlap: int = 0


@dataclass(frozen=True)
class RowIssue:
    """Why one row was left out (or kept changed): ``kind`` is one of ``invalid``, ``media``,
    ``too_long``, ``truncated``, ``no_trained_tokens``, ``bad_utf8``, ``duplicate``,
    ``near_duplicate``, ``reasoning_not_rendered`` (see :data:`KEPT_ROW_ISSUES`)."""

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
    label_names: list[str] | None = None  # with a label column: the classes, sorted
    kind: str = "chat"  # the format's kind: "chat", "text" (examples are blocks), "preference"
    split_rows: int = 0  # raw text: rows longer than max_length, split into several blocks
    rejected_tokens: int = 0  # preference pairs: the tokens of the rejected sides (not in tokens)
    # A mixture: per source, what it had and what the mix took (see ft_data.mixture).
    sources: list[dict[str, Any]] = field(default_factory=list)

    def add_issue(self, kind: str, file: str | Path, row: int, reason: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= KEPT_ISSUES:  # per kind, so a flood of one hides no other
            self.issues.append(RowIssue(kind, str(file), row, reason))

    @property
    def left_out(self) -> int:
        return sum(n for kind, n in self.counts.items() if kind not in KEPT_ROW_ISSUES)

    def summary(self) -> str:
        """One paragraph for people: counts, then up to five issues."""
        made = f"{self.examples} examples"
        if self.kind == "text":
            made = f"{self.examples} blocks"
            if self.split_rows:
                made += f" ({self.split_rows} long rows split into blocks)"
        text = (
            f"{self.format_reason}; {self.rows_read} rows -> {made}, "
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
    source: str | Path | Any,
    tokenizer: ModelTokenizer | str | Path,
    output: str | Path | Callable[[str], Path],
    options: PrepareOptions | None = None,
    *,
    rebuild: bool = False,
    batch_rows: int = 1024,
    progress: Callable[[int], None] | None = None,
    url_token: str | None = None,
) -> PrepareResult:
    """Prepare ``source`` (file, folder, glob, URL, Hub dataset, or a
    :class:`~ft_data.mixture.Mixture` of them) into the HDF5 file ``output``.

    ``output`` is a path, or a function from the cache key (64 hex digits) to a path. Reuses
    the file when its cache key matches, unless ``rebuild``. Raises
    :class:`DataError` for unreadable data, an undetectable format, and, as the options say,
    invalid rows or over-long examples; ``progress`` is called with the rows read so far.
    ``url_token`` (passwords.yml's ``data_token``) authenticates an http(s) ``source``; see
    :func:`ft_data.readers.download`. A URL's credentials are masked in everything recorded.
    """
    options = options or PrepareOptions()
    check_options(options)
    tok = tokenizer if isinstance(tokenizer, ModelTokenizer) else load_tokenizer(tokenizer)
    from ft_data.mixture import Mixture, prepare_mixture  # it prepares each source here

    if isinstance(source, Mixture):
        return prepare_mixture(
            source, tok, output, options, rebuild=rebuild, progress=progress, url_token=url_token
        )
    with local_files(source, token=url_token) as files:
        fmt, reason = choose_format(source, files, options)
        template = choose_template(fmt, tok, options)
        source_hash = hash_source(source, files, fmt.name, options)
        key = _cache_key(source_hash, tok, template, options)
        output = Path(output(key) if callable(output) else output)
        if not rebuild and (old := read_attrs(output)) is not None and old.get("cache_key") == key:
            reused = PrepareReport.from_dict(old["stats"])
            _check_usable(source, reused)  # a file an earlier version wrote without examples
            return PrepareResult(output, True, reused)
        report = PrepareReport(fmt.name, reason, template.name if template else None, kind=fmt.kind)
        attrs = {
            "tokenizer_fingerprint": tok.fingerprint,
            "template_name": template.name if template else "",
            "template_sha256": template.sha256 if template else "",
            "max_length": options.max_length or 0,
            "source_hash": source_hash,
            "cache_key": key,
            "format": fmt.name,
            "kind": fmt.kind,
            "train_on": options.train_on,
            "eos_token_id": _id(tok.eos_token_id),
            "pad_token_id": _id(tok.pad_token_id),
        }
        # One worker thread renders and tokenizes a chunk while this thread writes the chunk
        # before it and reads the one after: the tokenizer (Rust, its own threads) runs without
        # the GIL, so reading and tokenizing overlap. Issues are recorded by this thread only,
        # so the report comes out the same in every run.
        with (
            PreparedWriter(output, attrs) as writer,
            ThreadPoolExecutor(1, thread_name_prefix="ft-tokenize") as worker,
        ):
            pending: tuple[list[tuple[Located, Conversation]], Future[Any]] | None = None
            rows = _conversations(files, fmt, options, report)
            for chunk in _chunks(rows, batch_rows, options, report):
                encoding = worker.submit(_encode_chunk, chunk, template, tok, options)
                if pending is not None:
                    _write_chunk(writer, *pending, template, tok, options, report)
                pending = chunk, encoding
                if progress:
                    progress(report.rows_read)
            if pending is not None:
                _write_chunk(writer, *pending, template, tok, options, report)
            if options.label_column is not None:
                report.label_names = writer.finish_labels()
            writer.attrs["stats"] = report.to_dict()
            _check_usable(source, report)  # raised inside: the file is not written
    return PrepareResult(output, False, report)


def display_source(source: str | Path) -> str:
    """``source`` as ft shows and records it: a URL with its credentials masked."""
    return redact_url(str(source))


def _check_usable(source: str | Path, report: PrepareReport) -> None:
    """A DataError naming the source when no row made an example: nothing to train on."""
    if report.examples:
        return
    if not report.rows_read:
        what = "no usable rows: the data holds no rows"
    else:
        counts = ", ".join(f"{kind} {n}" for kind, n in sorted(report.counts.items()))
        rows = f"all {report.rows_read} rows were" if report.rows_read > 1 else "its one row was"
        what = f"no usable rows: {rows} left out ({counts or 'empty'})"
        shown = report.issues[:3]
        if shown:
            what += "; " + "; ".join(
                f"row {issue.row} of {Path(issue.file).name}: {issue.reason}" for issue in shown
            )
    raise DataError(
        what,
        file=display_source(source),
        hint="fix the rows, or give other data; `ft dataset stats` shows every row left out",
    )


def check_options(options: PrepareOptions) -> None:
    """:class:`DataError` for options that contradict each other."""
    overlap = options.text_overlap
    if overlap < 0 or (options.max_length and overlap >= options.max_length):
        raise DataError(
            f"text_overlap is {overlap}, it must be at least 0 and below max_seq_length "
            f"({options.max_length})",
            key="text_overlap",
            hint="a block repeats that many tokens of the one before it; 0 repeats none",
        )


def read_rows_of(file: Path, options: PrepareOptions, on_skip: Any = None) -> Iterator[Row]:
    """The rows of one file of the source, read as ``options`` say (UTF-8, text documents)."""
    return read_file(
        file,
        on_bad_utf8=options.on_bad_utf8,
        on_skip=on_skip or _ignore,
        documents=options.text_documents,
    )


def hash_source(
    source: str | Path, files: list[Path], format_name: str, options: PrepareOptions
) -> str:
    """sha256 over each file's name (relative to the source) and bytes, the format and the
    options that change how rows are read."""
    digest = hashlib.sha256()
    url = str(source).startswith(("http://", "https://"))
    root = Path(os.path.commonpath([file.parent for file in files])) if files else Path()
    for file in files:
        name = display_source(source) if url else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    read_options = {
        "format": format_name,
        "format_options": options.format_options,
        "on_bad_utf8": options.on_bad_utf8,
        "text_documents": options.text_documents,
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


def choose_format(
    source: str | Path, files: list[Path], options: PrepareOptions
) -> tuple[Format, str]:
    """The configured format, or the one detected from the first ``detect_rows`` rows; and
    the line saying which and why."""
    if options.format is not None:
        return get_format(
            options.format, **options.format_options
        ), f"format: {options.format} (as configured)"
    rows = (row for file in files for _, row in read_rows_of(file, options))
    detection = detect_format(
        itertools.islice(rows, options.detect_rows),
        sample=options.detect_rows,
        where=display_source(source),
    )
    return detection.format, detection.reason


def choose_template(
    fmt: Format, tok: ModelTokenizer, options: PrepareOptions
) -> ChatTemplate | None:
    """The chat template rows of ``fmt`` are rendered with (the configured one, else the
    tokenizer's); None for raw text, which is tokenized as it is."""
    if fmt.kind == "text":
        return None
    return get_template(options.template, tokenizer_template=tok.chat_template)


Located = tuple[str, int]  # (file, row)


def add_system_prompt(conversation: Conversation, prompt: str | None) -> Conversation:
    """``conversation`` with ``prompt`` as its first message when it has no system message."""
    messages = conversation.messages
    if not prompt or (messages and messages[0].role == "system"):
        return conversation
    system = Message("system", prompt)
    rejected = [system, *conversation.rejected] if conversation.rejected is not None else None
    return dataclasses.replace(conversation, messages=[system, *messages], rejected=rejected)


def row_conversation(fmt: Format, row: Any, options: PrepareOptions) -> Conversation:
    """A row as the conversation prepare trains on: through its format, checked (chat), with the
    configured system prompt and label. Raises `RowProblem` for a row that cannot be used."""
    conversation = fmt.to_conversation(row)
    if fmt.kind != "text":  # chat, and both sides of a preference pair
        check_conversation(conversation)
        conversation = add_system_prompt(conversation, options.system_prompt)
    if options.label_column is not None:
        conversation = with_label(conversation, row, options.label_column)
    return conversation


def _conversations(
    files: list[Path], fmt: Format, options: PrepareOptions, report: PrepareReport
) -> Iterator[tuple[Located, Conversation]]:
    def skipped(file: Path, line: int, reason: str) -> None:
        report.add_issue("bad_utf8", file, line, f"{reason} (line {line})")

    # 8-byte digests of the conversations seen: about 60 bytes a row, enough for many millions.
    seen: set[int] | None = set() if options.dedup != "none" else None
    for file in files:
        for row_number, row in read_rows_of(file, options, skipped):
            report.rows_read += 1
            try:
                conversation = row_conversation(fmt, row, options)
            except RowProblem as problem:
                if options.on_invalid == "error":
                    raise problem.at(
                        file=file,
                        row=row_number,
                        hint="fix the row, or prepare with on_invalid='skip'",
                    ) from None
                report.add_issue(problem.kind, file, row_number, str(problem))
                continue
            if seen is not None:
                digest = _digest(conversation)
                if digest in seen:
                    report.add_issue(
                        "duplicate", file, row_number, "the same conversation as an earlier row"
                    )
                    continue
                seen.add(digest)
            yield (str(file), row_number), conversation


def with_label(conversation: Conversation, row: Mapping[str, Any], column: str) -> Conversation:
    """``conversation`` with the row's ``column`` as its label (text); :class:`RowProblem`
    when the row has none or it is not text or a whole number."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem(f"no label in column {column!r}", key=column)
    if not isinstance(value, str | int | bool):
        raise RowProblem(
            f"the label must be text or a whole number, not {type(value).__name__}", key=column
        )
    return dataclasses.replace(conversation, label=str(value).strip())


def _digest(conversation: Conversation) -> int:
    """A 64-bit hash of the conversation as exact deduplication compares it: the text of
    :func:`~ft_data.quality.conversation_text`, normalized by
    :func:`~ft_data.quality.normalize_text` (the rule `ft dataset stats` counts by)."""
    return int.from_bytes(normalized_digest(conversation_text(conversation), 8), "little")


class _NearDuplicates:
    """Streaming near-duplicate removal: MinHash signatures of each chunk's conversation texts
    against the LSH index of the rows kept so far (what ``find_duplicates(mode="near")``
    does in one pass over texts)."""

    def __init__(self, threshold: float) -> None:
        self.hasher = MinHasher(NEAR_NUM_PERM, 0)
        self.index = NearDuplicateIndex(threshold=threshold, num_perm=NEAR_NUM_PERM)
        self.where: list[Located] = []  # index row -> (file, row), to name the kept row

    def filter(
        self, chunk: list[tuple[Located, Conversation]], report: PrepareReport
    ) -> list[tuple[Located, Conversation]]:
        texts = [conversation_text(conversation) for _, conversation in chunk]
        signatures = self.hasher.signatures(word_ngrams(texts, NEAR_NGRAM), len(texts))
        duplicate_of, similarity = self.index.add(signatures)
        self.where += [located for located, _ in chunk]
        kept = []
        for item, of, share in zip(chunk, duplicate_of.tolist(), similarity.tolist(), strict=True):
            if of < 0:
                kept.append(item)
                continue
            (file, row), (kept_file, kept_row) = item[0], self.where[of]
            other = f"row {kept_row}" + ("" if kept_file == file else f" of {kept_file}")
            report.add_issue("near_duplicate", file, row, f"about {share:.0%} similar to {other}")
        return kept


def _encode_chunk(
    chunk: list[tuple[Located, Conversation]],
    template: ChatTemplate | None,
    tok: ModelTokenizer,
    options: PrepareOptions,
) -> list[TokenizedExample]:
    return encode_conversations([c for _, c in chunk], template, tok, options)


def _write_chunk(
    writer: PreparedWriter,
    chunk: list[tuple[Located, Conversation]],
    encoding: Future[list[TokenizedExample]],
    template: ChatTemplate | None,
    tok: ModelTokenizer,
    options: PrepareOptions,
    report: PrepareReport,
) -> None:
    try:
        examples: list[TokenizedExample | None] = list(encoding.result())
    except RowProblem:
        # One of them failed: go one by one to find it (rare, so the batch path stays fast).
        examples = []
        for (file, row), conversation in chunk:
            try:
                examples.append(encode_conversations([conversation], template, tok, options)[0])
            except RowProblem as problem:
                if options.on_invalid == "error":
                    raise problem.at(file=file, row=row) from None
                report.add_issue(problem.kind, file, row, str(problem))
                examples.append(None)
    for ((file, row), conversation), example in zip(chunk, examples, strict=True):
        if example is None:
            continue
        if template is None:
            _write_blocks(writer, example, options, report, conversation.label)
        elif example.rejected is not None:
            _write_pair(writer, file, row, example, example.rejected, options, report)
        else:
            _write(writer, file, row, example, options, report, conversation.label)


def encode_conversations(
    conversations: list[Conversation],
    template: ChatTemplate | None,
    tok: ModelTokenizer,
    options: PrepareOptions,
    *,
    cut: bool = True,
) -> list[TokenizedExample]:
    """Conversations as prepare tokenizes them: rendered with ``template`` (None: raw text),
    tokenized with their loss masks, each cut to ``options.max_length`` tokens' worth of
    characters first (see :func:`~ft_data.tokenize.char_limit`) unless not ``cut``; raw text
    is tokenized whole. The examples are not yet fitted to ``max_length``: see
    :func:`fit_to_length`, and :func:`text_blocks` for raw text. Raises
    :class:`RowProblem` for a conversation the template cannot render."""
    if template is None:
        # Raw text keeps every token: a long text becomes several blocks (text_blocks).
        return tokenize_texts([c.text for c in conversations], tok)
    # Texts far longer than max_length are cut before tokenizing: tokenizing a 100 MB row
    # whole takes gigabytes, and all but its first max_length tokens are left out anyway.
    max_chars = char_limit(tok, options.max_length) if cut and options.max_length else None
    examples = tokenize_conversations(
        conversations, template, tok, train_on=options.train_on, max_chars=max_chars
    )
    # Preference pairs: the rejected sides, tokenized the same way, ride on the chosen ones.
    pairs = [i for i, conversation in enumerate(conversations) if conversation.rejected]
    if pairs:
        rejected = [conversations[i].rejected_conversation for i in pairs]
        encoded = encode_conversations(
            [c for c in rejected if c is not None], template, tok, options, cut=cut
        )
        for index, other in zip(pairs, encoded, strict=True):
            examples[index] = dataclasses.replace(examples[index], rejected=other)
    for index, example in enumerate(examples):
        if example.uncut_chars and len(example) <= (options.max_length or 0):
            # The bound did not hold (a normalizer shortened the text): tokenize it whole.
            examples[index] = encode_conversations(
                [conversations[index]], template, tok, options, cut=False
            )[0]
    return examples


Fate = Literal["kept", "truncated", "too_long", "no_trained_tokens"]


def fit_to_length(
    example: TokenizedExample, options: PrepareOptions
) -> tuple[Fate, np.ndarray, np.ndarray]:
    """What prepare does with ``example`` under ``options.max_length`` and ``on_too_long``, and
    the tokens and loss mask it keeps: ``kept`` whole; ``truncated`` (cut to max_length);
    ``too_long`` (left out, or an error with ``on_too_long: error``); ``no_trained_tokens``
    (left out: no token of it, after a cut, is trained)."""
    tokens, mask = example.tokens, example.loss_mask
    limit = options.max_length
    fate: Fate = "kept"
    if limit and len(tokens) > limit:
        if options.on_too_long != "truncate":
            return "too_long", tokens, mask
        fate, tokens, mask = "truncated", tokens[:limit], mask[:limit]
    if not mask.any():
        return "no_trained_tokens", tokens, mask
    return fate, tokens, mask


def _write(
    writer: PreparedWriter,
    file: str,
    row: int,
    example: TokenizedExample,
    options: PrepareOptions,
    report: PrepareReport,
    label: str | None = None,
) -> None:
    fate, tokens, mask = fit_to_length(example, options)
    limit = options.max_length
    if limit and len(example) > limit:
        # A text cut before tokenizing was not counted whole: give its length in characters.
        chars = f"{example.uncut_chars:,} characters" if example.uncut_chars else None
        if options.on_too_long == "error":
            raise DataError(
                f"the example has {chars}, far more than max_length {limit} tokens"
                if chars
                else f"the example has {len(example)} tokens, more than max_length {limit}",
                file=file,
                row=row,
                hint="raise max_length, or set on_too_long to 'truncate' or 'drop'",
            )
        if fate == "too_long":
            reason = (
                f"{chars}, far more than max_length {limit} tokens"
                if chars
                else f"{len(example)} tokens > max_length {limit}"
            )
            report.add_issue("too_long", file, row, reason)
            return
        reason = f"{chars or f'{len(example)} tokens'} cut to max_length {limit}"
        report.add_issue("truncated", file, row, reason)
    if fate == "no_trained_tokens":
        report.add_issue(
            "no_trained_tokens",
            file,
            row,
            "no tokens left to train on"
            + (" after truncation" if limit and len(example) > limit else ""),
        )
        return
    if example.unrendered_reasoning:
        report.add_issue(
            "reasoning_not_rendered",
            file,
            row,
            f"the chat template does not write the reasoning of {example.unrendered_reasoning} "
            "assistant message(s): kept without it",
        )
    trained = int(mask.sum())
    writer.add(tokens, mask, label=label if options.label_column is not None else None)
    report.examples += 1
    report.tokens += len(tokens)
    report.trained_tokens += trained
    report.longest = max(report.longest, len(tokens))


def text_blocks(
    example: TokenizedExample, options: PrepareOptions
) -> list[tuple[np.ndarray, np.ndarray]]:
    """A raw text's tokens as blocks of at most ``max_length`` tokens, in order, each with its
    loss mask. With ``text_overlap`` each block after the first starts with the last
    ``text_overlap`` tokens of the block before it, masked out: context, not trained twice.
    So every token of the text is trained exactly once, and the trained tokens of the blocks,
    laid end to end, are the text's tokens."""
    tokens, limit, overlap = example.tokens, options.max_length, options.text_overlap
    if not limit or len(tokens) <= limit:
        return [(tokens, example.loss_mask)]
    blocks, start, trained_to = [], 0, 0
    while True:
        end = min(start + limit, len(tokens))
        mask = np.ones(end - start, dtype=np.uint8)
        mask[: trained_to - start] = 0
        blocks.append((tokens[start:end], mask))
        if end == len(tokens):
            return blocks
        start, trained_to = end - overlap, end


def _write_blocks(
    writer: PreparedWriter,
    example: TokenizedExample,
    options: PrepareOptions,
    report: PrepareReport,
    label: str | None = None,
) -> None:
    blocks = text_blocks(example, options)
    report.split_rows += len(blocks) > 1
    for tokens, mask in blocks:
        writer.add(tokens, mask, label=label if options.label_column is not None else None)
        report.examples += 1
        report.tokens += len(tokens)
        report.trained_tokens += int(mask.sum())
        report.longest = max(report.longest, len(tokens))


def _write_pair(
    writer: PreparedWriter,
    file: str,
    row: int,
    chosen: TokenizedExample,
    rejected: TokenizedExample,
    options: PrepareOptions,
    report: PrepareReport,
) -> None:
    """A preference pair, both sides fitted to max_length together: if either is too long
    the pair is left out, cut (both sides) or an error, as ``on_too_long`` says."""
    limit = options.max_length
    longest = max(len(chosen), len(rejected))
    if limit and longest > limit:
        what = f"{longest} tokens (the longer of chosen and rejected)"
        if options.on_too_long == "error":
            raise DataError(
                f"the pair has {what}, more than max_length {limit}",
                file=file,
                row=row,
                hint="raise max_length, or set on_too_long to 'truncate' or 'drop'",
            )
        if options.on_too_long == "drop":
            report.add_issue("too_long", file, row, f"{what} > max_length {limit}")
            return
        report.add_issue("truncated", file, row, f"{what} cut to max_length {limit}")
    (_, tokens, mask), (_, other, other_mask) = (
        fit_to_length(side, dataclasses.replace(options, on_too_long="truncate"))
        for side in (chosen, rejected)
    )
    if not mask.any() or not other_mask.any():
        side = "chosen" if not mask.any() else "rejected"
        cut = " after truncation" if limit and longest > limit else ""
        report.add_issue(
            "no_trained_tokens", file, row, f"no tokens of the {side} answer to train on{cut}"
        )
        return
    writer.add(tokens, mask, rejected=(other, other_mask))
    report.examples += 1
    report.tokens += len(tokens)
    report.trained_tokens += int(mask.sum())
    report.rejected_tokens += len(other)
    report.longest = max(report.longest, len(tokens), len(other))


def _chunks(
    items: Iterator[tuple[Located, Conversation]],
    size: int,
    options: PrepareOptions,
    report: PrepareReport,
) -> Iterator[list[tuple[Located, Conversation]]]:
    near = _NearDuplicates(options.near_dup_threshold) if options.dedup == "near" else None
    while chunk := list(itertools.islice(items, size)):
        if near is not None:
            chunk = near.filter(chunk, report)
        if chunk:
            yield chunk


def _id(token_id: int | None) -> int:
    return -1 if token_id is None else token_id


def _ignore(file: Path, line: int, reason: str) -> None:
    return None
