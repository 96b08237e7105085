"""Conversations and raw text to token ids with a loss mask (1: train on this token)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ft_data.conversation import Conversation
from ft_data.templates import ChatTemplate, Span
from ft_data.tokenizer import ModelTokenizer

TrainOn = Literal["assistant", "all"]


@dataclass(frozen=True)
class TokenizedExample:
    """``tokens`` (int32) and ``loss_mask`` (uint8, same length)."""

    tokens: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_conversations(
    conversations: Sequence[Conversation],
    template: ChatTemplate,
    tokenizer: ModelTokenizer,
    *,
    train_on: TrainOn = "assistant",
) -> list[TokenizedExample]:
    """Render each conversation with ``template`` and tokenize it (without adding special
    tokens: templates write their own, as ``apply_chat_template`` does).

    With ``train_on="assistant"`` (the default) the mask is 1 on every token that overlaps an
    assistant turn, in every turn, including the end-of-turn or eos token that closes it, so
    the model learns to stop. ``train_on="all"`` trains every token. Raises
    :class:`~ft_data.errors.RowProblem` for a conversation the template cannot render.
    """
    rendered = [
        template.render_with_spans(conversation, tokenizer.special_tokens)
        for conversation in conversations
    ]
    encodings = tokenizer.tokenizer.encode_batch(
        [text for text, _ in rendered], add_special_tokens=False
    )
    examples = []
    for encoding, (_, spans) in zip(encodings, rendered, strict=True):
        tokens = np.asarray(encoding.ids, dtype=np.int32)
        if train_on == "all":
            mask = np.ones(len(tokens), dtype=np.uint8)
        else:
            mask = spans_to_mask(np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2), spans)
        examples.append(TokenizedExample(tokens, mask))
    return examples


def spans_to_mask(offsets: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """1 for each token whose ``[start, end)`` character offsets overlap one of ``spans``."""
    mask = np.zeros(len(offsets), dtype=bool)
    starts, ends = offsets[:, 0], offsets[:, 1]
    for start, end in spans:
        mask |= (starts < end) & (ends > start)
    return mask.astype(np.uint8)


def tokenize_texts(texts: Sequence[str], tokenizer: ModelTokenizer) -> list[TokenizedExample]:
    """Raw text for continued pretraining: the tokenizer's own special tokens (e.g. BOS), the
    text, then eos (when the tokenizer has one and did not add it); every token trained."""
    eos = tokenizer.eos_token_id
    examples = []
    for encoding in tokenizer.tokenizer.encode_batch(list(texts), add_special_tokens=True):
        ids = encoding.ids
        if eos is not None and (not ids or ids[-1] != eos):
            ids = [*ids, eos]
        tokens = np.asarray(ids, dtype=np.int32)
        examples.append(TokenizedExample(tokens, np.ones(len(tokens), dtype=np.uint8)))
    return examples
