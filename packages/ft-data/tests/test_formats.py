"""Every format, built from the real Alpaca rows, and detection with its reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ft_data import registry
from ft_data.conversation import Conversation, Message, check_conversation
from ft_data.errors import DataError, RowProblem
from ft_data.formats import available_formats, detect_format, get_format
from ft_data.readers import read_rows


def sharegpt(row: dict[str, str]) -> dict[str, Any]:
    prompt = "\n".join(part for part in (row["instruction"], row["input"]) if part)
    return {
        "conversations": [
            {"from": "human", "value": prompt},
            {"from": "gpt", "value": row["output"]},
        ]
    }


def openai(row: dict[str, str]) -> dict[str, Any]:
    prompt = "\n".join(part for part in (row["instruction"], row["input"]) if part)
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": prompt}]},
            {"role": "assistant", "content": row["output"]},
        ]
    }


def prompt_completion(row: dict[str, str]) -> dict[str, Any]:
    return {
        "prompt": "\n".join(part for part in (row["instruction"], row["input"]) if part),
        "completion": row["output"],
    }


@pytest.mark.parametrize(
    ("build", "name", "keys"),
    [
        (lambda row: row, "alpaca", "'instruction'/'output'"),
        (sharegpt, "sharegpt", "'conversations'/'from'/'value'"),
        (openai, "openai", "'messages'/'role'/'content'"),
        (prompt_completion, "prompt_completion", "'prompt'/'completion'"),
    ],
)
def test_every_chat_format_gives_the_same_conversations(
    build: Any, name: str, keys: str, alpaca_rows: list[dict]
) -> None:
    rows = [build(row) for row in alpaca_rows]
    detection = detect_format(rows)
    assert detection.reason == f"detected: {name} (keys {keys} in 999/999 rows)"
    conversations = [detection.format.to_conversation(row) for row in rows]
    expected = [get_format("alpaca").to_conversation(row) for row in alpaca_rows]
    assert conversations == expected
    for conversation in conversations:
        check_conversation(conversation)


def test_detection_samples_the_first_rows_and_tolerates_a_few_bad_ones(
    alpaca_rows: list[dict],
) -> None:
    rows = [sharegpt(row) for row in alpaca_rows] + [{"text": "a row the sample sees"}]
    assert (
        detect_format(rows, sample=999).reason
        == "detected: sharegpt (keys 'conversations'/'from'/'value' in 999/999 rows)"
    )
    assert (
        detect_format(rows, sample=1000).reason
        == "detected: sharegpt (keys 'conversations'/'from'/'value' in 999/1000 rows)"
    )
    with pytest.raises(
        DataError,
        match=r"no format fits 100% of the first 1000 rows \(closest: sharegpt \(keys 'conversations'/'from'/'value' in 999/1000 rows\)",
    ):
        detect_format(rows, sample=1000, min_share=1.0)


def test_text_datasets_are_detected(datasets: Path) -> None:
    detection = detect_format(row for _, row in read_rows(datasets / "c4_demo.jsonl"))
    assert detection.reason == "detected: text (keys 'text' in 300/300 rows)"
    assert detection.format.kind == "text"
    wikisql = detect_format(row for _, row in read_rows(datasets / "wikisql"))
    assert wikisql.reason == "detected: text (keys 'text' in 1000/1000 rows)"


def test_unknown_and_ambiguous_data_list_keys_and_formats(alpaca_rows: list[dict]) -> None:
    names = (
        "alpaca, columns, openai, openai_preference, preference, prompt_completion, sharegpt, "
        "sharegpt_preference, text"
    )
    with pytest.raises(DataError) as caught:
        detect_format(
            [{"question": row["instruction"], "answer": row["output"]} for row in alpaca_rows]
        )
    message = str(caught.value)
    assert "no format fits 90% of the first 999 rows" in message
    assert "'answer' (999), 'question' (999)" in message and f"formats: {names}" in message
    with pytest.raises(DataError) as caught:
        detect_format([{**prompt_completion(row), "text": row["output"]} for row in alpaca_rows])
    message = str(caught.value)
    assert (
        "several formats fit: prompt_completion (keys 'prompt'/'completion' in 999/999 rows), "
        "text (keys 'text' in 999/999 rows)" in message
    )
    assert f"formats: {names}" in message
    mixed = [*alpaca_rows[:8], {"text": "x"}, {"text": "y"}]
    with pytest.raises(
        DataError, match=r"closest: alpaca \(keys 'instruction'/'output' in 8/10 rows\)"
    ):
        detect_format(mixed)


def test_alpaca_input_system_history() -> None:
    row = {
        "instruction": "Add.",
        "input": "2 + 2",
        "output": "4",
        "system": "Be exact.",
        "history": [["1 + 1?", "2"]],
    }
    conversation = get_format("alpaca").to_conversation(row)
    assert conversation.messages == [
        Message("system", "Be exact."),
        Message("user", "1 + 1?"),
        Message("assistant", "2"),
        Message("user", "Add.\n2 + 2"),
        Message("assistant", "4"),
    ]
    with pytest.raises(RowProblem, match="key 'output': the field is missing"):
        get_format("alpaca").to_conversation({"instruction": "x"})


def test_sharegpt_roles_tools_and_function_calls() -> None:
    tools = [{"name": "add", "description": "Add numbers", "parameters": {"type": "object"}}]
    row = {
        "conversations": [
            {"from": "human", "value": "What is 2 + 2?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "add", "arguments": {"a": 2, "b": 2}}),
            },
            {"from": "observation", "value": "4"},
            {"from": "gpt", "value": "It is 4."},
        ],
        "system": "Use tools.",
        "tools": json.dumps(tools),  # LLaMA-Factory stores tools as a JSON string
    }
    conversation = get_format("sharegpt").to_conversation(row)
    assert [m.role for m in conversation.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert conversation.messages[2].tool_calls == [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    ]
    assert conversation.tools == tools
    check_conversation(conversation)
    with pytest.raises(RowProblem, match=r"key 'conversations\[0\]\.from': unknown speaker 'bot'"):
        get_format("sharegpt").to_conversation({"conversations": [{"from": "bot", "value": "x"}]})


def test_openai_parts_and_tool_calls() -> None:
    call = {"id": "1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    row = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "2", "name": "add"},
            {"role": "assistant", "content": "Done."},
        ]
    }
    conversation = get_format("openai").to_conversation(row)
    assert conversation.messages[0] == Message("user", "Hello there")
    assert conversation.messages[1] == Message("assistant", "", tool_calls=[call])
    assert conversation.messages[2] == Message("tool", "2", name="add")
    check_conversation(conversation)
    image = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ]
    }
    with pytest.raises(
        RowProblem,
        match=r"key 'messages\[0\]\.content\[0\]\.type': an image part \(type 'image_url'\): "
        "ft trains on text only, so the row is left out",
    ):
        get_format("openai").to_conversation(image)


def test_columns_mapping(alpaca_rows: list[dict]) -> None:
    fmt = get_format(
        "columns", columns={"prompt": "question", "response": "answer", "system": "sys"}
    )
    row = {
        "question": alpaca_rows[0]["instruction"],
        "answer": alpaca_rows[0]["output"],
        "sys": "Be kind.",
    }
    assert fmt.to_conversation(row).messages == [
        Message("system", "Be kind."),
        Message("user", alpaca_rows[0]["instruction"]),
        Message("assistant", alpaca_rows[0]["output"]),
    ]
    with pytest.raises(RowProblem, match="key 'answer': the field is missing"):
        fmt.to_conversation({"question": "q"})
    with pytest.raises(DataError, match="unknown roles"):
        get_format("columns", columns={"prompt": "q", "response": "a", "reply": "r"})
    with pytest.raises(DataError, match="unknown dataset format 'chatgpt'"):
        get_format("chatgpt")


def test_text_format_and_validation() -> None:
    assert get_format("text").to_conversation({"text": "Some text."}).text == "Some text."
    with pytest.raises(RowProblem, match="key 'text': the field is empty"):
        get_format("text").to_conversation({"text": "  "})
    with pytest.raises(
        RowProblem, match=r"key 'messages\[1\]\.content': the assistant message is empty"
    ):
        check_conversation(Conversation([Message("user", "q"), Message("assistant", "")]))
    with pytest.raises(RowProblem, match="no assistant message"):
        check_conversation(Conversation([Message("user", "q")]))
    with pytest.raises(
        RowProblem, match=r"key 'messages\[1\]\.role': a system message may only come first"
    ):
        check_conversation(
            Conversation([Message("user", "q"), Message("system", "s"), Message("assistant", "a")])
        )


PLUGIN = """
from ft_data.conversation import Conversation, Message


