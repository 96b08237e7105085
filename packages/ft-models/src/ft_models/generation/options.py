"""What a generation is asked for (GenerationOptions) and what it gives (GenerationResult)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs

FinishReason = Literal["stop", "length"]
Message = Mapping[str, Any]
Prompt = str | Sequence[Message] | Sequence[int]
"""Text, chat messages, or token ids already rendered (e.g. a prompt cut from prepared data)."""


class GenerationError(ValueError):
    """Generation cannot run as asked: what is wrong and what to do."""


@contextlib.contextmanager
def adapter_errors() -> Iterator[None]:
    """An `ft_models.adapters.AdapterError` (or a SafetensorsError of an adapter's file)
    raised inside, as a GenerationError: the error generation promises its callers (the CLI
    reports those), with the adapter's own words."""
    from ft_models.adapters import AdapterError
    from ft_models.safetensors_io import SafetensorsError

    try:
        yield
    except (AdapterError, SafetensorsError) as error:
        raise GenerationError(str(error)) from error


def _positive_int(name: str, minimum: int) -> Any:
    def check(_: Any, __: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise GenerationError(f"{name} must be an integer >= {minimum}, not {value!r}")

    return check


def _stops(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class GenerationOptions:
    """How to pick tokens. The defaults give greedy decoding of up to 256 tokens."""

    max_tokens: int = attrs.field(default=256, validator=_positive_int("max_tokens", 1))
    """The most tokens to generate; reaching it ends with finish_reason 'length'."""
    temperature: float = 0.0
    """0 is greedy (the most likely token, always); higher is more random."""
    top_p: float = 1.0
    """Sample only from the smallest set of tokens whose probabilities add up to top_p."""
    top_k: int = attrs.field(default=0, validator=_positive_int("top_k", 0))
    """Sample only from the k most likely tokens (0: no limit)."""
    repetition_penalty: float = 1.0
    """> 1 makes tokens already in the prompt or the answer less likely (transformers' rule:
    a positive logit is divided by it, a negative one multiplied)."""
    stop: tuple[str, ...] = attrs.field(default=(), converter=_stops)
    """Strings that end the answer; the answer is cut just before the first one."""
    seed: int | None = None
    """Seed of the sampler's random numbers: the same seed gives the same text."""

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GenerationError(f"temperature must be >= 0, not {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise GenerationError(
                f"repetition_penalty must be > 0 (1 is off), not {self.repetition_penalty!r}"
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise GenerationError(f"stop strings must be non-empty strings, not {self.stop!r}")


@attrs.frozen
class GenerationResult:
    """What one generation produced."""

    text: str
    """The answer: special tokens left out, cut before the stop string that ended it."""
    tokens: tuple[int, ...]
    """Every token id the model produced, including an end-of-sequence token or the tokens of a
    stop string that ended it."""
    finish_reason: FinishReason
    """'stop' (end-of-sequence token or stop string) or 'length' (max_tokens reached)."""
    prompt_tokens: int
    tokens_per_s: float
    """Decoding speed: tokens generated after the first, per second after the prompt was read."""
    prompt_tokens_per_s: float = 0.0
    """Prefill speed: prompt tokens per second of the first forward pass."""
    elapsed_s: float = 0.0
    stop: str | None = None
    """The stop string that ended the answer, if one did."""


__all__ = [
    "FinishReason",
    "GenerationError",
    "GenerationOptions",
    "GenerationResult",
    "Message",
    "Prompt",
    "adapter_errors",
]
