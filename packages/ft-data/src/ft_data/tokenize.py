"""Conversations and raw text to token ids with a loss mask (1: train on this token)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ft_data.conversation import Conversation
from ft_data.errors import RowProblem
from ft_data.template_batch import render_batch
from ft_data.templates import ChatTemplate, Span
from ft_data.tokenizer import ModelTokenizer

TrainOn = Literal["assistant", "all"]

# Longest vocabulary entry (in characters) by tokenizer fingerprint; see char_limit.
_LONGEST_TOKEN: dict[str, int] = {}
_BYTE_LENGTHS: dict[str, np.ndarray | None] = {}  # see token_byte_lengths


@dataclass(frozen=True)
class TokenizedExample:
    """``tokens`` (int32) and ``loss_mask`` (uint8, same length).

    ``uncut_chars`` is the text's length in characters when it was longer than ``max_chars``
    and only its start was tokenized; 0 when the whole text was tokenized.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    uncut_chars: int = 0
    unrendered_reasoning: int = 0  # assistant turns whose reasoning the template left out
    rejected: TokenizedExample | None = None  # a preference pair's rejected side

    def __len__(self) -> int:
        return len(self.tokens)


def char_limit(tokenizer: ModelTokenizer, max_length: int) -> int:
    """A number of characters that surely holds more than ``max_length`` tokens.

    No token covers more characters than its vocabulary entry is long, so a text longer than
    ``max_length`` times the longest entry has more than ``max_length`` tokens. Cutting a text
    there before tokenizing keeps a 100 MB row from costing gigabytes, and changes nothing in
    its first ``max_length`` tokens (a tokenizer with a normalizer that shortens text can
    break the bound; callers re-tokenize a cut text that came out short).
    """
    longest = _LONGEST_TOKEN.get(tokenizer.fingerprint)
    if longest is None:
        vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
        longest = _LONGEST_TOKEN[tokenizer.fingerprint] = max(map(len, vocab), default=1)
    return (max_length + 1) * max(longest, 1) + 1024


def tokenize_conversations(
    conversations: Sequence[Conversation],
    template: ChatTemplate,
    tokenizer: ModelTokenizer,
    *,
    train_on: TrainOn = "assistant",
    max_chars: int | None = None,
) -> list[TokenizedExample]:
    """Render each conversation with ``template`` and tokenize it (without adding special
    tokens: templates write their own, as ``apply_chat_template`` does).

    With ``train_on="assistant"`` (the default) the mask is 1 on every token that overlaps an
    assistant turn, in every turn, including the end-of-turn or eos token that closes it, so
    the model learns to stop. ``train_on="all"`` trains every token. A rendered text longer
    than ``max_chars`` is cut there before tokenizing (see :func:`char_limit`). Raises
    :class:`~ft_data.errors.RowProblem` for a conversation the template cannot render.
    """
    rendered = render_batch(template, conversations, tokenizer.special_tokens)
    rendered = [
        (text, trained_spans(conversation, spans))
        for conversation, (text, spans) in zip(conversations, rendered, strict=True)
    ]
    texts = [_cut(text, max_chars) for text, _ in rendered]
    backend = tokenizer.tokenizer
    byte_lengths = None if train_on == "all" else token_byte_lengths(tokenizer)
    masks: list[np.ndarray] | None = None
    if train_on == "all" or byte_lengths is not None:
        # No offsets asked of the tokenizer: that costs about a fifth of its time.
        encoded = backend.encode_batch_fast(texts, add_special_tokens=False)
        ids = [encoding.ids for encoding in encoded]
        if byte_lengths is None:
            masks = [np.ones(len(row), dtype=np.uint8) for row in ids]
        else:
            masks = _byte_masks(ids, texts, [spans for _, spans in rendered], byte_lengths)
    if masks is None:  # offsets needed (another kind of tokenizer, or bytes not covered)
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        ids = [encoding.ids for encoding in encodings]
        masks = [
            _span_mask(encoding, len(encoding.ids), spans)
            for encoding, (_, spans) in zip(encodings, rendered, strict=True)
        ]
    return [
        TokenizedExample(
            np.asarray(row, dtype=np.int32),
            mask,
            len(full) if text is not full else 0,
            unrendered_reasoning(conversation, full),
        )
        for row, mask, text, (full, _), conversation in zip(
            ids, masks, texts, rendered, conversations, strict=True
        )
    ]


def trained_spans(conversation: Conversation, spans: list[Span]) -> list[Span]:
    """The spans of the assistant turns to train on: all of them, but those of messages with
    ``weight`` 0. Raises :class:`~ft_data.errors.RowProblem` when the template's spans cannot
    be matched to the assistant messages one to one."""
    messages = conversation.messages
    if all(message.weight != 0 for message in messages):
        return spans
    assistants = [message for message in messages if message.role == "assistant"]
    if len(assistants) != len(spans):
        raise RowProblem(
            f"a message has weight 0, but the template marks {len(spans)} assistant spans for "
            f"{len(assistants)} assistant messages, so which one to leave out is unknown"
        )
    return [span for span, message in zip(spans, assistants, strict=True) if message.weight != 0]


