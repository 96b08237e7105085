"""Constrained decoding for `response_format` (`json_object`, `json_schema`) through
llguidance: the grammar of a JSON schema, and a matcher that masks the logits of every token
the grammar does not allow next and follows the tokens chosen."""

from __future__ import annotations

from typing import Any

import numpy as np

from ft_models.generate import GenerationError
from ft_server.errors import ApiError


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The llguidance grammar of JSON following `schema` (None: any JSON object)."""
    llguidance = _llguidance()
    try:
        return str(
            llguidance.LLMatcher.grammar_from_json_schema(
                schema if schema is not None else {"type": "object"},
                defaults={"whitespace_flexible": False},
            )
        )
    except ValueError as error:
        raise ApiError(
            400, f"response_format: the JSON schema is not usable: {error}", param="response_format"
        ) from None


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:
        raise ApiError(
            400,
            "response_format needs llguidance on the server: pip install llguidance",
            param="response_format",
            code="unsupported_response_format",
        ) from None
    return llguidance


class GrammarMatcher:
    """An llguidance matcher over a generator's vocabulary: masks logits, follows tokens."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        import llguidance
        import llguidance.numpy as llnp

        self._llnp = llnp
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise GenerationError(f"response_format: {self.matcher.get_error()}")
        self.vocab = int(tokenizer.vocab_size)
        self.bitmask = llnp.allocate_token_bitmask(1, self.vocab)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        self._llnp.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.vocab]
        allowed = np.zeros(logits.shape[0], dtype=bool)
        size = min(self.vocab, logits.shape[0])
        allowed[:size] = bits[:size].astype(bool)
        return np.where(allowed, logits, -np.inf).astype(np.float32)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GenerationError(f"response_format: {self.matcher.get_error()}")

    def done(self) -> bool:
        return bool(self.matcher.is_stopped())


__all__ = ["GrammarMatcher", "json_grammar"]
