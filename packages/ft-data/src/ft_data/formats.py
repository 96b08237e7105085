"""Dataset formats: each turns a row (a dict) into a :class:`Conversation`, and says from a
row's keys whether the row looks like it.

Built-ins: ``alpaca``, ``sharegpt``, ``openai``, ``prompt_completion``, ``text``, ``columns``
(a custom mapping, never detected), and the preference pairs ``preference``
(prompt/chosen/rejected), ``sharegpt_preference`` and ``openai_preference``. More come from the ``ft.formats`` entry
point group: a plugin names a class (or any callable) that takes the format's options as
keyword arguments and returns an object with the attributes of :class:`Format`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Protocol

from ft_data.conversation import Conversation, Message
from ft_data.errors import DataError, RowProblem
from ft_data.registry import FORMATS_GROUP, discover

Kind = Literal["chat", "text", "preference"]


class Format(Protocol):
    """What a dataset format provides."""

    name: str
    # "text": raw text for continued pretraining, tokenized without a chat template;
    # "preference": a prompt with a chosen and a rejected answer (Conversation.rejected).
    kind: Kind
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
        return (
            isinstance(turns, list)
            and all(isinstance(t, dict) and "from" in t and "value" in t for t in turns)
            and not _is_pair(row)
        )

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        turns = row.get("conversations")
        if not isinstance(turns, list):
            raise RowProblem("expected a list of {from, value} turns", key="conversations")
        messages = []
        if system := _text(row, "system", required=False):
            messages.append(Message("system", system))
        for index, turn in enumerate(turns):
            messages += self.turn(turn, f"conversations[{index}]")
        return Conversation(messages, tools=_json_list(row.get("tools"), "tools"))

    def turn(self, turn: Any, key: str) -> list[Message]:
        """One ``{from, value}`` turn as a message (``key`` names it in errors)."""
        messages = []
        if not isinstance(turn, dict):
            raise RowProblem(
                f"expected a {{from, value}} object, found {type(turn).__name__}", key=key
            )
        speaker = turn.get("from")
        if speaker not in self.ROLE_OF:
            raise RowProblem(
                f"unknown speaker {speaker!r}; known: {', '.join(self.ROLE_OF)}",
                key=f"{key}.from",
            )
        value = turn.get("value")
        if value is None or isinstance(value, int | float | bool):
            found = "nothing" if value is None else type(value).__name__
            raise RowProblem(f"expected text, found {found}", key=f"{key}.value")
        if speaker == "function_call":
            messages.append(Message("assistant", "", tool_calls=_tool_calls(value, f"{key}.value")))
        else:
            text, reasoning = content_parts(value, f"{key}.value")
            messages.append(
                Message(
                    self.ROLE_OF[speaker],
                    text,
                    reasoning_content=_reasoning(turn, reasoning, key),
                    weight=_weight(turn, key),
                )
            )
        return messages


class OpenAiFormat:
    """``messages``: a list of ``{"role", "content"}`` with content as text or a list of parts
    (see :func:`content_parts`); optional ``tool_calls``, ``name``, ``reasoning_content``,
    ``weight`` or ``loss_weight`` (0: the assistant turn is not trained), and a ``tools``
    field."""

    name = "openai"
    kind: Kind = "chat"
    detectable = True
    signature = ("messages", "role", "content")

    def matches(self, row: Mapping[str, Any]) -> bool:
        turns = row.get("messages")
        return (
            isinstance(turns, list)
            and all(isinstance(t, dict) and "role" in t and "content" in t for t in turns)
            and not _is_pair(row)
        )

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        return Conversation(
            openai_messages(row.get("messages"), "messages"),
            tools=_json_list(row.get("tools"), "tools"),
        )


def openai_messages(turns: Any, key: str) -> list[Message]:
    """OpenAI-style ``{"role", "content", ...}`` objects as messages (``key`` names the list
    in errors)."""
    if not isinstance(turns, list):
        found = "nothing" if turns is None else type(turns).__name__
        raise RowProblem(f"expected a list of {{role, content}} messages, found {found}", key=key)
    messages = []
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict) or "role" not in turn:
            found = "an object without 'role'" if isinstance(turn, dict) else type(turn).__name__
            raise RowProblem(f"expected a {{role, content}} object, found {found}", key=where)
        calls = turn.get("tool_calls") or None
        if calls is not None and not isinstance(calls, list):
            raise RowProblem(
                f"expected a list, found {type(calls).__name__}", key=f"{where}.tool_calls"
            )
        text, reasoning = content_parts(turn.get("content"), f"{where}.content")
        messages.append(
            Message(
                turn["role"],
                text,
                calls,
                turn.get("name"),
                reasoning_content=_reasoning(turn, reasoning, where),
                weight=_weight(turn, where),
            )
        )
    return messages


# Part types, as OpenAI, Anthropic and the tools that convert between them write them.
TEXT_PARTS = ("text", "input_text", "output_text")
REASONING_PARTS = ("reasoning", "thinking", "reasoning_text")
MEDIA_PARTS = {
    "image_url": "an image",
    "image": "an image",
    "input_image": "an image",
    "image_file": "an image",
    "audio": "audio",
    "input_audio": "audio",
    "audio_url": "audio",
    "video": "a video",
    "video_url": "a video",
    "file": "a file",
    "input_file": "a file",
    "document": "a document",
}


def content_parts(content: Any, key: str) -> tuple[str, str | None]:
    """A message's ``content`` as (text, reasoning or None).

    ``content`` is text, or a list of parts: ``{"type": "text", "text": ...}`` (OpenAI), the
    same with ``"value"`` for the text (what other tools write), and reasoning parts
    (``{"type": "thinking", "thinking": ...}``, ``{"type": "reasoning", "text": ...}``), each
    kind joined in order. An image, audio or file part raises :class:`RowProblem` of kind
    ``media``: ft trains language models on text, so the row is left out with that reason.
    """
    if content is None or isinstance(content, str):
        return content or "", None
    if isinstance(content, dict):
        content = [content]  # one part on its own
    if not isinstance(content, list):
        raise RowProblem(
            f"expected text or a list of parts, found {type(content).__name__}", key=key
        )
    texts, reasoning = [], []
    for index, part in enumerate(content):
        where = f"{key}[{index}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RowProblem(
                f"expected a part such as {{'type': 'text', 'text': ...}}, found "
                f"{type(part).__name__}",
                key=where,
            )
        kind = part.get("type", "text" if ("text" in part or "value" in part) else None)
        if kind in TEXT_PARTS:
            texts.append(_part_text(part, kind, ("text", "value", "content"), where))
        elif kind in REASONING_PARTS:
            fields = (kind, "text", "value", "reasoning", "thinking", "content", "summary")
            reasoning.append(_part_text(part, kind, fields, where))
        elif kind in MEDIA_PARTS:
            raise RowProblem(
                f"{MEDIA_PARTS[kind]} part (type {kind!r}): ft trains on text only, so the row "
                "is left out",
                key=f"{where}.type",
                kind="media",
            )
        else:
            found = f"type {kind!r}" if kind is not None else f"no 'type' (keys {sorted(part)})"
            raise RowProblem(
                f"a part with {found}: the parts ft reads are text "
                "({'type': 'text', 'text' or 'value': ...}) and reasoning or thinking",
                key=where if kind is None else f"{where}.type",
            )
    return "".join(texts), ("\n".join(reasoning) if reasoning else None)


def _part_text(part: Mapping[str, Any], kind: str, fields: tuple[str, ...], where: str) -> str:
    """The text of a part: its first field of ``fields`` that is there (a list of parts
    inside it, e.g. a reasoning summary, is joined)."""
    for name in fields:
        if name in part and name != "type":
            value = part[name]
            if isinstance(value, list):
                return "".join(
                    _part_text(p, kind, fields, where) for p in value if isinstance(p, dict)
                )
            if not isinstance(value, str):
                raise RowProblem(
                    f"the {kind!r} part's {name!r} is {type(value).__name__}, expected text",
                    key=f"{where}.{name}",
                )
            return value
    names = " or ".join(repr(name) for name in dict.fromkeys(fields))
    raise RowProblem(
        f"the {kind!r} part has no text: expected {names}, found keys {sorted(part)}", key=where
    )


def _reasoning(turn: Mapping[str, Any], from_parts: str | None, where: str) -> str | None:
    """The message's reasoning: ``reasoning_content`` (or ``reasoning``/``thinking`` given as
    text), then any reasoning parts of its content."""
    texts = []
    for name in ("reasoning_content", "reasoning", "thinking"):
        value = turn.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RowProblem(
                f"expected the reasoning as text, found {type(value).__name__}",
                key=f"{where}.{name}",
            )
        texts.append(value)
        break
    if from_parts:
        texts.append(from_parts)
    return "\n".join(texts) if texts else None


def _weight(turn: Mapping[str, Any], where: str) -> int | None:
    """The message's training flag: OpenAI's ``weight`` or ``loss_weight``, 0 or 1."""
    found = None
    for name in ("weight", "loss_weight"):
        if name not in turn or turn[name] is None:
            continue
        value = turn[name]
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            flag = int(value)
        else:
            raise RowProblem(
                f"expected 0 (do not train on this message) or 1 (train on it), found {value!r}",
                key=f"{where}.{name}",
            )
        if found is not None and flag != found:
            raise RowProblem(
                f"'weight' is {found} and 'loss_weight' is {flag}: give one", key=f"{where}.{name}"
            )
        found = flag
    return found


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


# Preference pairs -------------------------------------------------------------------------------


def _is_pair(row: Mapping[str, Any]) -> bool:
    return "chosen" in row and "rejected" in row


def _pair(
    prompt: list[Message], chosen: list[Message], rejected: list[Message], **extra: Any
) -> Conversation:
    """A preference pair: the prompt's own assistant turns (earlier answers) are context only,
    so each side trains on its answer alone."""
    context = [replace(m, weight=0) if m.role == "assistant" else m for m in prompt]
    for side, answer in (("chosen", chosen), ("rejected", rejected)):
        if not any(message.role == "assistant" for message in answer):
            raise RowProblem(f"the {side} answer has no assistant message", key=side)
    return Conversation([*context, *chosen], rejected=[*context, *rejected], **extra)


def _answer(value: Any, key: str) -> list[Message]:
    """A chosen or rejected answer: text, one ``{role, content}`` message or a list of them."""
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("the answer is empty", key=key)
        return [Message("assistant", value)]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return openai_messages(value, key)
    found = "nothing" if value is None else type(value).__name__
    raise RowProblem(f"expected the answer as text or a list of messages, found {found}", key=key)


class PreferenceFormat:
    """``prompt``, ``chosen`` and ``rejected`` (TRL's preference layout, as in UltraFeedback):
    the prompt is text or a list of ``{role, content}`` messages, each answer text or a list
    of messages. When ``chosen`` and ``rejected`` are whole conversations (they start with a
    prompt message, as in UltraFeedback, with or without ``prompt``), the prompt is the
    messages they share. Optional ``system``."""

    name = "preference"
    kind: Kind = "preference"
    detectable = True
    signature = ("prompt", "chosen", "rejected")

    def matches(self, row: Mapping[str, Any]) -> bool:
        return _is_pair(row) and "conversations" not in row

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        chosen = _answer(row.get("chosen"), "chosen")
        rejected = _answer(row.get("rejected"), "rejected")
        prompt_value = row.get("prompt")
        whole = chosen[0].role != "assistant" and rejected[0].role != "assistant"
        if prompt_value is None or whole:
            # The implicit prompt: what the two conversations share before they part.
            shared = 0
            while (
                shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]
            ):
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
            if not prompt:
                raise RowProblem(
                    "no prompt: give 'prompt', or whole conversations that share it", key="prompt"
                )
        elif isinstance(prompt_value, str):
            if not prompt_value.strip():
                raise RowProblem("the field is empty", key="prompt")
            prompt = [Message("user", prompt_value)]
        else:
            prompt = openai_messages(prompt_value, "prompt")
        if (system := _text(row, "system", required=False)) and not (
            prompt and prompt[0].role == "system"
        ):
            prompt = [Message("system", system), *prompt]
        return _pair(prompt, chosen, rejected)


class ShareGptPreferenceFormat:
    """``conversations`` (``{from, value}`` turns: the prompt) with ``chosen`` and ``rejected``
    answers, each one ``{from, value}`` turn (LLaMA-Factory's ranking layout) or a list of
    them; optional ``system`` and ``tools``."""

    name = "sharegpt_preference"
    kind: Kind = "preference"
    detectable = True
    signature = ("conversations", "chosen", "rejected")

    def matches(self, row: Mapping[str, Any]) -> bool:
        return isinstance(row.get("conversations"), list) and _is_pair(row)

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        sharegpt = ShareGptFormat()
        prompt = sharegpt.to_conversation({**row, "chosen": None, "rejected": None})
        answers = []
        for side in ("chosen", "rejected"):
            value = row.get(side)
            turns = value if isinstance(value, list) else [value]
            if value is None:
                raise RowProblem("the field is missing", key=side)
            messages: list[Message] = []
            for index, turn in enumerate(turns):
                messages += sharegpt.turn(turn, side if len(turns) == 1 else f"{side}[{index}]")
            answers.append(messages)
        return _pair(prompt.messages, *answers, tools=prompt.tools)


class OpenAiPreferenceFormat:
    """OpenAI's preference fine-tuning layout: ``input`` (``{"messages": [...], "tools":
    [...]}``), ``preferred_output`` and ``non_preferred_output`` (each a list of assistant
    messages)."""

    name = "openai_preference"
    kind: Kind = "preference"
    detectable = True
    signature = ("input", "preferred_output", "non_preferred_output")

    def matches(self, row: Mapping[str, Any]) -> bool:
        return "input" in row and "preferred_output" in row and "non_preferred_output" in row

    def to_conversation(self, row: Mapping[str, Any]) -> Conversation:
        given = row.get("input")
        if not isinstance(given, dict):
            found = "nothing" if given is None else type(given).__name__
            raise RowProblem(f"expected an object with 'messages', found {found}", key="input")
        prompt = openai_messages(given.get("messages"), "input.messages")
        return _pair(
            prompt,
            _answer(row.get("preferred_output"), "preferred_output"),
            _answer(row.get("non_preferred_output"), "non_preferred_output"),
            tools=_json_list(given.get("tools"), "input.tools"),
        )
