"""Dataset formats: each turns a row (a dict) into a :class:`Conversation`, and says from a
row's keys whether the row looks like it.

Built-ins: ``alpaca``, ``sharegpt``, ``openai``, ``prompt_completion``, ``text`` and
``columns`` (a custom mapping, never detected). More come from the ``ft.formats`` entry
point group: a plugin names a class (or any callable) that takes the format's options as
keyword arguments and returns an object with the attributes of :class:`Format`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from ft_data.conversation import Conversation, Message
from ft_data.errors import DataError, RowProblem
from ft_data.registry import FORMATS_GROUP, discover

Kind = Literal["chat", "text"]


class Format(Protocol):
    """What a dataset format provides."""

    name: str
    kind: Kind  # "text": raw text for continued pretraining, tokenized without a chat template
    detectable: bool  # whether detect_format may pick it from the keys
    signature: tuple[str, ...]  # the keys that identify it, as shown in the detection reason

    def matches(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` has this format's keys."""
        ...

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        """The row as a conversation; :class:`RowProblem` naming the key when it cannot be."""
        ...


def available_formats() -> list[str]:
    """The names of every registered format, sorted."""
    return sorted(discover(FORMATS_GROUP))


def get_format(name: str, **options: Any) -> Format:
    """The format called ``name``, built with ``options`` (e.g. ``columns={...}`` for columns)."""
    factories = discover(FORMATS_GROUP)
    if name not in factories:
        raise DataError(
            f"unknown dataset format {name!r}", hint=f"formats: {', '.join(sorted(factories))}"
        )
    try:
        return factories[name](**options)  # type: ignore[no-any-return]
    except TypeError as error:
        raise DataError(
            f"format {name!r} does not take these options: {error}", key="format_options"
        ) from error


@dataclass(frozen=True)
class Detection:
    """The detected format and why, e.g.
    ``detected: sharegpt (keys 'conversations'/'from'/'value' in 1000/1000 rows)``."""

    format: Format
    reason: str


