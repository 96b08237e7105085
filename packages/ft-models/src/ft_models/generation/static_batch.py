"""Continuous batching in the static decode loop: sequences of one Llama-shaped model decoded
together against one preallocated cache (`StaticBatch`), each row at its own position; split
from `static_decode`, whose `StaticDecoder` reads each prompt and runs the layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ft_models.generation.static_decode import StaticDecoder


class StaticBatch:
    """Sequences decoded together in the static loop (continuous batching), with the
    interface of `TorchBatch`: `add(key, prompt)` reads a prompt alone (exactly as
    `StaticDecoder.start`) and copies its cache into the batch's, `step({key: token})` runs one
    forward pass over every row, `remove(key)` moves the last row into the leaver's place. Each
    row keeps its own length; an attention mask keeps every row to its own positions. While
    the batch holds a single row, its step is the decoder's compiled one when it has one."""

    def __init__(self, decoder: StaticDecoder) -> None:
        self.decoder = decoder
        self.reader = decoder.fork()
        """Reads each prompt alone (the single-sequence cache of `decoder` is left alone)."""
        self.keys: list[Any] = []
        self.lengths: list[int] = []
        self.caches: list[Any] = []
        """Per layer: (rows, 2 x key/value heads, capacity, head dim), keys then values."""

    def __len__(self) -> int:
        return len(self.keys)

    def can_join(self) -> bool:
        return True

    def _reserve(self, rows: int, length: int) -> None:
        torch = self.decoder.torch
        have_rows, have_length = (
            (self.caches[0].shape[0], self.caches[0].shape[2]) if self.caches else (0, 0)
        )
        if rows <= have_rows and length <= have_length:
            return
        new_rows = max(rows, have_rows, 4) if rows <= have_rows else max(4, 2 * rows)
        decoder = self.decoder
        new_length = max(have_length, decoder._capacity_for(length))
        weight = decoder.lm_head.weight
        shape = (new_rows, 2 * decoder.kv_heads, new_length, decoder.head_dim)
        caches = [
            torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in decoder.layers
        ]
        used, longest = len(self.keys), max(self.lengths, default=0)
        if used:
            for old, new in zip(self.caches, caches, strict=True):
                new[:used, :, :longest] = old[:used, :, :longest]
        self.caches = caches
        decoder.rotary_tables(new_length)

    def add(self, key: Any, prompt_ids: Sequence[int]) -> np.ndarray:
        """Read `prompt_ids` alone and join the batch as row `key`; the logits after it."""
        if key in self.keys:
            raise ValueError(f"row {key!r} is already in the batch")
        logits = self.reader.start(prompt_ids)
        size = len(prompt_ids)
        row = len(self.keys)
        self._reserve(row + 1, size + 1)
        for cache, read in zip(self.caches, self.reader.caches, strict=True):
            cache[row, :, :size] = read[0, :, :size]
        self.keys.append(key)
        self.lengths.append(size)
        return logits

    def remove(self, key: Any) -> None:
        """Drop row `key` (finished, or its client left): the last row takes its place."""
        row, last = self.keys.index(key), len(self.keys) - 1
        if row != last:
            longest = self.lengths[last]
            for cache in self.caches:
                cache[row, :, :longest] = cache[last, :, :longest]
            self.keys[row], self.lengths[row] = self.keys[last], self.lengths[last]
        self.keys.pop()
        self.lengths.pop()

    def step(self, tokens: Mapping[Any, int]) -> dict[Any, np.ndarray]:
        """Feed each row its next token (every row, by key) in one forward pass; the logits
        after it, by key."""
        if set(tokens) != set(self.keys):
            raise ValueError("step needs one token for every row of the batch, and no other")
        decoder, torch = self.decoder, self.decoder.torch
        rows = len(self.keys)
        self._reserve(rows, max(self.lengths) + 1)
        if rows == 1:
            key = self.keys[0]
            logits = decoder.compiled_step(
                int(tokens[key]), self.lengths[0], [c[0] for c in self.caches]
            )
            if logits is not None:
                self.lengths[0] += 1
                return {key: logits}
        device = decoder.lm_head.weight.device
        ids = torch.tensor([[tokens[k]] for k in self.keys], dtype=torch.long, device=device)
        positions = torch.tensor(self.lengths, dtype=torch.long, device=device)
        end = max(self.lengths) + 1
        visible = torch.arange(end, device=device)[None, :] <= positions[:, None]
        kv = decoder.kv_heads
        logits = decoder.decode_rows(
            ids, positions, visible[:, None, None, :],
            [c[:rows, :kv, :end] for c in self.caches],
            [c[:rows, kv:, :end] for c in self.caches],
        )  # fmt: skip
        self.lengths = [n + 1 for n in self.lengths]
        return {key: logits[row] for row, key in enumerate(self.keys)}


__all__ = ["StaticBatch"]
