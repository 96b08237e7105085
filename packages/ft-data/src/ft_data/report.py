"""The quality report of a data source: what `ft dataset stats` shows besides token counts.

:func:`quality_report` reads the rows as ``prepare_dataset`` would (same format detection,
system prompt and label column; rows it would leave out as invalid are skipped here) and
puts together, on each row's :func:`~ft_data.quality.conversation_text`:

- exact duplicates (:func:`~ft_data.quality.normalize_text` equal, the rule prepare's
  ``dedup: exact`` drops by) and near duplicates (MinHash, ``near_threshold``);
- lengths in characters and in tokens (the contents, without the chat template), token
  complexity, and class balance of the label column (:func:`~ft_data.stats.dataset_stats`);
- with ``eval_source``, the training rows that overlap evaluation rows
  (:func:`~ft_data.contamination.find_contamination`).

Rows are streamed, once per check; per row only a few numbers are kept. Row numbers in the
report are those of the files (1-based, as prepare reports them).
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ft_data.contamination import ContaminationReport, find_contamination
from ft_data.conversation import Conversation
from ft_data.errors import RowProblem
from ft_data.formats import Format
from ft_data.prepare import PrepareOptions, choose_format, read_rows_of, row_conversation
from ft_data.quality import DuplicateReport, conversation_text, find_duplicates
from ft_data.readers import local_files
from ft_data.stats import DatasetStats, dataset_stats
from ft_data.tokenizer import ModelTokenizer


class RowNumbers:
    """Stream position -> (file, row number), 12 bytes a row."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self._file = array("i")
        self._row = array("q")

    def add(self, file: str, row: int) -> None:
        if not self.files or self.files[-1] != file:
            self.files.append(file)
        self._file.append(len(self.files) - 1)
        self._row.append(row)

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"file": self.files[self._file[index]], "row": self._row[index]}


@dataclass(frozen=True)
class QualityReport:
    """Everything :func:`quality_report` found; ``rows`` maps stream positions (the indices
    in the reports) to file row numbers, ``eval_rows`` the same for ``eval_source``."""

    source: str
    format_reason: str
    rows: RowNumbers
    exact: DuplicateReport
    near: DuplicateReport
    stats: DatasetStats
    contamination: ContaminationReport | None
    eval_source: str | None
    eval_rows: RowNumbers | None

    def to_dict(self, *, shown: int = 50) -> dict[str, Any]:
        """Plain data for ``--json``: counts, and up to ``shown`` rows of each list."""
        rows = self.rows

        def pairs(found: DuplicateReport) -> list[dict[str, Any]]:
            listed = zip(found.dropped.tolist(), found.duplicate_of.tolist(), strict=True)
            similarity = found.similarity.tolist()
            return [
                {
                    **rows[row],
                    "duplicate_of": rows[of]["row"],
                    "duplicate_of_file": rows[of]["file"],
                    "similarity": round(similarity[index], 4),
                }
                for index, (row, of) in enumerate(itertools.islice(listed, shown))
            ]

        stats = self.stats
        data: dict[str, Any] = {
            "rows": len(rows),
            "duplicates": {
                "exact": len(self.exact),
                "near": len(self.near),
                "near_threshold": self.near.threshold,
                "exact_rows": pairs(self.exact),
                "near_rows": pairs(self.near),
            },
            "lengths": {
                "chars": asdict(stats.chars) if stats.chars else None,
                "tokens": asdict(stats.tokens) if stats.tokens else None,
            },
            "complexity": asdict(stats.complexity) if stats.complexity else None,
            "labels": asdict(stats.labels) if stats.labels else None,
            "contamination": None,
        }
        if self.contamination is not None and self.eval_rows is not None:
            found, eval_rows = self.contamination, self.eval_rows
            data["contamination"] = {
                "eval": self.eval_source,
                "rule": found.summary().split("rule: ", 1)[-1].rstrip(")"),
                "train_rows": found.train_rows,
                "eval_rows": found.test_rows,
                "contaminated_train_rows": len(found.contaminated_train_rows),
                "contaminated_eval_rows": len(found.contaminated_test_rows),
                "pairs": len(found.overlaps),
                "overlaps": [
                    {
                        "train_row": rows[overlap.train_row]["row"],
                        "train_file": rows[overlap.train_row]["file"],
                        "eval_row": eval_rows[overlap.test_row]["row"],
                        "eval_file": eval_rows[overlap.test_row]["file"],
                        "share": round(overlap.share, 4),
                        "long_match": overlap.long_match,
                        "snippet": overlap.snippet,
                    }
                    for overlap in found.overlaps[:shown]
                ],
            }
        return data


def quality_report(
    source: str | Path,
    tokenizer: ModelTokenizer,
    options: PrepareOptions,
    *,
    near_threshold: float = 0.85,
    max_seq_length: int | None = None,
    eval_source: str | Path | None = None,
    bins: int = 20,
) -> QualityReport:
    """The quality report of ``source`` read with ``options`` (see the module docstring).
    Raises :class:`~ft_data.errors.DataError` for unreadable data or an unknown format."""
    with local_files(source) as files:
        fmt, reason = choose_format(source, files, options)
        rows = RowNumbers()
        labels: list[str | None] = []

        def texts(record: bool = False) -> Iterator[str]:
            for file, row, conversation in _conversations(files, fmt, options):
                if record:
                    rows.add(file, row)
                    labels.append(conversation.label)
                yield conversation_text(conversation)

        exact = find_duplicates(texts(record=True), mode="exact")
        near = find_duplicates(texts(), mode="near", threshold=near_threshold)
        stats = dataset_stats(
            texts(),
            tokenizer=tokenizer,
            labels=labels if options.label_column is not None else None,
            max_seq_length=max_seq_length,
            bins=bins,
        )
        contamination, eval_rows = None, None
        if eval_source is not None:
            eval_rows = RowNumbers()
            eval_texts = _eval_texts(eval_source, options, eval_rows)
            contamination = find_contamination(texts(), eval_texts)
    return QualityReport(
        str(source),
        reason,
        rows,
        exact,
        near,
        stats,
        contamination,
        str(eval_source) if eval_source is not None else None,
        eval_rows,
    )


def _eval_texts(source: str | Path, options: PrepareOptions, rows: RowNumbers) -> list[str]:
    # The evaluation side is indexed whole by find_contamination anyway; read it first, with
    # its own format detection (an eval file may come in another shape than the training data).
    eval_options = PrepareOptions(
        format=None,
        on_bad_utf8=options.on_bad_utf8,
        text_documents=options.text_documents,
        system_prompt=options.system_prompt,
        detect_rows=options.detect_rows,
    )
    texts = []
    with local_files(source) as files:
        fmt, _ = choose_format(source, files, eval_options)
        for file, row, conversation in _conversations(files, fmt, eval_options):
            rows.add(file, row)
            texts.append(conversation_text(conversation))
    return texts


def _conversations(
    files: list[Path], fmt: Format, options: PrepareOptions
) -> Iterator[tuple[str, int, Conversation]]:
    for file in files:
        for number, row in read_rows_of(file, options):
            try:
                conversation = row_conversation(fmt, row, options)
            except RowProblem:
                continue  # prepare's report names these rows
            yield str(file), number, conversation
