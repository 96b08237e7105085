"""Rows as the model sees them: the template applied, and which tokens it is trained on.

:func:`explain_rows` is what `ft dataset inspect` shows. It reads the first rows of a source
with prepare's own steps (:func:`~ft_data.prepare.choose_format`,
:func:`~ft_data.prepare.row_conversation`, :func:`~ft_data.prepare.choose_template`,
:func:`~ft_data.prepare.encode_conversations`, :func:`~ft_data.prepare.fit_to_length`), so
each row comes out as ``prepare_dataset`` writes it, and adds what a person needs to see it:
the rendered text, the piece of it each token covers, and which tokens are trained.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ft_data.conversation import Conversation
from ft_data.errors import RowProblem
from ft_data.prepare import (
    PrepareOptions,
    choose_format,
    choose_template,
    encode_conversations,
    fit_to_length,
    read_rows_of,
    row_conversation,
    text_blocks,
)
from ft_data.readers import local_files
from ft_data.templates import ChatTemplate
from ft_data.tokenize import char_limit
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

Status = Literal["kept", "split", "truncated", "too_long", "no_trained_tokens", "invalid"]


class TokenPiece(NamedTuple):
    """The text one token stands for, whether it is trained (loss mask 1), and whether it is
    kept (False: past max_length, cut off by truncation)."""

    text: str
    trained: bool
    kept: bool


@dataclass(frozen=True)
class ExplainedRow:
    """One row of the source as prepare treats it.

    ``status``: ``kept``, ``split`` (raw text longer than max_length: kept whole, as
    ``blocks`` blocks), ``truncated`` (cut to max_length), ``too_long``,
    ``no_trained_tokens`` (both left out) or ``invalid`` (left out: ``problem`` says why).
    ``trained_spans``: the ``[start, end)`` character spans of ``text`` that are trained.
    ``pieces``: ``text`` token by token, end to end (a token the tokenizer added without text
    of its own shows as the token itself).
    """

    file: str
    row: int
    status: Status
    text: str = ""
    tokens: int = 0
    trained_tokens: int = 0
    kept_tokens: int = 0
    trained_spans: list[list[int]] = field(default_factory=list)
    problem: str | None = None
    pieces: list[TokenPiece] = field(default_factory=list)
    blocks: int = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` (without ``pieces``)."""
        where: dict[str, Any] = {"file": self.file, "row": self.row, "status": self.status}
        if self.status == "invalid":
            return where | {"problem": self.problem}
        return where | {
            "text": self.text,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "kept_tokens": self.kept_tokens,
            "trained_spans": self.trained_spans,
            "blocks": self.blocks,
        }


@dataclass(frozen=True)
class Explanation:
    """The first rows of ``source``, and the line saying which format they were read as."""

    source: str
    detected: str
    rows: list[ExplainedRow]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "source": self.source,
            "detected": self.detected,
            "examples": [row.to_dict() for row in self.rows],
        }


def explain_rows(
    source: str | Path,
    tokenizer: ModelTokenizer | str | Path,
    options: PrepareOptions | None = None,
    count: int = 3,
) -> Explanation:
    """The first ``count`` rows of ``source`` (file, folder, glob or URL), each as
    ``prepare_dataset(source, tokenizer, ..., options)`` renders, tokenizes and fits it.
    Raises :class:`~ft_data.errors.DataError` for unreadable data or an undetectable format."""
    options = options or PrepareOptions()
    tok = tokenizer if isinstance(tokenizer, ModelTokenizer) else load_tokenizer(tokenizer)
    with local_files(source) as files:
        fmt, reason = choose_format(source, files, options)
        template = choose_template(fmt, tok, options)
        rows = (
            (file, number, row) for file in files for number, row in read_rows_of(file, options)
        )
        explained = []
        for file, number, row in itertools.islice(rows, count):
            try:
                conversation = row_conversation(fmt, row, options)
                explained.append(
                    explain_conversation(
                        conversation, template, tok, options, file=str(file), row=number
                    )
                )
            except RowProblem as problem:
                explained.append(ExplainedRow(str(file), number, "invalid", problem=str(problem)))
    return Explanation(str(source), reason, explained)


def explain_conversation(
    conversation: Conversation,
    template: ChatTemplate | None,
    tok: ModelTokenizer,
    options: PrepareOptions,
    *,
    file: str = "",
    row: int = 0,
) -> ExplainedRow:
    """One conversation (row ``row`` of ``file``) as prepare tokenizes and fits it, with the
    text each token covers. Raises :class:`RowProblem` for a conversation the
    template cannot render."""
    [example] = encode_conversations([conversation], template, tok, options)
    if template is None:
        text, add_special = conversation.text, True
    else:
        text, _ = template.render_with_spans(conversation, tok.special_tokens)
        add_special = False
    if example.uncut_chars:  # only the start of the text was tokenized
        assert options.max_length is not None
        text = text[: char_limit(tok, options.max_length)]
    blocks = 1
    if template is None:  # raw text: every token kept, in blocks
        blocks = len(text_blocks(example, options))
        fate, kept = ("split" if blocks > 1 else "kept"), len(example)
    else:
        fate, _, kept_mask = fit_to_length(example, options)
        kept = len(example) if fate == "too_long" else len(kept_mask)
    mask = example.loss_mask.tolist()
    pieces, spans = _pieces(text, example.tokens.tolist(), mask, kept, tok, add_special)
    return ExplainedRow(
        file=file,
        row=row,
        status=fate,
        text=text,
        tokens=len(example),
        trained_tokens=int(example.loss_mask.sum()),
        kept_tokens=kept if fate in ("kept", "split", "truncated") else 0,
        trained_spans=spans,
        pieces=pieces,
        blocks=blocks,
    )


def _pieces(
    text: str,
    tokens: list[int],
    mask: list[int],
    kept: int,
    tok: ModelTokenizer,
    add_special: bool,
) -> tuple[list[TokenPiece], list[list[int]]]:
    """``text`` cut into the pieces its tokens cover, and the character spans trained."""
    # The offsets come from tokenizing the text again: prepare's batch path does not ask for
    # them (they cost about a fifth of its time), and the same text gives the same tokens.
    encoding = tok.tokenizer.encode(text, add_special_tokens=add_special)
    offsets = encoding.offsets  # a new list on each access: read it once
    pieces: list[TokenPiece] = []
    spans: list[list[int]] = []
    position, in_span = 0, False
    for index, token in enumerate(tokens):
        trained = bool(mask[index])
        start, end = offsets[index] if index < len(offsets) else (0, 0)
        # Each token's text runs from the end of the one before it, so nothing between tokens
        # is lost; a token without text of its own (a special token the tokenizer added, the
        # eos appended to raw text) shows as itself.
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
        pieces.append(TokenPiece(piece, trained, index < kept))
    pieces.append(TokenPiece(text[position:], False, True))
    return pieces, spans
