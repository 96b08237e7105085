"""prepare_summary and stats_summary: what `ft dataset prepare|stats` report, on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_data.prepare import PrepareOptions, PrepareResult, prepare_dataset
from ft_data.summary import distribution, prepare_summary, stats_summary, trained_per_example


@pytest.fixture(scope="module")
def alpaca(
    tmp_path_factory: pytest.TempPathFactory, datasets: Path, tokenizer_dir: Path
) -> PrepareResult:
    """The Alpaca demo with exact dedup (14 repeats) and rows over 512 tokens cut."""
    options = PrepareOptions(max_length=512, on_too_long="truncate", dedup="exact")
    path = tmp_path_factory.mktemp("summary") / "alpaca.h5"
    return prepare_dataset(datasets / "alpaca_en_demo.json", tokenizer_dir, path, options)


def test_prepare_summary_groups_the_rows_left_out_by_reason(alpaca: PrepareResult) -> None:
    report = alpaca.report
    summary = prepare_summary(
        alpaca, source="alpaca.json", model="./model", max_seq_length=512, seconds=1.23456
    )
    assert list(summary) == [
        "source",
        "output",
        "reused",
        "format",
        "detected",
        "template",
        "model",
        "max_seq_length",
        "kind",
        "rows_read",
        "examples",
        "split_rows",
        "rejected_tokens",
        "left_out",
        "left_out_by_reason",
        "truncated",
        "reasoning_not_rendered",
        "tokens",
        "trained_tokens",
        "longest",
        "label_names",
        "sources",
        "seconds",
    ]
    assert (summary["source"], summary["model"], summary["seconds"]) == (
        "alpaca.json",
        "./model",
        1.235,
    )
    assert (summary["rows_read"], summary["examples"], summary["left_out"]) == (
        999,
        report.examples,
        999 - report.examples,
    )
    duplicates = summary["left_out_by_reason"]["duplicate"]
    assert duplicates["count"] == 14 and len(duplicates["rows"]) == 5
    first = next(issue for issue in report.issues if issue.kind == "duplicate")
    assert duplicates["rows"][0] == {"file": first.file, "row": first.row, "reason": first.reason}
    # Truncated rows are kept, so they are listed apart from the rows left out.
    assert "truncated" not in summary["left_out_by_reason"]
    assert summary["truncated"]["count"] == report.counts["truncated"] > 5
    assert len(summary["truncated"]["rows"]) == 5
    assert summary["truncated"]["rows"][0]["reason"].endswith("cut to max_length 512")
    shown = prepare_summary(alpaca, source="a", model="m", max_seq_length=512, seconds=0, shown=2)
    assert len(shown["left_out_by_reason"]["duplicate"]["rows"]) == 2


def test_stats_summary_reads_the_prepared_file(alpaca: PrepareResult) -> None:
    summary = stats_summary(alpaca, source="alpaca.json", max_seq_length=512)
    report = alpaca.report
    assert summary["rows"] == {
        "read": 999,
        "examples": report.examples,
        "left_out": report.left_out,
        "by_reason": dict(sorted(report.counts.items())),
    }
    assert summary["tokens"]["total"] == report.tokens
    assert summary["tokens"]["trained_share"] == round(report.trained_tokens / report.tokens, 4)
    with PreparedDataset(alpaca.path) as data:
        lengths = data.lengths
        trained = np.array([int(data[i][1].sum()) for i in range(len(data))])
        packed = Batches(data, batch_size=1, max_seq_length=512, mode="pack", shuffle=False)
        sequences = len(packed.rows(0))
        # A block smaller than most examples reads the same counts as one large block.
        assert trained_per_example(data, block_tokens=100).tolist() == trained.tolist()
    assert summary["example_tokens"] == {
        "min": int(lengths.min()),
        "mean": round(float(lengths.mean()), 1),
        **{f"p{q}": int(np.percentile(lengths, q, method="nearest")) for q in (50, 90, 95, 99)},
        "max": 512,
    }
    assert summary["trained_tokens_per_example"]["max"] == int(trained.max())
    assert summary["packing"] == {
        "max_seq_length": 512,
        "sequences": sequences,
        "fill": round(report.tokens / (sequences * 512), 4),
    }
    assert 0.5 < summary["packing"]["fill"] <= 1.0


def test_distribution_of_nothing_is_empty() -> None:
    assert distribution(np.array([], dtype=np.int64)) == {}
    assert distribution(np.array([3, 1, 2])) == {
        "min": 1,
        "mean": 2.0,
        "p50": 2,
        "p90": 3,
        "p95": 3,
        "p99": 3,
        "max": 3,
    }
