"""Conversations and raw text to token ids with a loss mask (1: train on this token)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ft_data.conversation import Conversation
from ft_data.templates import ChatTemplate, Span
from ft_data.tokenizer import ModelTokenizer

TrainOn = Literal["assistant", "all"]

# Longest vocabulary entry (in characters) by tokenizer fingerprint; see char_limit.
_LONGEST_TOKEN: dict[str, int] = {}


@dataclass(frozen=True)
class TokenizedExample:
    """``tokens`` (int32) and ``loss_mask`` (uint8, same length).

    ``uncut_chars`` is the text's length in characters when it was longer than ``max_chars``
    and only its start was tokenized; 0 when the whole text was tokenized.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    uncut_chars: int = 0

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
    rendered = [
        template.render_with_spans(conversation, tokenizer.special_tokens)
        for conversation in conversations
    ]
    texts = [_cut(text, max_chars) for text, _ in rendered]
    # Offsets are needed for the mask only; encoding without them takes about a fifth less.
    backend = tokenizer.tokenizer
    encode = backend.encode_batch_fast if train_on == "all" else backend.encode_batch
    encodings = encode(texts, add_special_tokens=False)
    examples = []
    for encoding, text, (full, spans) in zip(encodings, texts, rendered, strict=True):
        tokens = np.asarray(encoding.ids, dtype=np.int32)
        if train_on == "all":
            mask = np.ones(len(tokens), dtype=np.uint8)
        else:
            mask = _span_mask(encoding, len(tokens), spans)
        examples.append(TokenizedExample(tokens, mask, len(full) if text is not full else 0))
    return examples


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
    A text longer than ``max_chars`` is cut there before tokenizing (see :func:`char_limit`)."""
    eos = tokenizer.eos_token_id
    cut = [_cut(text, max_chars) for text in texts]
    examples = []
    encodings = tokenizer.tokenizer.encode_batch_fast(cut, add_special_tokens=True)  # no offsets
    for encoding, text, short in zip(encodings, texts, cut, strict=True):
        ids = encoding.ids
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        tokens = np.asarray(ids, dtype=np.int32)
        uncut = len(text) if short is not text else 0
        examples.append(TokenizedExample(tokens, np.ones(len(tokens), dtype=np.uint8), uncut))
    return examples


def _cut(text: str, max_chars: int | None) -> str:
    return text if max_chars is None or len(text) <= max_chars else text[:max_chars]