def unrendered_reasoning(conversation: Conversation, text: str) -> int:
    """How many messages' reasoning does not appear in ``text``, the rendered conversation
    (templates differ: some write ``reasoning_content``, some only in the last turn, most
    not at all)."""
    return sum(
        1
        for message in conversation.messages
        if message.reasoning_content and message.reasoning_content.strip() not in text
    )


def token_byte_lengths(tokenizer: ModelTokenizer) -> np.ndarray | None:
    """For a byte-level BPE tokenizer that leaves the text's bytes as they are (no normalizer,
    no prefix space, added tokens that strip nothing, offsets not trimmed): the number of
    UTF-8 bytes of each token id, so that a row's tokens lay end to end cover its bytes
    exactly and token offsets follow from the ids alone. None for any other tokenizer."""
    if tokenizer.fingerprint not in _BYTE_LENGTHS:
        _BYTE_LENGTHS[tokenizer.fingerprint] = _byte_lengths(tokenizer)
    return _BYTE_LENGTHS[tokenizer.fingerprint]


def _byte_lengths(tokenizer: ModelTokenizer) -> np.ndarray | None:
    config = json.loads(tokenizer.tokenizer.to_str())
    model = config.get("model") or {}
    pre = config.get("pre_tokenizer") or {}
    pre_list = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    post = config.get("post_processor") or {}
    post_list = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    added = config.get("added_tokens") or []
    if (
        config.get("normalizer") is not None
        or model.get("type") != "BPE"
        or model.get("byte_fallback")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or not any(p.get("type") == "ByteLevel" for p in pre_list)
        or any(p.get("type") not in ("ByteLevel", "Digits", "Split") for p in pre_list)
        or any(p.get("type") == "Split" and p.get("behavior") == "Removed" for p in pre_list)
        or any(p.get("type") == "ByteLevel" and p.get("add_prefix_space") for p in pre_list)
        or any(p.get("type") not in (None, "TemplateProcessing", "ByteLevel") for p in post_list)
        or any(p.get("type") == "ByteLevel" and p.get("trim_offsets") for p in post_list)
        or any(token.get("lstrip") or token.get("rstrip") for token in added)
    ):
        return None
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    special = {token["content"] for token in added}
    lengths = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int64)
    for token, token_id in vocab.items():
        # Byte-level vocabulary entries spell one byte per character.
        lengths[token_id] = len(token.encode("utf-8")) if token in special else len(token)
    return lengths


def _byte_masks(
    ids: list[list[int]],
    texts: list[str],
    spans: list[list[Span]],
    byte_lengths: np.ndarray,
) -> list[np.ndarray] | None:
    """The masks :func:`spans_to_mask` gives, from each token's byte range (the running sum of
    the byte lengths of the ids), for a whole batch in a few array operations. Checks that
    each row's tokens cover exactly its bytes, and returns None when one does not."""
    counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(counts.sum()))
    ends = np.cumsum(byte_lengths[flat])  # where each token ends, in the batch's bytes
    starts = ends - byte_lengths[flat]
    sizes = [len(text) if text.isascii() else len(text.encode("utf-8")) for text in texts]
    row_end = np.cumsum(sizes, dtype=np.int64)
    row_start = row_end - sizes
    token_end = np.cumsum(counts)
    covered = ends[token_end[counts > 0] - 1]
    if not np.array_equal(covered, row_end[counts > 0]) or np.any(
        row_end[counts == 0] != row_start[counts == 0]
    ):
        return None
    low, high = [], []
    for row, (text, row_spans) in enumerate(zip(texts, spans, strict=True)):
        ascii_text = text.isascii()
        for span_start, span_end in row_spans:
            start, end = min(span_start, len(text)), min(span_end, len(text))  # a cut text
            if end <= start:
                continue
            base = int(row_start[row])
            low.append(base + (start if ascii_text else len(text[:start].encode("utf-8"))))
            high.append(base + (end if ascii_text else len(text[:end].encode("utf-8"))))
    change = np.zeros(len(flat) + 1, dtype=np.int64)
    if low:
        # Token k overlaps [low, high) when starts[k] < high and ends[k] > low.
        first = np.searchsorted(ends, np.asarray(low), side="right")
        last = np.searchsorted(starts, np.asarray(high), side="left")
        np.add.at(change, first, 1)
        np.add.at(change, last, -1)
    mask = (np.cumsum(change[:-1]) > 0).astype(np.uint8)
    return np.split(mask, token_end[:-1])


