"""Chat templates: a conversation rendered to text, with the character spans to train on.

Templates are Jinja, rendered the way transformers renders ``chat_template`` (a sandboxed
environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``strftime_now``,
``tojson``, and ``{% generation %}`` blocks). Sources: the tokenizer's own template, the
built-ins ``alpaca``, ``chatml``, ``llama3`` and ``mistral``, plugins of the ``ft.templates``
entry point group, or a ``.jinja`` file.

Assistant spans: a template with ``{% generation %}`` blocks says where they are. For one
without (most models' templates), each assistant turn is found by rendering the conversation
up to it: the text of ``messages[:i+1]`` ends after turn ``i``'s end-of-turn token, and the
turn starts where that text and the same text with the answer swapped for a probe part ways.
Where a template does not render prefixes consistently, the turn's content is searched for
in the text instead, followed by an end-of-turn token if one is there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ft_data.conversation import Conversation
from ft_data.errors import DataError, RowProblem
from ft_data.registry import TEMPLATES_GROUP, discover

Span = tuple[int, int]
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# End-of-turn tokens of common templates, tried after the eos token when searching for a turn.
_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>")


@dataclass(frozen=True)
class ChatTemplate:
    """A named Jinja chat template. ``sha256`` identifies its text in caches."""

    name: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def render(
        self,
        conversation: Conversation,
        special_tokens: Mapping[str, str] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """The conversation as text, as ``apply_chat_template(tokenize=False)`` would give it."""
        return self._render(
            _messages(conversation), conversation.tools, special_tokens or {}, add_generation_prompt
        )

    def render_with_spans(
        self, conversation: Conversation, special_tokens: Mapping[str, str] | None = None
    ) -> tuple[str, list[Span]]:
        """The text and the ``[start, end)`` character spans of every assistant turn, each
        including the end-of-turn (or eos) token that closes it, excluding whitespace after it.

        Raises :class:`RowProblem` when an assistant turn's text cannot be found.
        """
        special = special_tokens or {}
        messages, tools = _messages(conversation), conversation.tools
        if GENERATION_TAG.search(self.source):
            return self._render_tracked(messages, tools, special)
        text = self._render(messages, tools, special, False)
        spans: list[Span] = []
        cursor = 0
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            span = self._prefix_span(text, messages, index, tools, special)
            if span is None or span[0] < cursor:
                span = _search_span(text, message["content"], cursor, special)
            if span is None:
                raise RowProblem(
                    f"template {self.name!r} does not reproduce assistant message {index} verbatim, so what to train on is unknown",
                    key=f"messages[{index}]",
                )
            spans.append(span)
            cursor = span[1]
        return text, spans

    def _prefix_span(
        self,
        text: str,
        messages: list[dict[str, Any]],
        index: int,
        tools: Any,
        special: Mapping[str, str],
    ) -> Span | None:
        # The turn ends where the text of messages[:index + 1] ends; it starts where that text
        # and the same with the answer swapped for a probe character part ways, which skips any
        # role header, whether or not the template has a generation prompt.
        # Without its reasoning, so that reasoning written before the answer (and the tags the
        # template puts around it) is trained as part of the turn.
        answer = {k: v for k, v in messages[index].items() if k != "reasoning_content"}
        probe = [*messages[:index], {**answer, "content": "\x01"}]
        try:
            through = self._render(messages[: index + 1], tools, special, False).rstrip()
            probed = self._render(probe, tools, special, False)
        except RowProblem:
            return None  # e.g. a template that insists on a user message last
        start = _common_prefix(through, probed)
        if start < len(through) and text.startswith(through):
            return start, len(through)
        return None

    def _render(
        self,
        messages: list[dict[str, Any]],
        tools: Any,
        special: Mapping[str, str],
        add_generation_prompt: bool,
    ) -> str:
        try:
            return compile_template(self.source).render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                **special,
            )
        except jinja2.TemplateError as error:
            raise RowProblem(f"template {self.name!r} refused the conversation: {error}") from None

    def _render_tracked(
        self, messages: list[dict[str, Any]], tools: Any, special: Mapping[str, str]
    ) -> tuple[str, list[Span]]:
        compiled = compile_template(self.source)
        blocks: list[str] = []
        spans: list[Span] = []
        try:
            with compiled.environment.activate_tracker(blocks, spans):  # type: ignore[attr-defined]
                for block in compiled.generate(
                    messages=messages, tools=tools, add_generation_prompt=False, **special
                ):
                    blocks.append(block)
        except jinja2.TemplateError as error:
            raise RowProblem(f"template {self.name!r} refused the conversation: {error}") from None
        text = "".join(blocks)
        return text, [(start, start + len(text[start:end].rstrip())) for start, end in spans]


def _messages(conversation: Conversation) -> list[dict[str, Any]]:
    return [message.to_dict() for message in conversation.messages]


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix (a binary search over C-speed comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _search_span(text: str, content: str, cursor: int, special: Mapping[str, str]) -> Span | None:
    start = text.find(content, cursor) if content else -1
    if start < 0:
        return None
    end = start + len(content)
    markers = [special["eos_token"]] if special.get("eos_token") else []
    for marker in [*markers, *_END_MARKERS]:
        if text.startswith(marker, end):
            return start, end + len(marker)
    return start, end


# The Jinja environment, as transformers sets it up -------------------------------------------


class _GenerationTracker(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: records the character span of each block."""

    tags = {"generation"}  # noqa: RUF012 (jinja's API)

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        environment.extend(activate_tracker=self.activate_tracker)
        self._tracking: ContextVar[tuple[list[str], list[Span]] | None] = ContextVar(
            "ft_generation", default=None
        )

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body).set_lineno(
            lineno
        )

    def _generation(self, caller: Any) -> str:
        text: str = caller()
        if (tracking := self._tracking.get()) is not None:
            blocks, spans = tracking
            start = sum(len(block) for block in blocks)
            spans.append((start, start + len(text)))
        return text

    @contextmanager
    def activate_tracker(self, blocks: list[str], spans: list[Span]) -> Iterator[None]:
        token = self._tracking.set((blocks, spans))
        try:
            yield
        finally:
            self._tracking.reset(token)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTracker, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        return environment.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise DataError(
            f"the chat template does not parse: {error.message}", line=error.lineno
        ) from None


