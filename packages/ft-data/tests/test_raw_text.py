"""Raw text for continued pretraining keeps every token: long texts become blocks of
max_length tokens (optionally overlapping, the overlap as untrained context), text files are
cut into documents as `text_documents` says, and each document ends with eos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ft_data import PreparedDataset, PrepareOptions, explain_rows, prepare_dataset
from ft_data import tokenize as tokenize_module
from ft_data.readers import read_file, split_documents
from ft_data.tokenize import tokenize_texts
from ft_data.tokenizer import ModelTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def book(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1 MB of real English as one .txt file: the C4 demo's texts and then the Alpaca
    demo's answers, separated by blank lines."""
    texts = [
        json.loads(line)["text"]
        for line in (datasets / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    answers = [row["output"] for row in json.loads((datasets / "alpaca_en_demo.json").read_text())]
    while sum(map(len, texts)) < 1_000_000:
        texts.append(answers.pop(0))
    text = "\n\n".join(texts)
    path = tmp_path_factory.mktemp("book") / "book.txt"
    path.write_text(text, encoding="utf-8")
    assert 1_000_000 < path.stat().st_size < 1_100_000
    return path


@pytest.fixture(scope="module")
def chapter(book: Path) -> Path:
    """The book's first 100,000 characters or so (whole paragraphs), for the slower checks."""
    text = book.read_text(encoding="utf-8")
    path = book.with_name("chapter.txt")
    path.write_text(text[: text.index("\n\n", 100_000)], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_dir: Path) -> ModelTokenizer:
    return load_tokenizer(tokenizer_dir)


def _stream(dataset: PreparedDataset, trained_only: bool = False) -> np.ndarray:
    tokens, mask = dataset.read_tokens(0, dataset.num_tokens)
    return tokens[mask.astype(bool)] if trained_only else tokens


def test_a_1mb_text_file_keeps_all_its_tokens(
    book: Path, tok: ModelTokenizer, tmp_path: Path
) -> None:
    text = book.read_text(encoding="utf-8")
    whole = tok.tokenizer.encode(text).ids
    limit = 2048
    result = prepare_dataset(book, tok, tmp_path / "book.h5", PrepareOptions(max_length=limit))
    report = result.report
    blocks = math.ceil((len(whole) + 1) / limit)  # the text's tokens and one eos
    assert (report.rows_read, report.examples, report.split_rows) == (1, blocks, 1)
    assert report.tokens == report.trained_tokens == len(whole) + 1
    assert report.counts == {}  # nothing truncated, nothing left out
    assert f"1 rows -> {blocks} blocks (1 long rows split into blocks)" in report.summary()
    with PreparedDataset(result.path) as dataset:
        assert dataset.lengths.tolist() == [limit] * (blocks - 1) + [
            len(whole) + 1 - (blocks - 1) * limit
        ]
        stream = _stream(dataset)
        assert stream.tolist() == [*whole, tok.eos_token_id]
        # The blocks decode back to the text.
        assert tok.tokenizer.decode(stream[:-1].tolist(), skip_special_tokens=False) == text


def test_overlapping_blocks_train_each_token_once(
    chapter: Path, tok: ModelTokenizer, tmp_path: Path
) -> None:
    limit, overlap = 1024, 128
    whole = [*tok.tokenizer.encode(chapter.read_text(encoding="utf-8")).ids, tok.eos_token_id]
    options = PrepareOptions(max_length=limit, text_overlap=overlap)
    result = prepare_dataset(chapter, tok, tmp_path / "overlap.h5", options)
    step = limit - overlap
    blocks = 1 + math.ceil((len(whole) - limit) / step)
    assert result.report.examples == blocks
    assert result.report.trained_tokens == len(whole)
    assert result.report.tokens == len(whole) + overlap * (blocks - 1)
    with PreparedDataset(result.path) as dataset:
        assert _stream(dataset, trained_only=True).tolist() == whole
        second, mask = dataset[1]
        # The second block starts with the first block's last `overlap` tokens, as context.
        assert second.tolist() == whole[step : step + limit]
        assert mask.tolist() == [0] * overlap + [1] * (limit - overlap)


def test_text_rows_of_jsonl_are_split_too(
    datasets: Path, tok: ModelTokenizer, tmp_path: Path
) -> None:
    rows = [json.loads(line) for line in (datasets / "c4_demo.jsonl").read_text().splitlines()]
    limit = 256
    lengths = [len(tok.tokenizer.encode(row["text"]).ids) + 1 for row in rows]
    result = prepare_dataset(
        datasets / "c4_demo.jsonl", tok, tmp_path / "c4.h5", PrepareOptions(max_length=limit)
    )
    assert result.report.examples == sum(math.ceil(n / limit) for n in lengths)
    assert result.report.split_rows == sum(n > limit for n in lengths)
    assert result.report.tokens == sum(lengths)


def test_documents_of_a_text_file(tok: ModelTokenizer, tmp_path: Path) -> None:
    text = "First paragraph,\nstill the first.\n\n\n  Second, indented.\n \nThird.\n"
    assert split_documents(text, "file") == [text]
    assert split_documents(text, "blank_line") == [
        "First paragraph,\nstill the first.",
        "  Second, indented.",
        "Third.",
    ]
    assert split_documents(text, "line") == [
        "First paragraph,",
        "still the first.",
        "  Second, indented.",
        "Third.",
    ]
    path = tmp_path / "notes.md"
    path.write_text(text, encoding="utf-8")
    assert [row for _, row in read_file(path, documents="blank_line")][1] == {
        "text": "  Second, indented."
    }
    options = PrepareOptions(max_length=64, text_documents="blank_line")
    result = prepare_dataset(path, tok, tmp_path / "notes.h5", options)
    assert (result.report.rows_read, result.report.examples) == (3, 3)
    with PreparedDataset(result.path) as dataset:
        for index, document in enumerate(split_documents(text, "blank_line")):
            tokens, _ = dataset[index]
            assert tokens[-1] == tok.eos_token_id  # each document ends with eos
            assert tok.tokenizer.decode(tokens[:-1].tolist()) == document


def test_a_huge_text_is_tokenized_in_pieces(
    chapter: Path, tok: ModelTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = chapter.read_text(encoding="utf-8")
    whole = tok.tokenizer.encode(text).ids
    monkeypatch.setattr(tokenize_module, "_PIECE_CHARS", 5_000)
    [example] = tokenize_texts([text], tok)
    ids = example.tokens.tolist()
    assert ids[-1] == tok.eos_token_id and example.uncut_chars == 0
    assert tok.tokenizer.decode(ids[:-1]) == text
    # Cut before a space or line break: at most a token or so differs per cut (about 20 cuts).
    assert abs(len(ids) - 1 - len(whole)) <= 20


def test_inspect_shows_a_long_text_split(chapter: Path, tok: ModelTokenizer) -> None:
    options = PrepareOptions(max_length=4096)
    [row] = explain_rows(chapter, tok, options, count=1).rows
    assert row.status == "split" and row.kept_tokens == row.tokens == row.trained_tokens
    assert row.blocks == math.ceil(row.tokens / 4096) > 1
    assert "".join(piece.text for piece in row.pieces[:-2]) == chapter.read_text(encoding="utf-8")