def detect_format(
    rows: Iterable[Mapping[str, Any]],
    *,
    sample: int = 1000,
    min_share: float = 0.9,
    where: str = "the data",
) -> Detection:
    """Pick the one detectable format that fits at least ``min_share`` of the first ``sample``
    rows (the rest are reported as invalid when prepared, not silently skipped).

    Raises :class:`DataError` when no format fits enough rows, or when several fit all of them
    or enough of them; the message lists the keys seen and the formats that exist, so the
    user can name one.
    """
    factories = discover(FORMATS_GROUP)
    # Formats that need options (columns) cannot be detected; the class says so before building.
    formats = [
        get_format(name)
        for name in sorted(factories)
        if getattr(factories[name], "detectable", True)
    ]
    formats = [fmt for fmt in formats if fmt.detectable]
    counts = dict.fromkeys((fmt.name for fmt in formats), 0)
    keys_seen: dict[str, int] = {}
    total = 0
    for row in rows:
        if total >= sample:
            break
        total += 1
        for key in row:
            keys_seen[key] = keys_seen.get(key, 0) + 1
        for fmt in formats:
            if fmt.matches(row):
                counts[fmt.name] += 1
    if total == 0:
        raise DataError(f"{where} holds no rows", hint="check the file is not empty")
    full = [fmt for fmt in formats if counts[fmt.name] == total]
    enough = full or [fmt for fmt in formats if counts[fmt.name] >= min_share * total]
    if len(enough) == 1:
        fmt = enough[0]
        return Detection(
            fmt, f"detected: {fmt.name} ({_keys(fmt)} in {counts[fmt.name]}/{total} rows)"
        )
    seen = ", ".join(
        f"{key!r} ({n})" for key, n in sorted(keys_seen.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    names = ", ".join(available_formats())
    if enough:
        fitting = ", ".join(
            f"{fmt.name} ({_keys(fmt)} in {counts[fmt.name]}/{total} rows)" for fmt in enough
        )
        raise DataError(
            f"cannot tell the format of {where}: several formats fit: {fitting}. Keys seen (rows): {seen}",
            hint=f"name the format; formats: {names}",
        )
    partial = ", ".join(
        f"{fmt.name} ({_keys(fmt)} in {counts[fmt.name]}/{total} rows)"
        for fmt in formats
        if counts[fmt.name]
    )
    raise DataError(
        f"cannot tell the format of {where}: no format fits {min_share:.0%} of the first {total} rows"
        + (f" (closest: {partial})" if partial else "")
        + f". Keys seen (rows): {seen}",
        hint=f"name the format, or map your columns with format 'columns'; formats: {names}",
    )


def _keys(fmt: Format) -> str:
    return "keys " + "/".join(f"'{key}'" for key in fmt.signature)


# The built-in formats ---------------------------------------------------------------------------


def _text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowProblem("the field is missing", key=key)
        return ""
    if not isinstance(value, str):
        raise RowProblem(f"expected text, found {type(value).__name__}", key=key)
    if required and not value.strip():
        raise RowProblem("the field is empty", key=key)
    return value


def _json_list(value: Any, key: str) -> list[Any] | None:
    """A list given as a list or as a JSON string (LLaMA-Factory writes ``tools`` that way)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise RowProblem(f"not valid JSON: {error.msg}", key=key) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowProblem(f"expected a list, found {type(value).__name__}", key=key)
    return value


def _tool_calls(value: Any, key: str) -> list[dict[str, Any]]:
    """OpenAI-shaped tool calls from ``{"name", "arguments"}`` objects (or a JSON string of them)."""
    calls = _json_list(value, key) or []
    shaped = []
    for call in calls:
        if not isinstance(call, dict) or "name" not in call:
            raise RowProblem("a function call needs a 'name' (and 'arguments')", key=key)
        shaped.append(
            {
                "type": "function",
                "function": {"name": call["name"], "arguments": call.get("arguments", {})},
            }
        )
    return shaped


class AlpacaFormat:
    """``instruction`` + optional ``input`` (joined by a newline, as LLaMA-Factory does) as the
    user turn, ``output`` as the answer; optional ``system`` and ``history`` ([[q, a], ...])."""

    name = "alpaca"
    kind: Kind = "chat"
    detectable = True
    signature = ("instruction", "output")

    def matches(self, row: Mapping[str, Any]) -> bool:
        return "instruction" in row and "output" in row

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        return _instruction_conversation(row, "instruction", "input", "output", "system", "history")


def _instruction_conversation(
    row: Mapping[str, Any],
    prompt: str,
    input: str | None,
    response: str,
    system: str | None,
    history: str | None,
) -> Conversation:
    """An instruction row (alpaca, or columns mapped by the user) as a conversation."""
    messages = []
    if system and (text := _text(row, system, required=False)):
        messages.append(Message("system", text))
    for index, pair in enumerate((row.get(history) if history else None) or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowProblem(
                "each history entry must be a [question, answer] pair", key=f"{history}[{index}]"
            )
        messages += [Message("user", str(pair[0])), Message("assistant", str(pair[1]))]
    parts = (_text(row, prompt), _text(row, input, required=False) if input else "")
    messages += [
        Message("user", "\n".join(part for part in parts if part)),
        Message("assistant", _text(row, response)),
    ]
    return Conversation(messages)


class ShareGptFormat:
    """``conversations``: a list of ``{"from", "value"}`` turns; optional ``system`` and ``tools``."""

    name = "sharegpt"
    kind: Kind = "chat"
    detectable = True
    signature = ("conversations", "from", "value")
    ROLE_OF: ClassVar[dict[str, str]] = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
        "function_call": "assistant",
        "observation": "tool",
        "tool": "tool",
    }

    def matches(self, row: Mapping[str, Any]) -> bool:
        turns = row.get("conversations")
        return isinstance(turns, list) and all(
            isinstance(t, dict) and "from" in t and "value" in t for t in turns
        )

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise RowProblem("expected a list of {from, value} turns", key="conversations")
        messages = []
        if system := _text(row, "system", required=False):
            messages.append(Message("system", system))
        for index, turn in enumerate(turns):
            key = f"conversations[{index}]"
            if not isinstance(turn, dict):
                raise RowProblem("expected a {from, value} object", key=key)
            speaker = turn.get("from")
            if speaker not in self.ROLE_OF:
                raise RowProblem(
                    f"unknown speaker {speaker!r}; known: {', '.join(self.ROLE_OF)}",
                    key=f"{key}.from",
                )
            value = turn.get("value")
            if not isinstance(value, str):
                raise RowProblem(f"expected text, found {type(value).__name__}", key=f"{key}.value")
            if speaker == "function_call":
                messages.append(
                    Message("assistant", "", tool_calls=_tool_calls(value, f"{key}.value"))
                )
            else:
                messages.append(Message(self.ROLE_OF[speaker], value))
        return Conversation(messages, tools=_json_list(row.get("tools"), "tools"))


class OpenAiFormat:
    """``messages``: a list of ``{"role", "content"}`` with content as text or a list of
    ``{"type": "text", "text"}`` parts; optional ``tool_calls``, ``name``, and a ``tools`` field."""

    name = "openai"
    kind: Kind = "chat"
    detectable = True
    signature = ("messages", "role", "content")

    def matches(self, row: Mapping[str, Any]) -> bool:
        turns = row.get("messages")
        return isinstance(turns, list) and all(
            isinstance(t, dict) and "role" in t and "content" in t for t in turns
        )

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        turns = row.get("messages")
        if not isinstance(turns, list):
            raise RowProblem("expected a list of {role, content} messages", key="messages")
        messages = []
        for index, turn in enumerate(turns):
            key = f"messages[{index}]"
            if not isinstance(turn, dict) or "role" not in turn:
                raise RowProblem("expected a {role, content} object", key=key)
            calls = turn.get("tool_calls") or None
            if calls is not None and not isinstance(calls, list):
                raise RowProblem("expected a list", key=f"{key}.tool_calls")
            messages.append(
                Message(
                    turn["role"],
                    _content(turn.get("content"), f"{key}.content"),
                    calls,
                    turn.get("name"),
                )
            )
        return Conversation(messages, tools=_json_list(row.get("tools"), "tools"))


def _content(content: Any, key: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise RowProblem(
            f"expected text or a list of parts, found {type(content).__name__}", key=key
        )
    texts = []
    for index, part in enumerate(content):
        if not (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise RowProblem(
                f"only text parts are supported, found {kind!r}", key=f"{key}[{index}]"
            )
        texts.append(part["text"])
    return "".join(texts)


class PromptCompletionFormat:
    """``prompt`` as the user turn, ``completion`` as the answer; optional ``system``."""

    name = "prompt_completion"
    kind: Kind = "chat"
    detectable = True
    signature = ("prompt", "completion")

    def matches(self, row: Mapping[str, Any]) -> bool:
        return "prompt" in row and "completion" in row

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        messages = [Message("system", s)] if (s := _text(row, "system", required=False)) else []
        messages += [
            Message("user", _text(row, "prompt")),
            Message("assistant", _text(row, "completion")),
        ]
        return Conversation(messages)


class TextFormat:
    """``text``: raw text for continued pretraining, every token trained."""

    name = "text"
    kind: Kind = "text"
    detectable = True
    signature = ("text",)

    def __init__(self, column: str = "text") -> None:
        self.column = column
        self.signature = (column,)

    def matches(self, row: Mapping[str, Any]) -> bool:
        return self.column in row

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        return Conversation([Message("assistant", _text(row, self.column))])


class ColumnsFormat:
    """Your own column names, e.g. ``columns={"prompt": "question", "response": "answer",
    "system": "sys"}``. Roles: ``prompt`` and ``response`` (required), ``system``, ``input``
    (appended to the prompt on a new line), ``history`` ([[q, a], ...])."""

    name = "columns"
    kind: Kind = "chat"
    detectable = False
    ROLES: ClassVar[tuple[str, ...]] = ("prompt", "response", "system", "input", "history")

    def __init__(self, columns: Mapping[str, str] | None = None) -> None:
        columns = dict(columns or {})
        unknown = sorted(set(columns) - set(self.ROLES))
        if unknown or "prompt" not in columns or "response" not in columns:
            raise DataError(
                f"the columns mapping {columns!r} is incomplete or has unknown roles {unknown}",
                key="columns",
                hint=f"map 'prompt' and 'response' (and optionally {', '.join(self.ROLES[2:])}) to column names",
            )
        self.columns = columns
        self.signature = (columns["prompt"], columns["response"])

    def matches(self, row: Mapping[str, Any]) -> bool:
        return all(column in row for column in self.signature)

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        c = self.columns
        return _instruction_conversation(
            row, c["prompt"], c.get("input"), c["response"], c.get("system"), c.get("history")
        )
