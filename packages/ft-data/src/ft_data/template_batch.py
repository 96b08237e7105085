"""Rendering many conversations with a chat template at the cost of one render per shape.

Rendering a conversation and finding its assistant spans costs three Jinja renders per
assistant turn for a template without ``{% generation %}`` blocks (see
:mod:`ft_data.templates`): at a million rows, more than the tokenizer. Yet most templates
treat message contents as opaque text: they write ``message['content']`` into the output and
never look inside it. For those, a conversation renders as its *skeleton* (the same
conversation with each content replaced by a unique placeholder) with the placeholders
swapped back for the contents, and the spans move with them. So :func:`render_batch`
renders one skeleton per *shape* (the roles and names of the messages) and fills it in for
every conversation of that shape.

When is that exact? A template qualifies when every ``content`` it reads goes straight into
the output (only ``+``/``~`` between the read and ``{{ }}``: no filter, test, comparison,
method call, assignment or ``{% set %}`` block), and each placeholder comes out exactly once
and unescaped. A conversation qualifies when it has no tools or tool calls and no NUL or
\\x01 characters in its contents (the placeholder and probe characters), and no reasoning. The first
conversation of each shape is also rendered the slow way and must agree, or the shape is
rendered the slow way from then on. Everything else takes the slow path, unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import jinja2.nodes

from ft_data.conversation import Conversation
from ft_data.errors import RowProblem
from ft_data.templates import GENERATION_TAG, ChatTemplate, Span, compile_template

_PLACEHOLDER = "\x00ft{}\x00"
_PLACEHOLDERS = re.compile("\x00ft([0-9]+)\x00")
_MAX_SHAPES = 4096  # skeletons kept per template; cleared when full (long chats vary a lot)
_PASSTHROUGH = (jinja2.nodes.Add, jinja2.nodes.Concat)

Shape = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class _Skeleton:
    """A shape's rendered text cut at its placeholders: ``pieces[i]`` is the literal text before
    the content of message ``order[i]``; ``pieces[-1]`` follows the last. ``spans`` are the
    assistant spans as (piece index, offset) pairs: ``offset`` characters into ``pieces[i]``,
    or, with offset -1, at the end of content ``i - 1`` (trailing whitespace trimmed)."""

    pieces: tuple[str, ...]
    order: tuple[int, ...]
    spans: tuple[tuple[tuple[int, int], tuple[int, int]], ...]

    def fill(self, conversation: Conversation) -> tuple[str, list[Span]]:
        contents = [conversation.messages[index].content for index in self.order]
        starts = [0]  # where each piece starts in the text
        for piece, content in zip(self.pieces, contents, strict=False):
            starts.append(starts[-1] + len(piece) + len(content))
        text = "".join(
            part
            for piece, content in zip(self.pieces, [*contents, ""], strict=True)
            for part in (piece, content)
        )

        def position(at: tuple[int, int]) -> int:
            piece, offset = at
            if offset >= 0:
                return starts[piece] + offset
            # The end of content piece - 1, trimmed as render_with_spans trims span ends.
            return len(text[: starts[piece]].rstrip())

        spans = []
        for start, end in self.spans:
            first = position(start)
            spans.append((first, max(first, position(end))))
        return text, spans


@functools.lru_cache(maxsize=32)
def content_is_opaque(source: str) -> bool:
    """Whether the template only ever writes message contents into its output, unchanged
    (see the module's docstring)."""
    tree = compile_template(source).environment.parse(source)
    return all(_passes_through(path) for path in _content_reads(tree, []))


def _content_reads(node: jinja2.nodes.Node, path: list[jinja2.nodes.Node]) -> Iterator[list]:
    """The ancestor path (outermost first, the read last) of every read of ``content``."""
    path = [*path, node]
    if _reads_content(node):
        yield path
    for child in node.iter_child_nodes():
        yield from _content_reads(child, path)


def _reads_content(node: jinja2.nodes.Node) -> bool:
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr == "content"
    if isinstance(node, jinja2.nodes.Getitem):
        return isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == "content"
    return False


def _passes_through(path: list[jinja2.nodes.Node]) -> bool:
    # From the read upwards: only + or ~ until an Output, and no block above that Output
    # that captures or filters what it writes.
    index = len(path) - 2
    while index >= 0 and isinstance(path[index], _PASSTHROUGH):
        index -= 1
    if index < 0 or not isinstance(path[index], jinja2.nodes.Output):
        return False
    for ancestor in path[:index]:
        if isinstance(ancestor, jinja2.nodes.AssignBlock | jinja2.nodes.FilterBlock):
            return False
        if isinstance(ancestor, jinja2.nodes.Macro):
            return False
        if isinstance(ancestor, jinja2.nodes.CallBlock) and not _is_generation(ancestor):
            return False
    return True


def _is_generation(block: jinja2.nodes.CallBlock) -> bool:
    call = block.call
    return isinstance(call, jinja2.nodes.Call) and getattr(call.node, "name", "") == "_generation"


def shape_of(conversation: Conversation) -> Shape | None:
    """The conversation's shape, or None when it must be rendered the slow way."""
    if conversation.tools:
        return None
    shape = []
    for message in conversation.messages:
        if (
            message.tool_calls
            or message.reasoning_content
            or "\x00" in message.content
            or "\x01" in message.content
        ):
            return None
        shape.append((message.role, message.name))
    return tuple(shape)


class BatchRenderer:
    """Renders conversations with one template and one set of special tokens, keeping the
    skeleton of each shape seen (None for a shape that must be rendered the slow way)."""

    def __init__(self, template: ChatTemplate, special_tokens: Mapping[str, str]) -> None:
        self.template = template
        self.special_tokens = dict(special_tokens)
        self.opaque = content_is_opaque(template.source)
        self.skeletons: dict[Shape, _Skeleton | None] = {}

    def render(self, conversation: Conversation) -> tuple[str, list[Span]]:
        """What ``template.render_with_spans(conversation, special_tokens)`` returns."""
        shape = shape_of(conversation) if self.opaque else None
        if shape is None:
            return self.template.render_with_spans(conversation, self.special_tokens)
        if shape not in self.skeletons:
            if len(self.skeletons) >= _MAX_SHAPES:
                self.skeletons.clear()
            slow = self.template.render_with_spans(conversation, self.special_tokens)
            skeleton = self._skeleton(conversation)
            self.skeletons[shape] = (
                skeleton if skeleton and skeleton.fill(conversation) == slow else None
            )
            return slow
        skeleton = self.skeletons[shape]
        if skeleton is None:
            return self.template.render_with_spans(conversation, self.special_tokens)
        return skeleton.fill(conversation)

    def _skeleton(self, conversation: Conversation) -> _Skeleton | None:
        messages = [
            replace(message, content=_PLACEHOLDER.format(index))
            for index, message in enumerate(conversation.messages)
        ]
        skeleton = Conversation(messages, label=conversation.label)
        try:
            if GENERATION_TAG.search(self.template.source):
                text, spans = self.template.render_with_spans(skeleton, self.special_tokens)
            else:
                text, spans = self._prefix_spans(skeleton)
        except RowProblem:
            return None
        return skeleton_from(text, spans, len(messages))

    def _prefix_spans(self, conversation: Conversation) -> tuple[str, list[Span]]:
        # render_with_spans without its fallback of searching for the content: on a skeleton
        # that search finds the placeholder, where on real rows it could find an earlier copy
        # of the same words.
        template, special = self.template, self.special_tokens
        messages = [message.to_dict() for message in conversation.messages]
        text = template._render(messages, None, special, False)
        spans: list[Span] = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            span = template._prefix_span(text, messages, index, None, special)
            if span is None or (spans and span[0] < spans[-1][1]):
                raise RowProblem("no prefix span")
            spans.append(span)
        return text, spans


def skeleton_from(text: str, spans: Sequence[Span], count: int) -> _Skeleton | None:
    """Cut a rendered skeleton at its placeholders; None unless each of the ``count``
    placeholders appears exactly once and every span edge is outside them."""
    found = list(_PLACEHOLDERS.finditer(text))
    order = tuple(int(match.group(1)) for match in found)
    if sorted(order) != list(range(count)):
        return None
    pieces, cursor = [], 0
    for match in found:
        pieces.append(text[cursor : match.start()])
        cursor = match.end()
    pieces.append(text[cursor:])
    bounds = [(match.start(), match.end()) for match in found]

    def locate(position: int, is_end: bool) -> tuple[int, int] | None:
        # The piece that holds `position`, and the offset into it.
        start_of_piece = 0
        for index, (low, high) in enumerate(bounds):
            if position < low:
                return index, position - start_of_piece
            if position == low:
                return index, position - start_of_piece
            if low < position < high:
                return None  # inside a placeholder: contents are not opaque here
            if position == high and is_end:
                return index + 1, -1
            start_of_piece = high
        return len(bounds), position - start_of_piece

    located = []
    for start, end in spans:
        first, last = locate(start, False), locate(end, True)
        if first is None or last is None:
            return None
        located.append((first, last))
    return _Skeleton(tuple(pieces), order, tuple(located))


def render_batch(
    template: ChatTemplate,
    conversations: Sequence[Conversation],
    special_tokens: Mapping[str, str] | None = None,
) -> list[tuple[str, list[Span]]]:
    """``template.render_with_spans`` of each conversation, through the skeleton of its shape
    where that is exact (see the module's docstring). Raises :class:`RowProblem` as
    ``render_with_spans`` does."""
    renderer = _renderer(template, tuple(sorted((special_tokens or {}).items())))
    return [renderer.render(conversation) for conversation in conversations]


@functools.lru_cache(maxsize=8)
def _renderer(template: ChatTemplate, special: tuple[tuple[str, str], ...]) -> BatchRenderer:
    return BatchRenderer(template, dict(special))
