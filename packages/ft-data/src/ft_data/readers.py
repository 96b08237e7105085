"""Streaming readers: every supported file becomes rows of ``(row_number, dict)``.

A source is a file, a folder (read recursively, by extension), a glob, or an http(s) URL
(downloaded to a temporary file first). Readers stream: JSON arrays are parsed element by
element, JSONL and CSV line by line, Parquet in record batches, so memory stays bounded for
multi-GB inputs. Row numbers are 1-based positions in the file (the n-th row, not the n-th
line); errors name the file and the line (or row) a person can open in an editor.

Broken UTF-8 is an error by default. ``on_bad_utf8="replace"`` puts U+FFFD in place of the
bad bytes; ``"drop"`` leaves out the row that holds them (the whole file for text, Markdown
and HTML) and tells ``on_skip`` (or warns) about it.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import glob
import json
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from ft_config.secrets import MASK, URL_TOKEN_PLACEHOLDER, redact_url, redact_urls_in
from ft_data.errors import DataError
from ft_data.json_stream import JsonStream, check_depth, too_deep

Row = tuple[int, dict[str, Any]]
BadUtf8 = Literal["error", "replace", "drop"]
Documents = Literal["file", "blank_line", "line"]
"""How a text, Markdown or HTML file is cut into documents (rows): the whole file, the
paragraphs between blank lines, or each line; empty documents are skipped."""
SkipHook = Callable[[Path, int, str], None]
"""Called with (file, line or row, reason) for each row a reader leaves out."""

READER_BY_SUFFIX: dict[str, str] = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
}
_SUFFIX_BY_CONTENT_TYPE = {
    "application/json": ".json",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/vnd.apache.parquet": ".parquet",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
}
_CHUNK_CHARS = 1 << 20
_PARQUET_BATCH_ROWS = 4096
# Bytes that are not UTF-8 come back from the "surrogateescape" decoder as lone surrogates.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def read_rows(
    source: str | Path,
    *,
    on_bad_utf8: BadUtf8 = "error",
    on_skip: SkipHook | None = None,
    documents: Documents = "file",
) -> Iterator[Row]:
    """Yield every row of ``source`` (file, folder, glob or URL) as ``(row_number, dict)``.

    Files of a folder or glob are read in sorted path order and row numbers continue from one
    file to the next, so a number is unique within the source. Raises :class:`DataError` for
    a missing source, an unknown extension, malformed JSON or broken UTF-8 (by default).
    """
    offset = 0
    with local_files(source) as files:
        for path in files:
            number = 0
            rows = read_file(path, on_bad_utf8=on_bad_utf8, on_skip=on_skip, documents=documents)
            for number, row in rows:
                yield offset + number, row
            offset += number


def read_file(
    path: str | Path,
    *,
    reader: str | None = None,
    on_bad_utf8: BadUtf8 = "error",
    on_skip: SkipHook | None = None,
    documents: Documents = "file",
) -> Iterator[Row]:
    """Yield the rows of one local file, chosen by ``reader`` or else by the file's extension.

    Readers: json (a top-level array, or objects one after another), jsonl, csv, tsv, parquet,
    text and markdown (``{"text": ...}`` rows: the whole file, or as ``documents`` says its
    paragraphs or lines), html (the page's main text, extracted with trafilatura, cut the same
    way).
    """
    path = Path(path)
    kind = reader or reader_for(path)
    skip = on_skip or _warn_skip
    if kind == "json":
        yield from _read_json(path, on_bad_utf8, skip)
    elif kind == "jsonl":
        yield from _read_jsonl(path, on_bad_utf8, skip)
    elif kind in ("csv", "tsv"):
        yield from _read_delimited(path, "," if kind == "csv" else "\t", on_bad_utf8, skip)
    elif kind == "parquet":
        yield from _read_parquet(path)
    elif kind in ("text", "markdown", "html"):
        text = _read_whole_text(path, on_bad_utf8, skip)
        if text is not None:
            text = _main_text(path, text) if kind == "html" else text
            for number, document in enumerate(split_documents(text, documents), 1):
                yield number, {"text": document}
    else:
        raise DataError(f"unknown reader {kind!r}", file=path, hint=_readers_hint())


def reader_for(path: Path) -> str:
    """The reader name for ``path``'s extension; :class:`DataError` when there is none."""
    kind = READER_BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"cannot tell how to read a {path.suffix or 'extensionless'} file",
            file=path,
            hint=_readers_hint(),
        )
    return kind


