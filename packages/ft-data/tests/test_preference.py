"""Preference pairs in the layouts users have (prompt/chosen/rejected, as text or messages;
ShareGPT conversations with chosen/rejected turns; OpenAI's preference format): detected with
the reason, and prepared with both sides' tokens and masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ft_data import PreparedDataset, PrepareOptions, detect_format, prepare_dataset
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"

LAYOUTS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "preference": (
        "'prompt'/'chosen'/'rejected'",
        [
            {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
            {
                "prompt": [{"role": "user", "content": "Two plus two?"}],
                "chosen": [{"role": "assistant", "content": "Four."}],
                "rejected": [{"role": "assistant", "content": "Five."}],
            },
        ],
    ),
    # UltraFeedback-binarized: whole conversations, the prompt implicit, `messages` as well.
    "preference ": (
        "'prompt'/'chosen'/'rejected'",
        [
            {
                "chosen": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                ],
                "rejected": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Lyon."},
                ],
                "messages": [
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                ],
                "score_chosen": 9.0,
            },
            {
                "prompt": "Two plus two?",
                "chosen": [
                    {"role": "user", "content": "Two plus two?"},
                    {"role": "assistant", "content": "Four."},
                ],
                "rejected": [
                    {"role": "user", "content": "Two plus two?"},
                    {"role": "assistant", "content": "Five."},
                ],
            },
        ],
    ),
    "sharegpt_preference": (
        "'conversations'/'chosen'/'rejected'",
        [
            {
                "conversations": [{"from": "human", "value": "Capital of France?"}],
                "chosen": {"from": "gpt", "value": "Paris."},
                "rejected": {"from": "gpt", "value": "Lyon."},
            },
            {
                "conversations": [{"from": "human", "value": "Two plus two?"}],
                "chosen": {"from": "gpt", "value": "Four."},
                "rejected": {"from": "gpt", "value": "Five."},
            },
        ],
    ),
    "openai_preference": (
        "'input'/'preferred_output'/'non_preferred_output'",
        [
            {
                "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
                "preferred_output": [{"role": "assistant", "content": "Paris."}],
                "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
            },
            {
                "input": {
                    "messages": [{"role": "user", "content": "Two plus two?"}],
                    "tools": [],
                    "parallel_tool_calls": True,
                },
                "preferred_output": [{"role": "assistant", "content": "Four."}],
                "non_preferred_output": [{"role": "assistant", "content": "Five."}],
            },
        ],
    ),
}


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> ModelTokenizer:
    return load_tokenizer(tokenizer_dir)


def _text(tok: ModelTokenizer, tokens: np.ndarray) -> str:
    return tok.tokenizer.decode(tokens.tolist(), skip_special_tokens=False)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_prepares_both_answers(
    layout: str, tok: ModelTokenizer, tmp_path: Path
) -> None:
    keys, rows = LAYOUTS[layout]
    name = layout.strip()
    assert detect_format(rows).reason == f"detected: {name} (keys {keys} in 2/2 rows)"
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = prepare_dataset(source, tok, tmp_path / "pairs.h5", PrepareOptions())
    assert (result.report.kind, result.report.examples, result.report.counts) == (
        "preference",
        2,
        {},
    )
    expected = [("Capital of France?", "Paris.", "Lyon."), ("Two plus two?", "Four.", "Five.")]
    with PreparedDataset(result.path) as dataset:
        assert dataset.has_rejected and dataset.attrs["kind"] == "preference"
        for index, (question, good, bad) in enumerate(expected):
            prompt = f"{SYSTEM}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
            for (tokens, mask), answer in ((dataset[index], good), (dataset.rejected(index), bad)):
                assert _text(tok, tokens) == f"{prompt}{answer}<|im_end|>\n"
                assert _text(tok, tokens[mask == 1]) == f"{answer}<|im_end|>"


def test_only_the_last_answer_of_a_conversation_is_trained(
    tok: ModelTokenizer, tmp_path: Path
) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Capital of France?"},
        ],
        "chosen": {"from": "gpt", "value": "Paris."},
        "rejected": {"from": "gpt", "value": "Lyon."},
        "system": "Be brief.",
    }
    source = tmp_path / "multi.json"
    source.write_text(json.dumps([row]), encoding="utf-8")
    with PreparedDataset(prepare_dataset(source, tok, tmp_path / "m.h5").path) as dataset:
        tokens, mask = dataset[0]
        rejected, rejected_mask = dataset.rejected(0)
        assert _text(tok, tokens).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert _text(tok, tokens[mask == 1]) == "Paris.<|im_end|>"
        assert _text(tok, rejected[rejected_mask == 1]) == "Lyon.<|im_end|>"
        prompt = int(np.argmax(mask))  # the shared prompt is token for token the same
        assert np.array_equal(tokens[:prompt], rejected[:prompt])


def test_pair_problems_are_named(tok: ModelTokenizer, tmp_path: Path) -> None:
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "Capital of Spain?", "chosen": "Madrid.", "rejected": ""},
        {
            "prompt": "Capital of Italy?",
            "chosen": [{"role": "user", "content": "Rome"}],
            "rejected": "Milan.",
        },
        {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": 3},
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    report = prepare_dataset(source, tok, tmp_path / "p.h5").report
    assert report.counts == {"invalid": 3}
    assert [(issue.row, issue.reason) for issue in report.issues] == [
        (2, "key 'rejected': the answer is empty"),
        (3, "key 'chosen': the chosen answer has no assistant message"),
        (4, "key 'rejected': expected the answer as text or a list of messages, found int"),
    ]
    # Too long: the pair goes as a whole.
    limit = len(tok.tokenizer.encode(SYSTEM).ids) + 12
    long = {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon " * 40}
    source.write_text(json.dumps(long) + "\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    dropped = prepare_dataset(
        source, tok, tmp_path / "d.h5", PrepareOptions(max_length=limit + 20, on_too_long="drop")
    ).report
    assert dropped.examples == 1 and dropped.counts == {"too_long": 1}
    assert dropped.issues[0].reason.endswith(
        "(the longer of chosen and rejected) > max_length " + str(limit + 20)
    )
