"""Rendering by shape: the same text and spans as rendering every conversation the slow way."""

from __future__ import annotations

import pytest

from ft_data.conversation import Conversation, Message
from ft_data.template_batch import _renderer, content_is_opaque, render_batch
from ft_data.templates import ChatTemplate, get_template

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def conversations(alpaca_rows: list[dict[str, str]]) -> list[Conversation]:
    """Real Alpaca rows as one-, two- and three-turn chats, some with a system message and
    contents with whitespace around them (which span ends must trim as the slow path does)."""
    chats = []
    for index in range(0, 240, 3):
        rows = alpaca_rows[index : index + 1 + index // 3 % 3]
        messages = [Message("system", "Answer briefly.")] if index // 3 % 2 else []
        for number, row in enumerate(rows):
            answer = row["output"] + ("  \n" if number % 2 else "")
            messages += [Message("user", " " + row["instruction"]), Message("assistant", answer)]
        chats.append(Conversation(messages))
    return chats


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "llama3", "alpaca", "mistral"])
def test_same_text_and_spans_as_the_slow_path(
    name: str, alpaca_rows: list[dict[str, str]], marked_template: str
) -> None:
    template = (
        ChatTemplate(
            "tokenizer",
            marked_template.replace("{% generation %}", "").replace("{% endgeneration %}", ""),
        )
        if name == "tokenizer"
        else get_template(name)
    )
    chats = conversations(alpaca_rows)
    slow = [template.render_with_spans(chat, SPECIAL) for chat in chats]
    assert render_batch(template, chats, SPECIAL) == slow
    shapes = _renderer(template, tuple(sorted(SPECIAL.items()))).skeletons
    if name == "mistral":  # it keeps the system message in a variable: never by shape
        assert not content_is_opaque(template.source) and shapes == {}
    else:
        assert content_is_opaque(template.source)
        assert len(shapes) == 6 and all(shapes.values())  # 3 lengths, with or without system


def test_templates_that_look_inside_contents_are_rendered_the_slow_way() -> None:
    looks_inside = [
        "{% for m in messages %}{{ m.content | trim }}{% endfor %}",
        "{% for m in messages %}{% if m.content %}{{ m.content }}{% endif %}{% endfor %}",
        "{% for m in messages %}{% set c = m['content'] %}{{ c }}{% endfor %}",
        "{% for m in messages %}{{ m.content.upper() }}{% endfor %}",
        "{% for m in messages %}{% filter upper %}{{ m.content }}{% endfilter %}{% endfor %}",
    ]
    for source in looks_inside:
        assert not content_is_opaque(source), source
    assert content_is_opaque("{% for m in messages %}{{ '<' ~ m['content'] + '>' }}{% endfor %}")


def test_a_template_that_escapes_contents_falls_back() -> None:
    # tojson of the whole message escapes the placeholder: the shape cannot be cut, so every
    # row renders the slow way and still comes out right.
    template = ChatTemplate(
        "json",
        "{% for m in messages %}{{ m | tojson }}{% if m.role == 'assistant' %}{% generation %}"
        "{{ m.content + '</s>' }}{% endgeneration %}{% endif %}{% endfor %}",
    )
    chat = Conversation([Message("user", "Hi"), Message("assistant", "Hello")])
    other = Conversation([Message("user", "Yo"), Message("assistant", "Hey")])
    assert render_batch(template, [chat, other]) == [
        template.render_with_spans(chat),
        template.render_with_spans(other),
    ]
    assert list(_renderer(template, ()).skeletons.values()) == [None]
