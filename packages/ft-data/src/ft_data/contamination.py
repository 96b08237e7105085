"""Overlap between training rows and evaluation or test rows (contamination).

The rule: a training row and a test row overlap when

- the training row holds at least ``threshold`` (default 0.5) of the test row's distinct word
  ``ngram``-grams (default 8 words), or
- when ``long_ngram`` is set (e.g. 13, the rule of the GPT-3 paper), the two share a run of
  that many words.

The second rule is off by default because boilerplate trips it: on WikiSQL, 17 of the 100
test rows share a 13-word run with training rows, and each is a table header
(``columns: player, no., nationality, ...``) of a different table with the same columns,
not a leaked question; by the share rule none of them overlaps.

A row is contaminated when it overlaps a row of the other side. Words and n-grams are those
of :mod:`ft_data.ngrams` (case-folded, punctuation ignored); a row of fewer than ``ngram``
words has one n-gram made of all of them, so it only overlaps a row holding those same few
words alone.

Memory stays bounded by the test side: its n-gram hashes are held in sorted arrays (16 bytes
an n-gram) and the training rows stream past them in batches, never kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ft_data.ngrams import NgramBatch, word_ngrams

_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Overlap:
    """One overlapping pair: ``share`` is the part of the test row's distinct n-grams found in
    the training row (``shared`` of them); ``long_match`` says they share a ``long_ngram``-word
    run; ``snippet`` is the first shared passage of the training row, case-folded."""

    train_row: int
    test_row: int
    share: float
    shared: int
    long_match: bool
    snippet: str


@dataclass(frozen=True)
class ContaminationReport:
    """Every overlapping pair, ordered by training row then test row, and the settings used.

    ``test_share[j]`` is the part of test row ``j``'s distinct n-grams found anywhere in the
    training rows (several rows may share pieces of one test row without any of them
    overlapping it by the rule above).
    """

    ngram: int
    threshold: float
    long_ngram: int | None
    train_rows: int
    test_rows: int
    overlaps: list[Overlap]
    test_share: np.ndarray

    @property
    def contaminated_train_rows(self) -> list[int]:
        return sorted({overlap.train_row for overlap in self.overlaps})

    @property
    def contaminated_test_rows(self) -> list[int]:
        return sorted({overlap.test_row for overlap in self.overlaps})

    def summary(self) -> str:
        rule = f">= {self.threshold:.0%} of a test row's {self.ngram}-grams"
        if self.long_ngram:
            rule += f", or a shared {self.long_ngram}-word run"
        return (
            f"{len(self.contaminated_test_rows)} of {self.test_rows} test rows overlap "
            f"{len(self.contaminated_train_rows)} of {self.train_rows} training rows "
            f"({len(self.overlaps)} pairs; rule: {rule})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ngram": self.ngram,
            "threshold": self.threshold,
            "long_ngram": self.long_ngram,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "contaminated_train_rows": self.contaminated_train_rows,
            "contaminated_test_rows": self.contaminated_test_rows,
            "overlaps": [
                {**asdict(overlap), "share": round(overlap.share, 4)} for overlap in self.overlaps
            ],
        }


class _TestIndex:
    """The test rows' distinct n-gram hashes, sorted, with the row each came from."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray, test_rows: int) -> None:
        order = np.lexsort((rows, hashes))
        hashes, rows = hashes[order], rows[order]
        distinct = np.ones(len(hashes), dtype=bool)
        distinct[1:] = (hashes[1:] != hashes[:-1]) | (rows[1:] != rows[:-1])
        self.hashes, self.rows = hashes[distinct], rows[distinct]
        self.per_row = np.bincount(self.rows, minlength=test_rows)  # distinct n-grams a row
        self.found = np.zeros(len(self.hashes), dtype=bool)  # seen in some training row

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every match of ``hashes`` in the index: (position in ``hashes``, index entry)."""
        low = np.searchsorted(self.hashes, hashes, side="left")
        sizes = np.searchsorted(self.hashes, hashes, side="right") - low
        which = np.repeat(np.arange(len(hashes)), sizes)
        within = np.arange(len(which)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return which, np.repeat(low, sizes) + within


def find_contamination(
    train: Iterable[str],
    test: Iterable[str],
    *,
    ngram: int = 8,
    threshold: float = 0.5,
    long_ngram: int | None = None,
    snippet_chars: int = 120,
) -> ContaminationReport:
    """Find the (training row, test row) pairs that overlap by the module's rule.

    ``test`` is read first and indexed (make it the smaller side); ``train`` is then read
    once, in batches. Rows are numbered from 0 in each iterable. The result depends on the
    texts and the arguments only.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if long_ngram is not None and long_ngram <= ngram:
        raise ValueError(f"long_ngram ({long_ngram}) must be longer than ngram ({ngram})")
    sizes = [ngram] if long_ngram is None else [ngram, long_ngram]
    hashes: dict[int, list[np.ndarray]] = {n: [] for n in sizes}
    owners: dict[int, list[np.ndarray]] = {n: [] for n in sizes}
    test_rows = 0
    for batch in _batches(test):
        for n in sizes:
            grams = word_ngrams(batch, n)
            hashes[n].append(grams.hash)
            owners[n].append(grams.row + test_rows)
        test_rows += len(batch)
    indexes = {
        n: _TestIndex(_join(hashes[n], np.uint64), _join(owners[n], np.int64), test_rows)
        for n in sizes
    }
    overlaps: list[Overlap] = []
    train_rows = 0
    for batch in _batches(train):
        main = _pairs(word_ngrams(batch, ngram), indexes[ngram], keep_positions=True)
        long = None
        if long_ngram is not None:
            long = _pairs(word_ngrams(batch, long_ngram), indexes[long_ngram])
        overlaps += _overlaps(main, long, indexes[ngram], threshold, train_rows, snippet_chars)
        train_rows += len(batch)
    index = indexes[ngram]
    found = np.bincount(index.rows[index.found], minlength=test_rows)
    return ContaminationReport(
        ngram,
        threshold,
        long_ngram,
        train_rows,
        test_rows,
        overlaps,
        found / np.maximum(index.per_row, 1),
    )


