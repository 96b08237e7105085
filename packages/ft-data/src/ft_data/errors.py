"""Errors that tell a person what was wrong, where, and what to do about it."""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """A problem with the user's data or settings, located as precisely as we know.

    The message reads ``<file>, line 12, key 'output': <what>. <hint>``; each part is left out
    when unknown. The parts stay available as attributes for programs (the CLI, the server).
    """

    def __init__(
        self,
        what: str,
        *,
        file: str | PathLike[str] | None = None,
        line: int | None = None,
        row: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.what = what
        self.file = str(file) if file is not None else None
        self.line = line
        self.row = row
        self.key = key
        self.hint = hint
        super().__init__(self._message())

    def _message(self) -> str:
        where = [
            part for part in (self.file, _unit("line", self.line), _unit("row", self.row)) if part
        ]
        if self.key is not None:
            where.append(f"key {self.key!r}")
        text = f"{', '.join(where)}: {self.what}" if where else self.what
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint[:1].upper()}{self.hint[1:]}"
        return text


class RowProblem(ValueError):
    """Raised by a format for one row it cannot convert; the caller adds the file and row.

    ``key`` names the field at fault (``"output"``, ``"conversations[2].value"``) when there is one.
    ``kind`` is the reason the report counts the row under: ``invalid``, or ``media`` for a
    row holding an image, audio or another part ft cannot train on.
    """

    def __init__(self, what: str, *, key: str | None = None, kind: str = "invalid") -> None:
        self.what = what
        self.key = key
        self.kind = kind
        super().__init__(f"key {key!r}: {what}" if key else what)

    def at(
        self, *, file: str | PathLike[str] | None, row: int, hint: str | None = None
    ) -> DataError:
        """This problem as a :class:`DataError` located at ``file``, ``row``."""
        return DataError(self.what, file=file, row=row, key=self.key, hint=hint)


def _unit(name: str, number: int | None) -> str | None:
    return f"{name} {number}" if number is not None else None