def find_files(source: str | Path) -> list[Path]:
    """The local files ``source`` names: itself, a folder's readable files (recursive), or a glob's.

    Hidden files and folders (starting with ".") are skipped in folders. The list is sorted so
    reading order, and everything hashed from it, is stable. Raises :class:`DataError` when
    nothing matches.
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in READER_BY_SUFFIX
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError("the folder holds no readable files", file=path, hint=_readers_hint())
        return files
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())  # noqa: PTH207 (absolute patterns)
        if not files:
            raise DataError(f"the pattern {text!r} matches no files")
        return files
    raise DataError(
        "no such file or folder", file=path, hint="check the path, or give a glob or an http(s) URL"
    )


@contextlib.contextmanager
def local_files(source: str | Path | Any, *, token: str | None = None) -> Iterator[list[Path]]:
    """The local files of ``source``; an http(s) URL is downloaded to a temporary file that
    lives for the ``with`` block (with ``token``, passwords.yml's ``data_token``: see
    :func:`download`). A Hugging Face dataset (``org/name``, ``hf://datasets/org/name``, or
    an :class:`~ft_data.hub.HubDataset`) is its files in the huggingface_hub cache."""
    from ft_data.hub import HubDataset, hub_files, looks_like_hub_id

    if isinstance(source, HubDataset) or looks_like_hub_id(str(source)):
        dataset = source if isinstance(source, HubDataset) else HubDataset.parse(str(source))
        yield hub_files(dataset)
        return
    text = str(source)
    if not text.startswith(("http://", "https://")):
        yield find_files(source)
        return
    with tempfile.TemporaryDirectory(prefix="ft-data-") as folder:
        yield [download(text, Path(folder), token=token)]


def download(url: str, folder: Path, *, token: str | None = None) -> Path:
    """Download ``url`` into ``folder`` with urllib and return the file's path.

    The file keeps the URL's file name; when that has no known extension, one is taken from the
    response's Content-Type so the right reader is used.

    Credentials: ``{data_token}`` in the URL is replaced by ``token``; a ``user:password@`` part
    is sent as HTTP Basic authentication; otherwise ``token``, when given, is sent as
    ``Authorization: Bearer``. Authorization is never forwarded to another host on a redirect,
    and errors show the URL with its credentials masked (:func:`ft_config.redact_url`).
    """
    shown = redact_url(url)
    real = url
    if URL_TOKEN_PLACEHOLDER in url:
        if not token:
            raise DataError(
                f"the URL asks for {URL_TOKEN_PLACEHOLDER}, and no data_token is set",
                file=shown,
                hint="add data_token to passwords.yml (`ft secrets`), or set $FT_DATA_TOKEN",
            )
        real = url.replace(URL_TOKEN_PLACEHOLDER, urllib.parse.quote(token, safe=""))
    parts = urllib.parse.urlsplit(real)
    user, _, password = parts.netloc.rpartition("@")[0].partition(":")
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)))
    if "@" in parts.netloc:
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    elif token and real == url:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    name = Path(urllib.parse.unquote(parts.path)).name or "download"
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if Path(name).suffix.lower() not in READER_BY_SUFFIX:
                content_type = response.headers.get_content_type()
                name += _SUFFIX_BY_CONTENT_TYPE.get(content_type, "")
            target = folder / name
            with open(target, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
    except urllib.error.HTTPError as error:
        raise DataError(
            f"download failed: HTTP {error.code} {error.reason}",
            file=shown,
            hint="check the URL, and its token (passwords.yml's data_token)"
            if error.code in (401, 403)
            else "check the URL",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = redact_urls_in(str(getattr(error, "reason", error)))
        for secret in (token, password):
            if secret:
                reason = reason.replace(secret, MASK)
        raise DataError(
            f"download failed: {reason}",
            file=shown,
            hint="check the URL and the network, or download the file and give its path",
        ) from None
    return target


# JSON arrays and concatenated JSON values -----------------------------------------------------


def _read_json(path: Path, on_bad_utf8: BadUtf8, skip: SkipHook) -> Iterator[Row]:
    with open(path, encoding="utf-8", errors="surrogateescape") as file:
        stream = JsonStream(file, path, chunk_chars=_CHUNK_CHARS)
        first = stream.peek()
        if first == "[":
            stream.expect("[", "at the start")
            if stream.peek() == "]":
                return
            number, more = 0, True
            while more:
                number += 1
                line, raw, value = stream.value()
                row = _json_row(path, line, number, raw, value, on_bad_utf8, skip)
                if row is not None:
                    yield number, row
                more = stream.expect(",]", "after an array element") == ","
        elif first == "{":
            number = 0
            while stream.peek():
                number += 1
                line, raw, value = stream.value()
                row = _json_row(path, line, number, raw, value, on_bad_utf8, skip)
                if row is not None:
                    yield number, row
        elif first:
            raise DataError(
                f"expected a JSON array of objects, found {first!r}", file=path, line=stream.line
            )


def _json_row(
    path: Path, line: int, number: int, raw: str, value: Any, on_bad_utf8: BadUtf8, skip: SkipHook
) -> dict[str, Any] | None:
    bad = _ESCAPED_BYTE.search(raw)
    if bad:
        where = line + raw.count("\n", 0, bad.start())
        if on_bad_utf8 == "drop":
            skip(path, where, "invalid UTF-8")
            return None
        if on_bad_utf8 == "error":
            raise _utf8_error(path, where)
        value = json.loads(raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    if not isinstance(value, dict):
        raise DataError(
            f"row {number} is a JSON {type(value).__name__}, expected an object with named fields",
            file=path,
            line=line,
        )
    return value


def _read_jsonl(path: Path, on_bad_utf8: BadUtf8, skip: SkipHook) -> Iterator[Row]:
    number = 0
    with open(path, "rb") as file:
        for line, data in enumerate(file, 1):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                if on_bad_utf8 == "error":
                    raise _utf8_error(path, line) from None
                if on_bad_utf8 == "drop":
                    skip(path, line, "invalid UTF-8")
                    continue
                text = data.decode("utf-8", "replace")
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except RecursionError:
                raise too_deep(path, line) from None
            except json.JSONDecodeError as error:
                raise DataError(
                    f"not valid JSON: {error.msg} (column {error.colno})",
                    file=path,
                    line=line,
                    hint="each line of a JSON Lines file must hold one complete JSON object",
                ) from None
            check_depth(text, value, path, line)
            if not isinstance(value, dict):
                raise DataError(
                    f"the line holds a JSON {type(value).__name__}, expected an object with named fields",
                    file=path,
                    line=line,
                )
            number += 1
            yield number, value


# CSV, TSV, Parquet, whole-file text -------------------------------------------------------------


def _read_delimited(
    path: Path, delimiter: str, on_bad_utf8: BadUtf8, skip: SkipHook
) -> Iterator[Row]:
    csv.field_size_limit(2**31 - 1)  # long documents in one cell are normal for training data
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        # The reader asks for a line after the last only inside a quoted field: a quote that is
        # never closed, which it would otherwise end silently at the end of the file.
        at_end = [False]

        def lines() -> Iterator[str]:
            yield from file
            at_end[0] = True

        records = csv.reader(lines(), delimiter=delimiter)
        header = next(records, None)
        if header is None:
            return
        if any(_ESCAPED_BYTE.search(name) for name in header) and on_bad_utf8 != "replace":
            raise _utf8_error(path, 1)
        header = [_replace_escaped(name) for name in header]
        number, line = 0, records.line_num
        for fields in records:
            start, line = line + 1, records.line_num
            if not fields:
                continue
            if at_end[0] or (len(fields) != len(header) and line > start):
                raise _open_quote(path, start, line, fields, len(header), at_end[0])
            if len(fields) != len(header):
                raise DataError(
                    f"the record has {len(fields)} fields, the header has {len(header)}",
                    file=path,
                    line=start,
                    hint="quote fields that hold the delimiter or line breaks",
                )
            if any(_ESCAPED_BYTE.search(field) for field in fields):
                if on_bad_utf8 == "error":
                    raise _utf8_error(path, start)
                if on_bad_utf8 == "drop":
                    skip(path, start, "invalid UTF-8")
                    continue
                fields = [_replace_escaped(field) for field in fields]
            number += 1
            yield number, dict(zip(header, fields, strict=True))


def _open_quote(
    path: Path, start: int, end: int, fields: list[str], expected: int, at_end: bool
) -> DataError:
    """A record that a quoted field ran away with: name the line where the quote opened."""
    index = next((i for i, field in enumerate(fields) if "\n" in field), len(fields) - 1)
    if at_end:
        index = len(fields) - 1  # the field still open when the file ended
    opened = start + sum(field.count("\n") for field in fields[:index])
    hint = 'close the quote, or write a quote inside a quoted field twice ("")'
    if at_end:
        return DataError(
            "a quoted field starts on this line and is never closed: it runs to the end of the "
            f"file (line {end})",
            file=path,
            line=opened,
            hint=hint,
        )
    return DataError(
        f"a quoted field starts on this line and runs to line {end}, which leaves the record "
        f"with {len(fields)} fields where the header has {expected}: a quote is probably not "
        "closed where it should be",
        file=path,
        line=opened,
        hint=hint,
    )


def _read_parquet(path: Path) -> Iterator[Row]:
    import polars as pl

    number = 0
    try:
        frame = pl.scan_parquet(path)
        batches = frame.collect_batches(chunk_size=_PARQUET_BATCH_ROWS)
        for batch in batches:
            for row in batch.iter_rows(named=True):
                number += 1
                yield number, row
    except pl.exceptions.PolarsError as error:
        raise DataError(
            f"cannot read the Parquet file: {error}", file=path, row=number + 1 if number else None
        ) from error


def _read_whole_text(path: Path, on_bad_utf8: BadUtf8, skip: SkipHook) -> str | None:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        if on_bad_utf8 == "error":
            raise _utf8_error(path, line) from None
        if on_bad_utf8 == "drop":
            skip(path, line, "invalid UTF-8 (the whole file is one row)")
            return None
        return data.decode("utf-8-sig", "replace")


_BLANK_LINES = re.compile(r"\r?\n(?:[ \t\f\v]*\r?\n)+")


def split_documents(text: str, documents: Documents) -> list[str]:
    """``text`` cut into documents: itself (``file``), its paragraphs (``blank_line``: runs
    of lines between blank lines) or its lines (``line``). Paragraphs and lines holding only
    whitespace are left out; each keeps its text as written, without the line break that ends
    it."""
    if documents == "file":
        return [text]  # an empty file is one empty row, which the text format reports
    if documents == "line":
        parts = text.splitlines()
    elif documents == "blank_line":
        parts = _BLANK_LINES.split(text)
    else:
        raise DataError(
            f"unknown way to cut text into documents: {documents!r}",
            key="text_documents",
            hint="use file, blank_line or line",
        )
    return [part.rstrip("\r\n") for part in parts if part.strip()]


def _main_text(path: Path, html: str) -> str:
    import trafilatura

    text = trafilatura.extract(html, include_comments=False, include_tables=True)
    if not text:
        raise DataError(
            "found no main text in the HTML page",
            file=path,
            hint="save the page's text as .txt or .md instead",
        )
    return text


def _replace_escaped(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8_error(path: Path, line: int) -> DataError:
    return DataError(
        "the text is not valid UTF-8",
        file=path,
        line=line,
        hint="re-save the file as UTF-8, or read it with on_bad_utf8='replace' or 'drop'",
    )


def _warn_skip(path: Path, line: int, reason: str) -> None:
    warnings.warn(f"{path}, line {line}: left out ({reason})", stacklevel=3)


def _readers_hint() -> str:
    return "readable extensions: " + ", ".join(sorted(READER_BY_SUFFIX))
