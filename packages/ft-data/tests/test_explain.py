"""explain_rows: the first rows of real data as prepare writes them, token by token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_data.explain import explain_rows
from ft_data.hdf5 import PreparedDataset
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_data.tokenizer import load_tokenizer


def _prepared(source: Path, tokenizer_dir: Path, path: Path, options: PrepareOptions) -> Path:
    prepare_dataset(source, tokenizer_dir, path, options)
    return path


def test_each_row_is_what_prepare_writes(
    datasets: Path, alpaca_rows: list[dict[str, str]], tokenizer_dir: Path, tmp_path: Path
) -> None:
    source = datasets / "alpaca_en_demo.json"
    options = PrepareOptions(max_length=None)
    explained = explain_rows(source, tokenizer_dir, options, count=4)
    assert explained.source == str(source)
    assert explained.detected == "detected: alpaca (keys 'instruction'/'output' in 999/999 rows)"
    assert [(row.file, row.row, row.status) for row in explained.rows] == [
        (str(source), number, "kept") for number in range(1, 5)
    ]
    with PreparedDataset(_prepared(source, tokenizer_dir, tmp_path / "a.h5", options)) as data:
        for index, row in enumerate(explained.rows):
            tokens, mask = data[index]
            assert (row.tokens, row.trained_tokens, row.kept_tokens) == (
                len(tokens),
                int(mask.sum()),
                len(tokens),
            )
            # The pieces lay end to end are the text; the trained ones are the answer.
            assert "".join(piece.text for piece in row.pieces) == row.text
            [(start, end)] = row.trained_spans
            assert row.text[start:end] == alpaca_rows[index]["output"] + "<|im_end|>"
            trained = "".join(piece.text for piece in row.pieces if piece.trained)
            assert trained == row.text[start:end]
    public = explained.to_dict()
    assert list(public) == ["source", "detected", "examples"]
    assert list(public["examples"][0]) == [
        "file",
        "row",
        "status",
        "text",
        "tokens",
        "trained_tokens",
        "kept_tokens",
        "trained_spans",
        "blocks",
    ]


def test_rows_too_long_cut_or_left_out_as_prepare_does(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    source = datasets / "alpaca_en_demo.json"
    whole = explain_rows(source, tokenizer_dir, PrepareOptions(max_length=None), count=1).rows[0]
    limit = whole.tokens - whole.trained_tokens + 10  # into the answer

    truncate = PrepareOptions(max_length=limit, on_too_long="truncate")
    cut = explain_rows(source, tokenizer_dir, truncate, count=1).rows[0]
    assert (cut.status, cut.tokens, cut.kept_tokens) == ("truncated", whole.tokens, limit)
    with PreparedDataset(_prepared(source, tokenizer_dir, tmp_path / "t.h5", truncate)) as data:
        tokens, mask = data[0]
    kept = [piece for piece in cut.pieces if piece.kept]
    assert len(tokens) == limit and sum(piece.trained for piece in kept) == int(mask.sum())
    assert not cut.pieces[-2].kept  # the end of the answer is past the cut

    dropped = explain_rows(source, tokenizer_dir, PrepareOptions(max_length=limit), count=1)
    assert (dropped.rows[0].status, dropped.rows[0].kept_tokens) == ("too_long", 0)

    prompt_only = PrepareOptions(max_length=8, on_too_long="truncate")
    assert explain_rows(source, tokenizer_dir, prompt_only, count=1).rows[0].status == (
        "no_trained_tokens"
    )


def test_invalid_rows_say_why_as_prepare_reports_them(
    alpaca_rows: list[dict[str, str]], tokenizer_dir: Path, tmp_path: Path
) -> None:
    rows = [dict(row, topic="howto") for row in alpaca_rows[:3]]
    rows[1]["output"] = ""
    del rows[2]["topic"]
    source = tmp_path / "rows.json"
    source.write_text(json.dumps(rows), encoding="utf-8")
    options = PrepareOptions(label_column="topic")
    explained = explain_rows(source, tokenizer_dir, options, count=3)
    report = prepare_dataset(source, tokenizer_dir, tmp_path / "r.h5", options).report
    assert [row.status for row in explained.rows] == ["kept", "invalid", "invalid"]
    assert [(row.row, row.problem) for row in explained.rows[1:]] == [
        (issue.row, issue.reason) for issue in report.issues
    ]
    assert explained.rows[2].problem == "key 'topic': no label in column 'topic'"
    assert explained.to_dict()["examples"][1] == {
        "file": str(source),
        "row": 2,
        "status": "invalid",
        "problem": "key 'output': the field is empty",
    }


def test_raw_text_is_trained_whole_and_ends_with_eos(datasets: Path, tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    explained = explain_rows(
        datasets / "c4_demo.jsonl", tokenizer_dir, PrepareOptions(max_length=None), count=1
    )
    [row] = explained.rows
    assert row.status == "kept" and row.trained_tokens == row.tokens
    assert row.trained_spans == [[0, len(row.text)]]
    eos = tokenizer.tokenizer.id_to_token(tokenizer.eos_token_id)
    # The eos appended to raw text has no text of its own: it shows as itself.
    assert "".join(piece.text for piece in row.pieces) == row.text + eos


@pytest.mark.parametrize("prompt", [None, "Be brief."])
def test_the_system_prompt_is_added_as_prepare_adds_it(
    datasets: Path, tokenizer_dir: Path, prompt: str | None
) -> None:
    options = PrepareOptions(system_prompt=prompt, template="chatml")
    [row] = explain_rows(datasets / "alpaca_en_demo.json", tokenizer_dir, options, count=1).rows
    system = f"<|im_start|>system\n{prompt}<|im_end|>\n" if prompt else ""
    assert row.text.startswith(system + "<|im_start|>user\n")