class ReverseFormat:
    \"\"\"A third-party format: the answer comes first.\"\"\"

    name = "reverse"
    kind = "chat"
    detectable = True
    signature = ("answer", "question")

    def matches(self, row):
        return "answer" in row and "question" in row

    def to_conversation(self, row):
        return Conversation([Message("user", row["question"]), Message("assistant", row["answer"])])
"""


def install_plugin(folder: Path, entry_points: str) -> None:
    """A distribution `reverse-format` on sys.path (a .dist-info folder) with `entry_points`."""
    (folder / "ft_reverse_plugin.py").write_text(PLUGIN, encoding="utf-8")
    dist_info = folder / "reverse_format-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: reverse-format\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist_info / "entry_points.txt").write_text(entry_points, encoding="utf-8")


def test_plugins_through_entry_points(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_plugin(
        tmp_path,
        "[ft.formats]\n"
        "reverse = ft_reverse_plugin:ReverseFormat\n"
        "broken = ft_data_no_such_module:Format\n"
        "alpaca = ft_reverse_plugin:ReverseFormat\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.use_plugins(True)
    with (
        pytest.warns(UserWarning, match="ft.formats plugin 'broken' .* failed to load"),
        pytest.warns(UserWarning, match="plugin 'alpaca' .*reverse-format.* ignored"),
    ):
        names = available_formats()
    assert names == [
        "alpaca",
        "columns",
        "openai",
        "openai_preference",
        "preference",
        "prompt_completion",
        "reverse",
        "sharegpt",
        "sharegpt_preference",
        "text",
    ]
    assert get_format("alpaca").name == "alpaca"  # ft's own keeps its name
    detection = detect_format([{"question": "q", "answer": "a"}])
    assert detection.reason == "detected: reverse (keys 'answer'/'question' in 1/1 rows)"
    registry.use_plugins(False)
    assert "reverse" not in available_formats()
    monkeypatch.setenv("FT_NO_PLUGINS", "1")
    registry.use_plugins(None)
    assert "reverse" not in available_formats()
