"""prepare's duplicate removal agrees with the quality checks; label columns become classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ft_data import Batches, PreparedDataset, PrepareOptions, get_format, prepare_dataset
from ft_data.config import DataSettings
from ft_data.quality import conversation_text, find_duplicates


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def planted(alpaca_rows: list[dict]) -> tuple[list[dict], list[int], list[int]]:
    """200 real rows, then 3 copies differing in case and spacing only (exact duplicates once
    normalized) and 3 with one word changed near the end (near duplicates); their row numbers
    (1-based, as prepare reports them)."""
    rows = [dict(row) for row in alpaca_rows[:200]]
    exact, near = [], []
    for source in (3, 50, 120):
        row = dict(rows[source])
        row["output"] = "  " + row["output"].upper().replace(" ", "   ") + "\n"
        rows.append(row)
        exact.append(len(rows))
    for source in (11, 70, 146):  # answers of 100 words or more: one word changes few 5-grams
        row = dict(rows[source])
        words = row["output"].split()
        words[-2] = "remarkably"
        row["output"] = " ".join(words)
        rows.append(row)
        near.append(len(rows))
    return rows, exact, near


def test_prepare_and_stats_agree_on_duplicates(
    alpaca_rows: list[dict], tokenizer_dir: Path, tmp_path: Path
) -> None:
    rows, exact, near = planted(alpaca_rows)
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    alpaca = get_format("alpaca")
    texts = [conversation_text(alpaca.to_conversation(row)) for row in rows]
    assert [row + 1 for row in find_duplicates(texts).dropped.tolist()] == exact
    found = find_duplicates(texts, mode="near", threshold=0.8)
    assert [row + 1 for row in found.dropped.tolist()] == exact + near

    options = PrepareOptions(max_length=None, dedup="exact")
    report = prepare_dataset(source, tokenizer_dir, tmp_path / "exact.h5", options).report
    assert report.counts == {"duplicate": 3}
    assert [issue.row for issue in report.issues] == exact

    options = PrepareOptions(max_length=None, dedup="near", near_dup_threshold=0.8)
    report = prepare_dataset(source, tokenizer_dir, tmp_path / "near.h5", options).report
    assert report.counts == {"duplicate": 3, "near_duplicate": 3}
    near_issues = [issue for issue in report.issues if issue.kind == "near_duplicate"]
    assert [issue.row for issue in near_issues] == near
    assert near_issues[0].reason.endswith("similar to row 12")  # rows[11], 1-based
    assert report.examples == 200


def labelled_rows(datasets: Path) -> list[dict]:
    """WikiSQL's real text rows, labelled by the SQL aggregate they ask for (unbalanced)."""
    lines = (datasets / "wikisql" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = []
    for line in lines[:300]:
        text = json.loads(line)["text"]
        sql = text.rsplit("A: ", 1)[-1]
        kind = next((k for k in ("COUNT", "MAX", "MIN") if k in sql), "SELECT")
        rows.append({"text": text, "kind": kind})
    return rows


def test_label_column_becomes_classes(datasets: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    rows = labelled_rows(datasets)
    rows[5]["kind"] = ""  # a row without a label is left out, and says why
    source = write_jsonl(tmp_path / "labelled.jsonl", rows)
    options = PrepareOptions(max_length=512, label_column="kind")
    result = prepare_dataset(source, tokenizer_dir, tmp_path / "labelled.h5", options)
    assert result.report.counts.get("invalid") == 1
    assert result.report.issues[0].reason == "key 'kind': no label in column 'kind'"
    kept = [row for row in rows if row["kind"]]
    names = sorted({row["kind"] for row in kept})
    assert result.report.label_names == names == ["COUNT", "MAX", "MIN", "SELECT"]
    with PreparedDataset(result.path) as data:
        assert data.label_names == names
        labels = data.labels()
        assert labels is not None and labels.dtype == np.int64
        assert [names[i] for i in labels.tolist()] == [row["kind"] for row in kept]
        batches = Batches(data, batch_size=4, max_seq_length=512, mode="pad", shuffle=False)
        first = batches.batch(0)
        assert first["labels"].tolist() == labels[:4].tolist()
        assert first["input_ids"].shape[0] == 4
        with pytest.raises(ValueError, match=r"a classification dataset .* use mode 'pad'"):
            Batches(data, batch_size=4, max_seq_length=512, mode="pack")
        settings = DataSettings(
            train=str(source),
            validation=None,
            test=None,
            prepare=options,
            max_seq_length=512,
            batch_mode="pad",
            validation_split=0.2,
            dedup="exact",
            near_dup_threshold=0.85,
            label_column="kind",
        )
        plan = settings.split(data, seed=3)
        held = np.bincount(labels[plan.validation], minlength=len(names))
        total = np.bincount(labels, minlength=len(names))
        # Stratified: each class gives its share, within one row.
        assert np.all(np.abs(held - total * 0.2) <= 1), (held, total)
        assert len(plan.validation) == round(len(labels) * 0.2)


def test_without_a_label_column_there_are_no_labels(
    datasets: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "plain.jsonl", labelled_rows(datasets)[:20])
    result = prepare_dataset(source, tokenizer_dir, tmp_path / "plain.h5", PrepareOptions())
    with PreparedDataset(result.path) as data:
        assert data.labels() is None and data.label_names is None
        batch = Batches(data, batch_size=2, max_seq_length=2048, mode="pack").batch(0)
        assert batch["labels"].shape == batch["input_ids"].shape  # token labels, as before
