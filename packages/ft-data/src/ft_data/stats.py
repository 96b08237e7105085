"""Dataset statistics: lengths in characters and tokens, token complexity, class balance and
the share of trained tokens of a prepared dataset, with a plain-text report.

Everything is computed in one pass over the rows, in batches; per row only its lengths are
kept (a few bytes), so percentiles are exact.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ft_data.hdf5 import PreparedDataset
from ft_data.tokenizer import ModelTokenizer

PERCENTILES = (50, 90, 95, 99)
_SENTENCEPIECE_BYTE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_MASK_CHUNK = 1 << 22  # loss-mask values read at once from a prepared dataset


@dataclass(frozen=True)
class Histogram:
    """``counts[i]`` values fall in ``[edges[i], edges[i + 1])``."""

    edges: list[int]
    counts: list[int]


@dataclass(frozen=True)
class LengthStats:
    """A length distribution. Percentiles are nearest-rank: ``p90`` is the smallest length
    that at least 90% of the rows do not exceed. ``above_max`` counts the rows longer than
    ``max_length`` (None when no limit was given)."""

    count: int
    total: int
    mean: float
    min: int
    p50: int
    p90: int
    p95: int
    p99: int
    max: int
    max_length: int | None
    above_max: int | None
    histogram: Histogram


@dataclass(frozen=True)
class TokenComplexity:
    """How the tokenizer sees the texts (tokenized without special tokens).

    ``type_token_ratio``: distinct token ids / tokens. ``chars_per_token``: characters /
    tokens (the average token length). ``unknown_share``: tokens that are the model's unknown
    token. ``byte_fallback_share``: tokens that stand for raw bytes rather than text: for
    byte-level BPE (GPT-2 style) tokens whose bytes are not whole UTF-8 characters (most often
    one byte of a longer character), for SentencePiece-style vocabularies ``<0xNN>`` tokens.
    """

    tokens: int
    distinct_tokens: int
    type_token_ratio: float
    chars_per_token: float
    unknown_tokens: int
    unknown_share: float
    byte_fallback_tokens: int
    byte_fallback_share: float


@dataclass(frozen=True)
class ClassBalance:
    """Rows per label, most frequent first (ties by label), their shares of the labelled rows,
    and ``imbalance_ratio``: the largest class's count over the smallest's. Rows without a
    label are counted in ``unlabelled`` only."""

    counts: dict[str, int]
    shares: dict[str, float]
    imbalance_ratio: float
    unlabelled: int


@dataclass(frozen=True)
class PreparedStats:
    """A prepared dataset: examples, tokens, trained tokens (loss mask 1) and their share."""

    examples: int
    tokens: int
    trained_tokens: int
    trained_share: float
    lengths: LengthStats


@dataclass(frozen=True)
class DatasetStats:
    """What :func:`dataset_stats` found; a part is None when its input was not given."""

    rows: int
    chars: LengthStats | None
    tokens: LengthStats | None
    complexity: TokenComplexity | None
    labels: ClassBalance | None
    prepared: PreparedStats | None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return asdict(self)


def dataset_stats(
    texts: Iterable[str] | None = None,
    *,
    tokenizer: ModelTokenizer | None = None,
    labels: Iterable[str | None] | None = None,
    prepared: PreparedDataset | str | Path | None = None,
    max_seq_length: int | None = None,
    bins: int | Sequence[int] = 20,
    batch_rows: int = 1024,
) -> DatasetStats:
    """Statistics of ``texts`` (lengths in characters; with ``tokenizer``, in tokens and token
    complexity), of ``labels`` (class balance) and of a ``prepared`` dataset (example lengths
    and the trained-token share). Each input is read once.

    Token lengths are those of the texts as given, without special tokens: pass the texts as
    the chat template renders them, or a prepared dataset, to compare with ``max_seq_length``
    exactly. For a prepared dataset without ``max_seq_length``, its own ``max_length`` is used.
    ``bins`` is the most bins a histogram may have, all of one round width (1, 2 or 5 times a
    power of ten) from 0 past the longest row; or explicit bin edges.
    """
    rows, chars, tokens, complexity = 0, None, None, None
    if texts is not None:
        char_lengths: list[int] = []
        token_lengths: list[int] = []
        counter = _TokenCounter(tokenizer) if tokenizer is not None else None
        iterator = iter(texts)
        while batch := list(itertools.islice(iterator, batch_rows)):
            char_lengths += [len(text) for text in batch]
            if counter is not None:
                token_lengths += counter.add(batch)
        rows = len(char_lengths)
        chars = length_stats(char_lengths, max_length=None, bins=bins)
        if counter is not None:
            tokens = length_stats(token_lengths, max_length=max_seq_length, bins=bins)
            complexity = counter.complexity(sum(char_lengths))
    balance = class_balance(labels) if labels is not None else None
    prepared_stats = None
    if prepared is not None:
        prepared_stats = _prepared_stats(prepared, max_seq_length, bins)
        rows = rows or prepared_stats.examples
    return DatasetStats(rows, chars, tokens, complexity, balance, prepared_stats)


def length_stats(
    lengths: Sequence[int] | np.ndarray,
    *,
    max_length: int | None = None,
    bins: int | Sequence[int] = 20,
) -> LengthStats:
    """The distribution of ``lengths`` (see :class:`LengthStats`); zeros for no lengths."""
    values = np.asarray(lengths, dtype=np.int64)
    above = int((values > max_length).sum()) if max_length is not None else None
    if len(values) == 0:
        return LengthStats(0, 0, 0.0, 0, 0, 0, 0, 0, 0, max_length, above, Histogram([0], []))
    p50, p90, p95, p99 = (int(v) for v in np.percentile(values, PERCENTILES, method="inverted_cdf"))
    edges = _edges(int(values.max()), bins)
    counts, _ = np.histogram(values, bins=edges)
    return LengthStats(
        count=len(values),
        total=int(values.sum()),
        mean=float(values.mean()),
        min=int(values.min()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        max=int(values.max()),
        max_length=max_length,
        above_max=above,
        histogram=Histogram([int(e) for e in edges], counts.tolist()),
    )


def class_balance(labels: Iterable[str | None]) -> ClassBalance:
    """Counts and shares per label (labels are compared as text; None means unlabelled)."""
    counts: dict[str, int] = {}
    unlabelled = 0
    for label in labels:
        if label is None:
            unlabelled += 1
        else:
            counts[str(label)] = counts.get(str(label), 0) + 1
    ordered = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    labelled = sum(ordered.values())
    shares = {label: count / labelled for label, count in ordered.items()}
    ratio = max(ordered.values()) / min(ordered.values()) if ordered else 0.0
    return ClassBalance(ordered, shares, ratio, unlabelled)


def _edges(longest: int, bins: int | Sequence[int]) -> np.ndarray:
    if not isinstance(bins, int):
        return np.asarray(bins, dtype=np.int64)
    width = max(1, math.ceil((longest + 1) / bins))
    scale = 10 ** (len(str(width)) - 1)
    width = next(step * scale for step in (1, 2, 5, 10) if step * scale >= width)
    return np.arange(0, width * (longest // width + 2), width, dtype=np.int64)


class _TokenCounter:
    """Token lengths and per-id counts, batch by batch."""

    def __init__(self, tokenizer: ModelTokenizer) -> None:
        self.tokenizer = tokenizer.tokenizer
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.counts = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int64)
        config = json.loads(self.tokenizer.to_str())
        self.unknown = _unknown_ids(config, vocab)
        self.byte_tokens = _byte_token_mask(config, vocab, len(self.counts))

    def add(self, texts: list[str]) -> list[int]:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = [len(encoding.ids) for encoding in encodings]
        ids = np.fromiter(
            itertools.chain.from_iterable(e.ids for e in encodings), np.int64, sum(lengths)
        )
        self.counts += np.bincount(ids, minlength=len(self.counts))[: len(self.counts)]
        return lengths

    def complexity(self, characters: int) -> TokenComplexity:
        tokens = int(self.counts.sum())
        unknown = int(self.counts[self.unknown].sum())
        byte_fallback = int(self.counts[self.byte_tokens].sum())
        distinct = int((self.counts > 0).sum())
        return TokenComplexity(
            tokens=tokens,
            distinct_tokens=distinct,
            type_token_ratio=distinct / tokens if tokens else 0.0,
            chars_per_token=characters / tokens if tokens else 0.0,
            unknown_tokens=unknown,
            unknown_share=unknown / tokens if tokens else 0.0,
            byte_fallback_tokens=byte_fallback,
            byte_fallback_share=byte_fallback / tokens if tokens else 0.0,
        )


def _unknown_ids(config: dict[str, Any], vocab: dict[str, int]) -> list[int]:
    """The model's own unknown token (BPE/WordPiece/WordLevel ``unk_token``, Unigram
    ``unk_id``); tokenizer_config's nominal unk_token (GPT-2 names one it never emits) is not."""
    model = config.get("model") or {}
    if isinstance(model.get("unk_id"), int):
        return [model["unk_id"]]
    token = model.get("unk_token")
    return [vocab[token]] if isinstance(token, str) and token in vocab else []