# Finding a template ---------------------------------------------------------------------------


def available_templates() -> list[str]:
    """The names of every registered template, sorted."""
    return sorted(discover(TEMPLATES_GROUP))


def get_template(
    name: str | Path | None = None, *, tokenizer_template: str | None = None
) -> ChatTemplate:
    """The template to render with.

    ``None`` or ``"tokenizer"``: the tokenizer's own ``chat_template`` (pass it as
    ``tokenizer_template``); a registered name (``chatml``, ...); or the path of a Jinja file.
    Raises :class:`DataError` saying which templates exist when none fits.
    """
    names = available_templates()
    if name is None or name == "tokenizer":
        if not tokenizer_template:
            raise DataError(
                "the tokenizer has no chat_template",
                key="template",
                hint=f"choose a template: {', '.join(names)}, or a .jinja file",
            )
        compile_template(tokenizer_template)
        return ChatTemplate("tokenizer", tokenizer_template)
    factories = discover(TEMPLATES_GROUP)
    if str(name) in factories:
        template = factories[str(name)]()
        compile_template(template.source)
        return template  # type: ignore[no-any-return]
    path = Path(name)
    if path.is_file():
        source = path.read_text(encoding="utf-8")
        try:
            compile_template(source)
        except DataError as error:
            raise DataError(error.what, file=path, line=error.line) from None
        return ChatTemplate(path.name, source)
    raise DataError(
        f"unknown chat template {str(name)!r}",
        key="template",
        hint=f"templates: tokenizer, {', '.join(names)}, or the path of a .jinja file",
    )