@dataclass(frozen=True)
class _Matches:
    """The n-grams of a training batch found in the test index, sorted by (pair, position):
    ``pair`` is train row * test rows + test row; ``first_word``/``words`` locate the n-gram."""

    grams: NgramBatch
    pair: np.ndarray
    first_word: np.ndarray
    words: np.ndarray


def _pairs(grams: NgramBatch, index: _TestIndex, *, keep_positions: bool = False) -> _Matches:
    # Each distinct n-gram of a training row once (at its first place), as the test side.
    order = np.lexsort((grams.first_word, grams.hash, grams.row))
    row, hashes = grams.row[order], grams.hash[order]
    distinct = np.ones(len(order), dtype=bool)
    distinct[1:] = (row[1:] != row[:-1]) | (hashes[1:] != hashes[:-1])
    order = order[distinct]
    which, entry = index.lookup(grams.hash[order])
    index.found[entry] = True
    found = order[which]
    pair = grams.row[found] * len(index.per_row) + index.rows[entry]
    by_pair = np.lexsort((grams.first_word[found], pair)) if keep_positions else np.argsort(pair)
    found = found[by_pair]
    return _Matches(grams, pair[by_pair], grams.first_word[found], grams.words[found])


def _overlaps(
    main: _Matches,
    long: _Matches | None,
    index: _TestIndex,
    threshold: float,
    first_row: int,
    snippet_chars: int,
) -> list[Overlap]:
    starts = np.flatnonzero(np.diff(main.pair, prepend=-1))
    shared = np.diff(np.append(starts, len(main.pair)))
    pairs = main.pair[starts]
    train, test = np.divmod(pairs, len(index.per_row))
    share = shared / index.per_row[test]
    long_match = np.isin(pairs, long.pair) if long is not None else np.zeros(len(pairs), bool)
    overlaps = []
    for i in np.flatnonzero((share >= threshold) | long_match).tolist():
        overlaps.append(
            Overlap(
                train_row=first_row + int(train[i]),
                test_row=int(test[i]),
                share=float(share[i]),
                shared=int(shared[i]),
                long_match=bool(long_match[i]),
                snippet=_snippet(main, int(starts[i]), int(shared[i]), snippet_chars),
            )
        )
    return overlaps


def _snippet(matches: _Matches, start: int, count: int, limit: int) -> str:
    """The first run of shared n-grams starting one word apart, as text, cut to ``limit``."""
    positions = matches.first_word[start : start + count]
    breaks = np.flatnonzero(np.diff(positions) != 1)
    last = int(breaks[0]) if len(breaks) else count - 1
    end_word = int(positions[last] + matches.words[start + last] - 1)
    text = " ".join(matches.grams.text(int(positions[0]), end_word).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, _BATCH_ROWS)):
        yield batch


def _join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