def _byte_token_mask(config: dict[str, Any], vocab: dict[str, int], size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    added = {token.get("content") for token in config.get("added_tokens") or []}
    byte_level = _mentions(config.get("pre_tokenizer"), "ByteLevel") or _mentions(
        config.get("decoder"), "ByteLevel"
    )
    alphabet = _byte_level_alphabet() if byte_level else {}
    for token, token_id in vocab.items():
        if token in added:
            continue
        if _SENTENCEPIECE_BYTE.fullmatch(token):
            mask[token_id] = True
        elif byte_level and all(char in alphabet for char in token):
            try:
                bytes(alphabet[char] for char in token).decode("utf-8")
            except UnicodeDecodeError:
                mask[token_id] = True
    return mask


def _mentions(node: Any, kind: str) -> bool:
    """Whether a pre_tokenizer/decoder config (possibly a Sequence of them) uses ``kind``."""
    if isinstance(node, dict):
        return node.get("type") == kind or any(_mentions(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(item, kind) for item in node)
    return False


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the character standing for each byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {byte: chr(byte) for byte in printable}
    extra = (byte for byte in range(256) if byte not in chars)
    chars.update({byte: chr(256 + n) for n, byte in enumerate(extra)})
    return {char: byte for byte, char in chars.items()}


def _prepared_stats(
    prepared: PreparedDataset | str | Path, max_seq_length: int | None, bins: int | Sequence[int]
) -> PreparedStats:
    dataset = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset(prepared)
    try:
        limit = max_seq_length or int(dataset.attrs.get("max_length") or 0) or None
        trained = 0
        for start in range(0, dataset.num_tokens, _MASK_CHUNK):
            _, mask = dataset.read_tokens(start, min(start + _MASK_CHUNK, dataset.num_tokens))
            trained += int(np.count_nonzero(mask))
        tokens = dataset.num_tokens
        return PreparedStats(
            examples=len(dataset),
            tokens=tokens,
            trained_tokens=trained,
            trained_share=trained / tokens if tokens else 0.0,
            lengths=length_stats(dataset.lengths, max_length=limit, bins=bins),
        )
    finally:
        if dataset is not prepared:
            dataset.close()


def render_stats(stats: DatasetStats, *, width: int = 40) -> str:
    """A plain-text report for a terminal: summary lines and a histogram per length
    distribution, drawn with Unicode block characters ``width`` cells wide at most."""
    lines = [f"rows: {stats.rows}"]
    if stats.chars is not None:
        lines += render_lengths("length in characters", stats.chars, width)
    if stats.tokens is not None:
        lines += render_lengths("length in tokens", stats.tokens, width)
    if (c := stats.complexity) is not None:
        lines += [
            "",
            f"tokens: {c.tokens}, distinct: {c.distinct_tokens} "
            f"(type/token ratio {c.type_token_ratio:.3f}), {c.chars_per_token:.2f} characters a token",
            f"unknown tokens: {c.unknown_tokens} ({c.unknown_share:.2%}); "
            f"byte-fallback tokens: {c.byte_fallback_tokens} ({c.byte_fallback_share:.2%})",
        ]
    if (b := stats.labels) is not None:
        lines += ["", f"labels: {len(b.counts)} classes, imbalance ratio {b.imbalance_ratio:.2f}"]
        if b.unlabelled:
            lines[-1] += f", {b.unlabelled} rows unlabelled"
        name_width = max((len(label) for label in b.counts), default=0)
        peak = max(b.counts.values(), default=0)
        for label, count in b.counts.items():
            lines.append(
                f"  {label:<{name_width}} │{_bar(count, peak, width):<{width}} "
                f"{count} ({b.shares[label]:.1%})"
            )
    if (p := stats.prepared) is not None:
        lines += [
            "",
            f"prepared: {p.examples} examples, {p.tokens} tokens, "
            f"{p.trained_tokens} trained ({p.trained_share:.1%})",
        ]
        lines += render_lengths("example length in tokens", p.lengths, width)
    return "\n".join(lines)


def render_lengths(title: str, s: LengthStats, width: int = 40) -> list[str]:
    """A blank line, a summary line and the histogram of ``s`` in lines of Unicode bars."""
    head = (
        f"{title}: mean {s.mean:.1f}, p50 {s.p50}, p90 {s.p90}, p95 {s.p95}, p99 {s.p99}, "
        f"max {s.max}"
    )
    if s.max_length is not None:
        head += f"; {s.above_max} above {s.max_length}"
    edges, counts = s.histogram.edges, s.histogram.counts
    digits = len(str(max(edges[-1] - 1, 0)))
    peak = max(counts, default=0)
    return [
        "",
        head,
        *(
            f"  {low:>{digits}}–{high - 1:<{digits}} │{_bar(count, peak, width):<{width}} {count}"
            for low, high, count in zip(edges[:-1], edges[1:], counts, strict=True)
        ),
    ]


def _bar(value: int, peak: int, width: int) -> str:
    """``value`` as a bar of ``width * value / peak`` cells, in eighths of a cell."""
    eighths = round(8 * width * value / peak) if peak else 0
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]
