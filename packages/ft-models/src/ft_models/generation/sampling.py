"""The next-token rule both backends share: one Sampler, so options mean the same on each.

Transformers' order: repetition penalty, then greedy (temperature 0) or temperature, top-k,
top-p and a draw from a seeded numpy generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ft_models.generation.options import GenerationOptions


class Sampler:
    """Picks each next token from a logits vector, remembering which tokens were seen (for the
    repetition penalty). Greedy when temperature is 0; else a seeded draw."""

    def __init__(self, options: GenerationOptions, prompt_ids: Sequence[int]) -> None:
        self.options = options
        self.rng = np.random.default_rng(options.seed)
        self.seen: set[int] = set(int(i) for i in prompt_ids)

    def __call__(self, logits: np.ndarray) -> int:
        options = self.options
        scores = np.asarray(logits, dtype=np.float32).copy()
        if options.repetition_penalty != 1.0 and self.seen:
            ids = np.fromiter((i for i in self.seen if i < scores.shape[0]), dtype=np.int64)
            picked = scores[ids]
            scores[ids] = np.where(
                picked < 0, picked * options.repetition_penalty, picked / options.repetition_penalty
            )
        if options.temperature == 0:
            token = int(np.argmax(scores))
        else:
            token = self._draw(scores.astype(np.float64) / options.temperature)
        self.seen.add(token)
        return token

    def _draw(self, scores: np.ndarray) -> int:
        options = self.options
        order = np.argsort(-scores, kind="stable")  # most likely first, ties by id
        if options.top_k > 0:
            # transformers keeps every token that ties with the k-th.
            kth = scores[order[min(options.top_k, order.shape[0]) - 1]]
            order = order[scores[order] >= kth]
        kept = scores[order]
        probs = np.exp(kept - kept[0])
        probs /= probs.sum()
        if options.top_p < 1.0:
            # Keep the smallest prefix whose probability reaches top_p (at least one token).
            before = np.cumsum(probs) - probs
            count = max(1, int(np.count_nonzero(before < options.top_p)))
            order, probs = order[:count], probs[:count] / probs[:count].sum()
        cumulative = np.cumsum(probs)
        index = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return int(order[min(index, order.shape[0] - 1)])


__all__ = ["Sampler"]
