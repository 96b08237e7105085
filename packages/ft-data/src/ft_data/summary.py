"""What `ft dataset prepare` and `ft dataset stats` report of a prepared dataset, as plain
data (what their ``--json`` prints, and what a server returns for the same question).

:func:`prepare_summary` is the prepare report with the rows left out grouped by reason;
:func:`stats_summary` adds what the prepared file says: the distribution of example lengths
and of trained tokens per example, and how many sequences packing makes. The quality checks
of the source rows are :func:`ft_data.report.quality_report`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ft_data.batches import Batches
from ft_data.hdf5 import PreparedDataset
from ft_data.prepare import PrepareResult

SHOWN_ROWS = 5
"""Rows listed per reason in the prepare summary (all of them are counted)."""
PERCENTILES = (50, 90, 95, 99)


def prepare_summary(
    result: PrepareResult,
    *,
    source: str,
    model: str,
    max_seq_length: int,
    seconds: float,
    shown: int = SHOWN_ROWS,
) -> dict[str, Any]:
    """What preparing ``source`` with the tokenizer of ``model`` gave, in ``seconds``.

    Keys: source, output, reused, format, detected (the detection line), template, model,
    max_seq_length, kind (``chat``, or ``text``: examples are blocks of raw text), rows_read,
    examples, split_rows (raw text rows longer than max_seq_length, kept as several blocks),
    left_out, left_out_by_reason (reason -> count and the first ``shown`` rows: file, row,
    reason), truncated (the same, for rows cut to max_seq_length), reasoning_not_rendered
    (the same, for rows kept without the reasoning the chat template does not write), tokens,
    trained_tokens,
    longest, label_names, seconds.
    """
    report = result.report
    by_kind: dict[str, dict[str, Any]] = {}
    for kind, count in sorted(report.counts.items()):
        issues = [issue for issue in report.issues if issue.kind == kind][:shown]
        by_kind[kind] = {
            "count": count,
            "rows": [
                {"file": issue.file, "row": issue.row, "reason": issue.reason} for issue in issues
            ],
        }
    truncated = by_kind.pop("truncated", {"count": 0, "rows": []})
    reasoning = by_kind.pop("reasoning_not_rendered", {"count": 0, "rows": []})
    return {
        "source": source,
        "output": str(result.path),
        "reused": result.reused,
        "format": report.format,
        "detected": report.format_reason,
        "template": report.template,
        "model": model,
        "max_seq_length": max_seq_length,
        "kind": report.kind,
        "rows_read": report.rows_read,
        "examples": report.examples,
        "split_rows": report.split_rows,
        "rejected_tokens": report.rejected_tokens,
        "left_out": report.left_out,
        "left_out_by_reason": by_kind,
        "truncated": truncated,
        "reasoning_not_rendered": reasoning,
        "tokens": report.tokens,
        "trained_tokens": report.trained_tokens,
        "longest": report.longest,
        "label_names": report.label_names,
        "sources": report.sources,
        "seconds": round(seconds, 3),
    }


def stats_summary(result: PrepareResult, *, source: str, max_seq_length: int) -> dict[str, Any]:
    """What the prepared dataset of ``source`` holds.

    Keys: source, prepared (its path), format, detected, template, label_names; rows (read,
    examples, left_out, by_reason); tokens (total, trained, trained_share); example_tokens and
    trained_tokens_per_example (min, mean, p50, p90, p95, p99, max; nearest-rank
    percentiles); packing (max_seq_length, sequences: the rows of ``max_seq_length`` tokens
    packing fills, fill: the share of their tokens that are data; 0 for classification data,
    which is never packed).
    """
    prepared = result.report
    with PreparedDataset(result.path) as data:
        lengths = data.lengths
        trained = trained_per_example(data)
        sequences = 0
        if len(data) and data.labels() is None:
            packer = Batches(
                data, batch_size=1, max_seq_length=max_seq_length, mode="pack", shuffle=False
            )
            sequences = len(packer.rows(0))
    tokens = prepared.tokens
    return {
        "source": source,
        "prepared": str(result.path),
        "format": prepared.format,
        "detected": prepared.format_reason,
        "template": prepared.template,
        "label_names": prepared.label_names,
        "sources": prepared.sources,
        "rows": {
            "read": prepared.rows_read,
            "examples": prepared.examples,
            "left_out": prepared.left_out,
            "by_reason": dict(sorted(prepared.counts.items())),
        },
        "tokens": {
            "total": tokens,
            "trained": prepared.trained_tokens,
            "trained_share": round(prepared.trained_tokens / tokens, 4) if tokens else 0.0,
        },
        "example_tokens": distribution(lengths),
        "trained_tokens_per_example": distribution(trained),
        "packing": {
            "max_seq_length": max_seq_length,
            "sequences": sequences,
            "fill": round(tokens / (sequences * max_seq_length), 4) if sequences else 0.0,
        },
    }


def distribution(values: np.ndarray) -> dict[str, float | int]:
    """min, mean (1 decimal), nearest-rank p50/p90/p95/p99 and max; {} for no values."""
    if len(values) == 0:
        return {}
    quantiles = {f"p{q}": int(np.percentile(values, q, method="nearest")) for q in PERCENTILES}
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 1),
        **quantiles,
        "max": int(values.max()),
    }


def trained_per_example(data: PreparedDataset, block_tokens: int = 1 << 22) -> np.ndarray:
    """The number of trained tokens (loss mask 1) of each example, reading the mask about
    ``block_tokens`` at a time (whole examples), so a large file is never read at once."""
    offsets = data.offsets
    trained = np.zeros(len(data), dtype=np.int64)
    start = 0
    while start < len(data):
        stop = int(np.searchsorted(offsets, offsets[start] + block_tokens, side="right")) - 1
        stop = min(max(stop, start + 1), len(data))
        _, mask = data.read_tokens(int(offsets[start]), int(offsets[stop]))
        sums = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        local = offsets[start : stop + 1] - offsets[start]
        trained[start:stop] = sums[local[1:]] - sums[local[:-1]]
        start = stop
    return trained
