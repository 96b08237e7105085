"""The one internal form every dataset format becomes: a conversation of messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ft_data.errors import RowProblem

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One turn. ``tool_calls`` follows OpenAI's shape:
    ``[{"type": "function", "function": {"name": ..., "arguments": {...}}}]``.

    ``reasoning_content`` is an assistant's reasoning (thinking) before its answer, passed to
    the chat template under that name (the one Qwen3's and DeepSeek's templates read).
    ``weight`` is the row's per-message training flag (OpenAI's ``weight``, or
    ``loss_weight``): 0 leaves an assistant turn out of the loss; None or 1 trains it.
    """

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    weight: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it (keys left out when unset)."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = self.tool_calls
        if self.name is not None:
            data["name"] = self.name
        if self.reasoning_content:
            data["reasoning_content"] = self.reasoning_content
        return data


@dataclass(frozen=True)
class Conversation:
    """Messages in order, the tools (JSON schemas) the assistant may call, and an optional label
    carried over from the row (e.g. a category, or a KTO-style good/bad mark).

    Raw text for continued pretraining is a conversation of one ``assistant`` message whose
    format has ``kind == "text"``; such conversations are tokenized without a chat template.

    A preference pair (format kind ``preference``) is ``messages``, the prompt followed by the
    chosen answer, and ``rejected``, the same prompt followed by the rejected answer; only the
    answers are trained (assistant turns of the prompt carry ``weight`` 0).
    """

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    label: str | None = None
    rejected: list[Message] | None = None

    @property
    def rejected_conversation(self) -> Conversation | None:
        """The prompt with the rejected answer, as a conversation of its own."""
        if self.rejected is None:
            return None
        return Conversation(self.rejected, tools=self.tools, label=self.label)

    @property
    def text(self) -> str:
        """All message contents joined by blank lines (the raw text of a text row)."""
        return "\n\n".join(message.content for message in self.messages)


def check_conversation(conversation: Conversation) -> None:
    """Raise :class:`RowProblem` unless the conversation can be trained on.

    It needs at least one message, known roles, a system message only first, non-empty
    content (an assistant message may instead carry tool calls), and an assistant message.
    """
    messages = conversation.messages
    if not messages:
        raise RowProblem("the conversation has no messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role not in ROLES:
            raise RowProblem(
                f"unknown role {message.role!r}; roles are {', '.join(ROLES)}", key=f"{where}.role"
            )
        if message.role == "system" and index != 0:
            raise RowProblem("a system message may only come first", key=f"{where}.role")
        if not isinstance(message.content, str):
            raise RowProblem(
                f"content must be text, not {type(message.content).__name__}",
                key=f"{where}.content",
            )
        if not message.content.strip() and not (message.role == "assistant" and message.tool_calls):
            raise RowProblem(f"the {message.role} message is empty", key=f"{where}.content")
    if not any(message.role == "assistant" for message in messages):
        raise RowProblem("the conversation has no assistant message to train on")
    if conversation.rejected is not None:
        check_conversation(Conversation(conversation.rejected, tools=conversation.tools))
