"""Messages as users write them: content as a list of parts (OpenAI's `text`, the `value`
variant), media parts left out with that reason, per-message `weight`/`loss_weight` in the
loss mask, and reasoning kept where the chat template writes it, reported where it does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ft_data import PrepareOptions, explain_rows, get_format, prepare_dataset
from ft_data.errors import RowProblem

# A Qwen3-style template: an assistant's reasoning_content in <think> tags before its answer.
THINKING_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and message.reasoning_content %}"
    "{{ '<think>\n' + message.reasoning_content + '\n</think>\n\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}"
)


def _chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"messages": list(messages)}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _trained(source: Path, tokenizer_dir: Path, **options: Any) -> list[str]:
    """The trained text of each row, as `ft dataset inspect` shows it."""
    rows = explain_rows(source, tokenizer_dir, PrepareOptions(max_length=None, **options), 9).rows
    return ["|".join(row.text[a:b] for a, b in row.trained_spans) for row in rows]


def test_text_parts_read_in_both_spellings() -> None:
    openai = get_format("openai")
    plain = openai.to_conversation(
        _chat({"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"})
    )
    for parts in (
        [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
        [{"type": "text", "value": "Hi "}, {"type": "text", "value": "there"}],
        [{"type": "input_text", "text": "Hi "}, "there"],
        {"type": "text", "value": "Hi there"},
    ):
        row = _chat({"role": "user", "content": parts}, {"role": "assistant", "content": "Hello"})
        assert openai.to_conversation(row) == plain


@pytest.mark.parametrize(
    ("part", "key", "message"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "..."}},
            "messages[0].content[1].type",
            "audio part (type 'input_audio'): ft trains on text only, so the row is left out",
        ),
        (
            {"type": "table", "rows": []},
            "messages[0].content[1].type",
            "a part with type 'table': the parts ft reads are text ({'type': 'text', 'text' or "
            "'value': ...}) and reasoning or thinking",
        ),
        (
            {"type": "text", "body": "Hi"},
            "messages[0].content[1]",
            "the 'text' part has no text: expected 'text' or 'value' or 'content', found keys "
            "['body', 'type']",
        ),
        (
            {"type": "text", "text": 7},
            "messages[0].content[1].text",
            "the 'text' part's 'text' is int, expected text",
        ),
        (
            3,
            "messages[0].content[1]",
            "expected a part such as {'type': 'text', 'text': ...}, found int",
        ),
    ],
)
def test_row_errors_name_what_they_found(part: Any, key: str, message: str) -> None:
    row = _chat(
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, part]},
        {"role": "assistant", "content": "Nice."},
    )
    with pytest.raises(RowProblem) as raised:
        get_format("openai").to_conversation(row)
    assert (raised.value.key, raised.value.what) == (key, message)


def test_media_rows_are_left_out_with_that_reason(tokenizer_dir: Path, tmp_path: Path) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    rows = [
        _chat({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}),
        _chat(
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]},
            {"role": "assistant", "content": "A cat."},
        ),
    ]
    source = _write(tmp_path / "chat.jsonl", rows)
    report = prepare_dataset(source, tokenizer_dir, tmp_path / "chat.h5").report
    assert (report.examples, report.counts) == (1, {"media": 1})
    [issue] = report.issues
    assert (issue.kind, issue.row, issue.reason) == (
        "media",
        2,
        "key 'messages[0].content[1].type': an image part (type 'image_url'): ft trains on "
        "text only, so the row is left out",
    )


def test_weight_and_loss_weight_leave_turns_out_of_the_loss(
    tokenizer_dir: Path, tmp_path: Path
) -> None:
    def turns(flag: str, first: Any, second: Any) -> dict[str, Any]:
        first_answer = {"role": "assistant", "content": "One.", flag: first}
        second_answer = {"role": "assistant", "content": "Two.", flag: second}
        return _chat(
            {"role": "user", "content": "First?"},
            first_answer,
            {"role": "user", "content": "Second?"},
            second_answer,
        )

    rows = [
        turns("weight", 0, 1),
        turns("loss_weight", 1, 0.0),
        turns("weight", True, None),
        # The sharegpt spelling.
        {
            "conversations": [
                {"from": "human", "value": "First?"},
                {"from": "gpt", "value": "One.", "weight": 0},
                {"from": "human", "value": "Second?"},
                {"from": "gpt", "value": "Two."},
            ]
        },
    ]
    openai = _write(tmp_path / "openai.jsonl", rows[:3])
    assert _trained(openai, tokenizer_dir) == [
        "Two.<|im_end|>",
        "One.<|im_end|>",
        "One.<|im_end|>|Two.<|im_end|>",
    ]
    sharegpt = _write(tmp_path / "sharegpt.jsonl", rows[3:])
    assert _trained(sharegpt, tokenizer_dir) == ["Two.<|im_end|>"]
    with pytest.raises(RowProblem) as raised:
        get_format("openai").to_conversation(turns("weight", 0.5, 1))
    assert (raised.value.key, raised.value.what) == (
        "messages[1].weight",
        "expected 0 (do not train on this message) or 1 (train on it), found 0.5",
    )
    # Nothing left to train on: left out as such.
    nothing = _write(tmp_path / "nothing.jsonl", [turns("weight", 0, 0), rows[0]])
    report = prepare_dataset(nothing, tokenizer_dir, tmp_path / "n.h5").report
    assert (report.examples, report.counts) == (1, {"no_trained_tokens": 1})


def test_reasoning_kept_where_the_template_writes_it(tokenizer_dir: Path, tmp_path: Path) -> None:
    rows = [
        _chat(
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4.", "reasoning_content": "Two and two."},
        ),
        _chat(
            {"role": "user", "content": "3 + 3?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Three and three."},
                    {"type": "text", "text": "6."},
                ],
            },
        ),
    ]
    source = _write(tmp_path / "thinking.jsonl", rows)
    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE, encoding="utf-8")
    assert _trained(source, tokenizer_dir, template=str(template)) == [
        "<think>\nTwo and two.\n</think>\n\n4.<|im_end|>",
        "<think>\nThree and three.\n</think>\n\n6.<|im_end|>",
    ]
    kept = prepare_dataset(
        source, tokenizer_dir, tmp_path / "k.h5", PrepareOptions(template=str(template))
    )
    assert kept.report.counts == {}
    # The tokenizer's ChatML template has no place for reasoning: kept without it, reported.
    report = prepare_dataset(source, tokenizer_dir, tmp_path / "r.h5").report
    assert (report.examples, report.left_out) == (2, 0)
    assert report.counts == {"reasoning_not_rendered": 2}
    assert report.issues[0].reason == (
        "the chat template does not write the reasoning of 1 assistant message(s): kept without it"
    )
    assert _trained(source, tokenizer_dir) == ["4.<|im_end|>", "6.<|im_end|>"]