def spans_to_mask(offsets: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """1 for each token whose ``[start, end)`` character offsets overlap one of ``spans``."""
    mask = np.zeros(len(offsets), dtype=bool)
    starts, ends = offsets[:, 0], offsets[:, 1]
    for start, end in spans:
        mask |= (starts < end) & (ends > start)
    return mask.astype(np.uint8)


def _span_mask(encoding: Any, length: int, spans: Sequence[Span]) -> np.ndarray:
    """What :func:`spans_to_mask` gives, found from each span's first and last character
    rather than from every token's offsets: turning all offsets into Python tuples and numpy
    cost more than the rest of the mask. Falls back to the offsets for an empty span or one
    whose edge is on a character no token covers."""
    mask = np.zeros(length, dtype=np.uint8)
    for start, end in spans:
        first = encoding.char_to_token(start) if end > start else None
        last = encoding.char_to_token(end - 1) if first is not None else None
        if first is None or last is None:  # also an empty span, rare: overlap has edge cases
            return spans_to_mask(np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2), spans)
        # Tokens are in text order; a neighbour can still overlap an edge character (two
        # byte-level tokens of one multi-byte character).
        while first > 0 and encoding.token_to_chars(first - 1)[1] > start:
            first -= 1
        while last + 1 < length and encoding.token_to_chars(last + 1)[0] < end:
            last += 1
        mask[first : last + 1] = 1
    return mask


def tokenize_texts(
    texts: Sequence[str], tokenizer: ModelTokenizer, *, max_chars: int | None = None
) -> list[TokenizedExample]:
    """Raw text for continued pretraining: the tokenizer's own special tokens (e.g. BOS), the
    text, then eos (when the tokenizer has one and did not add it); every token trained.

    Every character is tokenized; a text longer than a million characters is tokenized
    in pieces cut before a space or a line break (memory stays bounded; a token or two at a
    cut may differ from tokenizing it whole, the text they decode to does not). With
    ``max_chars`` only the text's first ``max_chars`` characters are (see :func:`char_limit`).
    """
    eos = tokenizer.eos_token_id
    cut = [_cut(text, max_chars) for text in texts]
    huge = [len(text) > _PIECE_CHARS for text in cut]
    # No offsets asked of the tokenizer; the huge texts are tokenized piece by piece below.
    encodings = tokenizer.tokenizer.encode_batch_fast(
        ["" if big else text for text, big in zip(cut, huge, strict=True)],
        add_special_tokens=True,
    )
    examples = []
    for encoding, text, short, big in zip(encodings, texts, cut, huge, strict=True):
        if big:
            tokens = _piecewise_ids(short, tokenizer)
        else:
            tokens = np.asarray(encoding.ids, dtype=np.int32)
        if eos is not None and (not len(tokens) or tokens[-1] != eos):
            tokens = np.append(tokens, np.int32(eos))
        uncut = len(text) if short is not text else 0
        examples.append(TokenizedExample(tokens, np.ones(len(tokens), dtype=np.uint8), uncut))
    return examples


_PIECE_CHARS = 1 << 20  # a million characters: some 250,000 tokens, tens of MB of encoding


def _piecewise_ids(text: str, tokenizer: ModelTokenizer) -> np.ndarray:
    """The ids (int32) of a huge ``text``, tokenized one piece of at most ``_PIECE_CHARS``
    characters at a time (each piece's encoding freed before the next: a 100 MB text costs
    its ids, 4 bytes a token, and one piece's encoding), with the special tokens the tokenizer
    adds around a text added once, around the whole."""
    backend = tokenizer.tokenizer
    prefix, suffix = _special_edges(tokenizer)
    parts = [np.asarray(prefix, dtype=np.int32)]
    start = 0
    while start < len(text):
        end = min(start + _PIECE_CHARS, len(text))
        if end < len(text):
            # Cut before a space or line break that follows a word: byte-level BPE starts a
            # token there anyway, so the pieces tokenize as the whole text would.
            window = text[max(start + 1, end - 65536) : end]
            at = max(window.rfind(" "), window.rfind("\n"))
            if at > 0:
                end = end - len(window) + at
        encoding = backend.encode_batch_fast([text[start:end]], add_special_tokens=False)[0]
        parts.append(np.asarray(encoding.ids, dtype=np.int32))
        del encoding
        start = end
    parts.append(np.asarray(suffix, dtype=np.int32))
    return np.concatenate(parts)


def _special_edges(tokenizer: ModelTokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor puts before and after a text (e.g. BOS)."""
    backend = tokenizer.tokenizer
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _cut(text: str, max_chars: int | None) -> str:
    return text if max_chars is None or len(text) <= max_chars else text[:max_chars]
