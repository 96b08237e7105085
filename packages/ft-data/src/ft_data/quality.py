"""Data quality: exact and near-duplicate rows, and overlap between training and test data.

Both work on text streams: they take any iterable of strings, read it once in batches, and
keep hashes and signatures, never the texts, so memory grows with the number of rows kept,
not with the size of the data. Turn a conversation into the text they compare with
:func:`conversation_text`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ft_data.conversation import Conversation
from ft_data.minhash import MinHasher, NearDuplicateIndex
from ft_data.ngrams import word_ngrams

DedupMode = Literal["exact", "near"]
_BATCH_ROWS = 4096  # rows hashed at once: their n-gram arrays take tens of MiB
_NORMALIZE_WINDOW = 1 << 20  # characters normalized at once by normalized_digest
_WHITESPACE = re.compile(r"\s")


def normalize_text(text: str) -> str:
    """The text as exact deduplication compares it: case-folded, every run of whitespace
    collapsed to one space, no leading or trailing whitespace."""
    return " ".join(text.casefold().split())


def normalized_digest(text: str, digest_size: int = 16) -> bytes:
    """BLAKE2b of ``normalize_text(text)`` in UTF-8, computed a megabyte at a time, so that a
    100 MB row costs megabytes, not the gigabyte its list of words would take."""
    digest = hashlib.blake2b(digest_size=digest_size)
    first, start = True, 0
    while start < len(text):
        end = start + _NORMALIZE_WINDOW
        if end < len(text):  # end the window after whitespace, so no word is cut in two
            space = _WHITESPACE.search(text, end)
            end = space.end() if space else len(text)
        part = " ".join(text[start:end].casefold().split())
        if part:
            digest.update(
                part.encode("utf-8", "surrogatepass")
                if first
                else b" " + part.encode("utf-8", "surrogatepass")
            )
            first = False
        start = end
    return digest.digest()


def conversation_text(conversation: Conversation) -> str:
    """One text per conversation for deduplication and overlap checks: each message as
    ``role: content`` on its own line (tool calls as JSON after the content), so the same
    words said by a different role make a different text."""
    lines = []
    for message in conversation.messages:
        line = f"{message.role}: {message.content}"
        if message.tool_calls:
            line += " " + json.dumps(message.tool_calls, sort_keys=True, ensure_ascii=False)
        lines.append(line)
    # A preference pair: the same prompt and answer with another rejected answer is another row.
    rejected = conversation.rejected or []
    shared = 0
    while shared < min(len(rejected), len(conversation.messages)) and (
        rejected[shared] == conversation.messages[shared]
    ):
        shared += 1
    lines += [f"rejected {message.role}: {message.content}" for message in rejected[shared:]]
    return "\n".join(lines)


@dataclass(frozen=True)
class DuplicateReport:
    """The rows to drop: ``dropped[i]`` (a 0-based row index) duplicates the earlier, kept row
    ``duplicate_of[i]``, with estimated similarity ``similarity[i]`` (1.0 in exact mode).
    ``dropped`` is in increasing order; ``rows`` counts every row read."""

    mode: DedupMode
    rows: int
    dropped: np.ndarray
    duplicate_of: np.ndarray
    similarity: np.ndarray
    threshold: float | None = None
    num_perm: int | None = None

    def __len__(self) -> int:
        return len(self.dropped)

    def pairs(self) -> list[tuple[int, int]]:
        """``(dropped row, row it duplicates)`` for every dropped row."""
        return list(zip(self.dropped.tolist(), self.duplicate_of.tolist(), strict=True))

    def keep_mask(self) -> np.ndarray:
        """A boolean array over all rows: True for the rows to keep."""
        mask = np.ones(self.rows, dtype=bool)
        mask[self.dropped] = False
        return mask

    def summary(self) -> str:
        how = "exact" if self.mode == "exact" else f"near (similarity >= {self.threshold})"
        return f"{len(self)} of {self.rows} rows are {how} duplicates of earlier rows"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rows": self.rows,
            "duplicates": len(self),
            "threshold": self.threshold,
            "num_perm": self.num_perm,
            "pairs": [
                {"row": row, "duplicate_of": of, "similarity": round(share, 4)}
                for row, of, share in zip(
                    self.dropped.tolist(),
                    self.duplicate_of.tolist(),
                    self.similarity.tolist(),
                    strict=True,
                )
            ],
        }


def find_duplicates(
    texts: Iterable[str],
    *,
    mode: DedupMode = "exact",
    threshold: float = 0.85,
    num_perm: int = 64,
    seed: int = 0,
    ngram: int = 5,
) -> DuplicateReport:
    """Find the rows of ``texts`` that repeat an earlier row; the first occurrence is kept.

    ``exact``: rows whose :func:`normalize_text` forms are equal (compared by a 128-bit
    BLAKE2b hash). ``near``: rows whose word ``ngram``-gram sets (see :mod:`ft_data.ngrams`)
    have a Jaccard similarity of at least ``threshold``, estimated from ``num_perm`` MinHash
    values and found through LSH bands (see :mod:`ft_data.minhash`); a row names the earliest
    kept row it is that similar to. Exact duplicates are near duplicates too. Rows without
    words are near duplicates of each other.

    The result depends on the texts, their order and the arguments only (``seed`` picks the
    hash functions), the same in every run. Texts are read once, in batches, and not kept.
    """
    if mode not in ("exact", "near"):
        raise ValueError(f"mode must be 'exact' or 'near', not {mode!r}")
    batches = _batches(texts, _BATCH_ROWS)
    if mode == "exact":
        return _exact_duplicates(batches)
    hasher = MinHasher(num_perm, seed)
    index = NearDuplicateIndex(threshold=threshold, num_perm=num_perm)
    dropped, duplicate_of, similarity = [], [], []
    for batch in batches:
        signatures = hasher.signatures(word_ngrams(batch, ngram), len(batch))
        first = index.rows_seen
        of, share = index.add(signatures)
        rows = np.flatnonzero(of >= 0)
        dropped.append(first + rows)
        duplicate_of.append(of[rows])
        similarity.append(share[rows])
    return DuplicateReport(
        "near",
        index.rows_seen,
        _join(dropped, np.int64),
        _join(duplicate_of, np.int64),
        _join(similarity, np.float64),
        threshold,
        num_perm,
    )


def _exact_duplicates(batches: Iterator[list[str]]) -> DuplicateReport:
    # Two uint64 halves of a 128-bit hash per row (16 bytes a row): a chance collision among
    # 10**9 rows has a probability near 10**-21.
    digests = bytearray()
    for batch in batches:
        for text in batch:
            digests += normalized_digest(text)
    halves = np.frombuffer(bytes(digests), dtype="<u8").reshape(-1, 2)
    rows = len(halves)
    order = np.lexsort((np.arange(rows), halves[:, 1], halves[:, 0]))
    ordered = halves[order]
    repeat = np.zeros(rows, dtype=bool)
    repeat[1:] = (ordered[1:] == ordered[:-1]).all(axis=1)
    # Each repeated row points at the first row of its run of equal hashes (its first occurrence).
    run_start = np.maximum.accumulate(np.where(repeat, 0, np.arange(rows)))
    dropped, duplicate_of = order[repeat], order[run_start[repeat]]
    by_row = np.argsort(dropped)
    return DuplicateReport(
        "exact",
        rows,
        dropped[by_row].astype(np.int64),
        duplicate_of[by_row].astype(np.int64),
        np.ones(len(dropped)),
    )


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, size)):
        for text in batch:
            if not isinstance(text, str):
                raise TypeError(f"expected texts (str), got {type(text).__name__}")
        yield batch


def _join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
