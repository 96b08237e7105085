"""Values of a JSON array (or of JSON values written one after another) read from a text
file through a sliding window, so a multi-GB array never sits in memory whole."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TextIO

from ft_data.errors import DataError

_JSON_SPACE = re.compile(r"[ \t\r\n]*")

MAX_DEPTH = 64
"""How deeply a data row's JSON may nest (objects and arrays). A chat row is 3 deep; a row
nested thousands deep is hostile, and Python's parser and every step after it recurse."""


def check_depth(raw: str, value: Any, path: Path | str, line: int) -> None:
    """Raise a row-level DataError when `value` (parsed from `raw`) nests deeper than MAX_DEPTH."""
    if raw.count("[") + raw.count("{") <= MAX_DEPTH:  # cheap: most rows cannot be too deep
        return
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            raise too_deep(path, line)
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]


def too_deep(path: Path | str, line: int) -> DataError:
    """The error for a row nested deeper than MAX_DEPTH (also when the parser itself gives up)."""
    return DataError(
        f"the row's JSON nests more than {MAX_DEPTH} levels deep",
        file=path,
        line=line,
        hint="flatten the row, or leave it out of the data",
    )


class JsonStream:
    """A window over a text file: ``peek()`` the next character, take the next ``value()``,
    ``expect()`` punctuation. Errors name the file and line."""

    def __init__(self, file: TextIO, path: Path, *, chunk_chars: int = 1 << 20) -> None:
        self.file, self.path, self.chunk_chars = file, path, chunk_chars
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def _fill(self) -> bool:
        if self.eof:
            return False
        self.line += self.buf.count("\n", 0, self.pos)
        kept = self.buf[self.pos :]
        more = self.file.read(max(self.chunk_chars, len(kept)))  # doubling keeps re-parses linear
        self.buf, self.pos, self.eof = kept + more, 0, not more
        return bool(more)

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            self._advance(_JSON_SPACE.match(self.buf, self.pos).end())  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def value(self) -> tuple[int, str, Any]:
        """The next value as (line, raw text, parsed value)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except RecursionError:
                raise too_deep(self.path, self.line) from None
            except json.JSONDecodeError as error:
                incomplete = error.pos >= len(self.buf) - 1 or error.msg.startswith("Unterminated")
                if incomplete and self._fill():
                    continue
                line = self.line + self.buf.count("\n", self.pos, error.pos)
                raise DataError(f"not valid JSON: {error.msg}", file=self.path, line=line) from None
            if end == len(self.buf) and self._fill():
                continue  # a number at the end of the window may go on in the next one
            line, raw = self.line, self.buf[self.pos : end]
            check_depth(raw, value, self.path, line)
            self._advance(end)
            return line, raw, value

    def expect(self, chars: str, after: str) -> str:
        found = self.peek()
        if found == "" or found not in chars:
            shown = repr(found) if found else "the end of the file"
            raise DataError(
                f"expected {' or '.join(map(repr, chars))} {after}, found {shown}",
                file=self.path,
                line=self.line,
            )
        self._advance(self.pos + 1)
        return found
