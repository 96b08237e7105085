"""Word n-grams of many texts at once, hashed to 64-bit integers with numpy.

Deduplication and contamination checks look at hundreds of millions of n-grams; hashing them
one by one in Python would take minutes, so a batch of texts is encoded to one UTF-8 byte
buffer and every word and n-gram hash is computed with whole-array operations.

What a word is: a run of ASCII letters and digits or of non-ASCII characters; ASCII
punctuation and whitespace separate words. Texts are case-folded first, so ``"Hello,
World!"`` and ``"hello world"`` have the same words. A text with fewer than ``n`` words has
one n-gram made of all its words; a text with no words has none.

Hashes depend on the bytes only (no per-process salt, unlike Python's ``hash``), so they are
the same in every run, on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_U64 = np.uint64
_P = 0x100000001B3  # FNV-1a's 64-bit prime, the base of the words' polynomial hash
_R = 0x9E3779B97F4A7C15  # combines word hashes into an n-gram hash

_WORD_BYTE = np.zeros(256, dtype=bool)
for _first, _last in ((ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("a"), ord("z"))):
    _WORD_BYTE[_first : _last + 1] = True
_WORD_BYTE[0x80:] = True  # every byte of a non-ASCII character

_P_INVERSE = pow(_P, -1, 1 << 64)  # P is odd, so it has an inverse modulo 2**64
_WINDOW = 1 << 18  # bytes hashed at once: 4 MiB of power tables
_tables: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=_U64), np.ones(1, dtype=_U64))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array: a bijection whose every output bit depends on
    every input bit (the polynomial hashes below mix their low bits poorly on their own)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


@dataclass(frozen=True)
class NgramBatch:
    """The n-grams of a batch of texts, in text order and word order within a text.

    ``row[i]`` is the text (0-based within the batch) of n-gram ``i``, ``hash[i]`` its hash,
    ``first_word[i]`` its first word (an index into ``word_start``/``word_end``, byte offsets
    into ``data``, the batch's case-folded UTF-8 text) and ``words[i]`` its length in words.
    """

    row: np.ndarray
    hash: np.ndarray
    first_word: np.ndarray
    words: np.ndarray
    word_start: np.ndarray
    word_end: np.ndarray
    data: bytes

    def text(self, first_word: int, last_word: int) -> str:
        """The case-folded text from word ``first_word`` to word ``last_word`` (inclusive)."""
        start, end = int(self.word_start[first_word]), int(self.word_end[last_word])
        return self.data[start:end].decode("utf-8", "replace")


def word_ngrams(texts: Sequence[str], n: int) -> NgramBatch:
    """Hash the word ``n``-grams of ``texts`` (see the module docstring for what a word is)."""
    if n < 1:
        raise ValueError(f"n-grams need n >= 1, got {n}")
    encoded = [text.casefold().encode("utf-8", "replace") for text in texts]
    # A space between texts, so that no word runs from one text into the next.
    data = b" ".join(encoded)
    text_start = np.zeros(len(encoded), dtype=np.int64)
    if encoded:
        np.cumsum([len(chunk) + 1 for chunk in encoded[:-1]], out=text_start[1:])
    buf = np.frombuffer(data, dtype=np.uint8)
    is_word = _WORD_BYTE[buf]
    edges = np.diff(is_word.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    word_start = np.flatnonzero(edges == 1)
    word_end = np.flatnonzero(edges == -1)
    word_hash = _word_hashes(buf, word_start, word_end)
    word_row = np.searchsorted(text_start, word_start, side="right") - 1
    counts = np.bincount(word_row, minlength=len(encoded))

    # Whole n-grams: n consecutive words of one text. Horner's rule over the word hashes:
    # hash = w0 * R^(n-1) + w1 * R^(n-2) + ... + w(n-1).
    starts = max(len(word_hash) - n + 1, 0)
    first = np.flatnonzero(word_row[:starts] == word_row[n - 1 : n - 1 + starts])
    combined = word_hash[first]
    for i in range(1, n):
        combined = combined * _U64(_R) + word_hash[first + i]
    size = np.full(len(first), n, dtype=np.int64)
    # A text of 1 to n - 1 words: one n-gram of all of them.
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short):
        short_first = (np.cumsum(counts) - counts)[short]
        short_size = counts[short]
        short_hash = word_hash[short_first]
        for i in range(1, n - 1):
            more = short_size > i
            step = word_hash[np.minimum(short_first + i, len(word_hash) - 1)]
            short_hash = np.where(more, short_hash * _U64(_R) + step, short_hash)
        first = np.concatenate((first, short_first))
        combined = np.concatenate((combined, short_hash))
        size = np.concatenate((size, short_size))
        order = np.argsort(first, kind="stable")
        first, combined, size = first[order], combined[order], size[order]
    combined ^= size.astype(_U64) << _U64(56)
    return NgramBatch(
        row=word_row[first],
        hash=splitmix64(combined),
        first_word=first,
        words=size,
        word_start=word_start,
        word_end=word_end,
        data=data,
    )


def _word_hashes(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Each word's polynomial hash sum(byte[start + k] * P^k), mixed with its length.

    With prefix[i] = sum(byte[j] * P^j for j < i), a word's hash is
    (prefix[end] - prefix[start]) * P^-start: a few whole-array operations for all words.
    The buffer is taken in windows of whole words, so the power tables stay small.
    """
    hashes = np.empty(len(start), dtype=_U64)
    first = 0
    while first < len(start):
        last = max(int(np.searchsorted(end, start[first] + _WINDOW, side="right")), first + 1)
        low, high = int(start[first]), int(end[last - 1])
        powers, inverse = _power_tables(high - low)
        prefix = np.zeros(high - low + 1, dtype=_U64)
        np.cumsum(buf[low:high] * powers[: high - low], out=prefix[1:])
        word_start, word_end = start[first:last] - low, end[first:last] - low
        hashes[first:last] = (prefix[word_end] - prefix[word_start]) * inverse[word_start]
        first = last
    return splitmix64(hashes ^ (end - start).astype(_U64))


def _power_tables(length: int) -> tuple[np.ndarray, np.ndarray]:
    """P^k and P^-k modulo 2**64 for k < length (at least); kept for the next batches."""
    global _tables
    if len(_tables[0]) < length:
        size = 1 << max(length - 1, 1).bit_length()
        powers = []
        for base in (_P, _P_INVERSE):
            table = np.full(size, base, dtype=_U64)
            table[0] = 1
            powers.append(np.cumprod(table, dtype=_U64))  # wraps modulo 2**64, as intended
        _tables = (powers[0], powers[1])
    return _tables
