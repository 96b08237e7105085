"""Text as it is generated: token ids to text deltas (IncrementalDecoder), cut before stop
strings without ever showing text a stop string later takes back (StopFilter), and the
iterator a caller reads (GenerationStream)."""

from __future__ import annotations

from collections.abc import Generator as GeneratorFunction
from collections.abc import Iterator, Sequence
from typing import Any

from ft_models.generation.options import GenerationResult


class IncrementalDecoder:
    """Token ids in, text deltas out; the deltas join to `decode(ids, skip_special_tokens)`.

    Each new token is decoded together with the tokens just before it, and only the new part is
    emitted: decoding one token alone loses the space a SentencePiece tokenizer puts before a
    word, and a multi-byte character split over tokens waits until it is whole.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if after.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 character: wait for the rest
        delta = after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :]


class StopFilter:
    """Text in, text out, cut before the first stop string. It holds back a tail that could be
    the start of a stop string until the next text settles it, so nothing it lets out is ever
    taken back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.emitted = 0
        self.matched: str | None = None

    def push(self, delta: str) -> str:
        """The text that is now safe to show; sets `matched` when a stop string appeared."""
        self.text += delta
        # No stop string starts before `emitted` (it would have been held back), so search
        # from there; the earliest match wins.
        found: tuple[int, str] | None = None
        for stop in self.stops:
            index = self.text.find(stop, self.emitted)
            if index >= 0 and (found is None or index < found[0]):
                found = (index, stop)
        if found is not None:
            self.text, self.matched = self.text[: found[0]], found[1]
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def flush(self) -> str:
        """The rest of the text, at the end of generation."""
        return self._emit(len(self.text))

    def finish(self, decoder: Any) -> str:
        """At the end of generation: the decoder's held bytes, then the rest of the text,
        still cut at a stop string they complete (`matched` says so)."""
        if self.matched is not None:
            return ""
        tail = self.push(decoder.flush())
        if self.matched is None:
            tail += self.flush()
        return tail

    def _held_back(self) -> int:
        longest = 0
        pending = len(self.text) - self.emitted
        for stop in self.stops:
            for size in range(min(len(stop) - 1, pending), longest, -1):
                if self.text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, end: int) -> str:
        end = max(end, self.emitted)
        out, self.emitted = self.text[self.emitted : end], end
        return out


class GenerationStream(Iterator[str]):
    """Text deltas as they are generated; after the last one, `result` holds the
    GenerationResult (None until then)."""

    def __init__(self, steps: GeneratorFunction[str, None, GenerationResult]) -> None:
        self._steps = steps
        self.result: GenerationResult | None = None

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._steps)
        except StopIteration as done:
            self.result = done.value
            raise StopIteration from None

    def close(self) -> None:
        """Stop generating (the result stays None)."""
        self._steps.close()


__all__ = ["GenerationStream", "IncrementalDecoder", "StopFilter"]
