"""Evaluation samples on MLX (`ft_train_core.samples`): the model being trained (adapter on)
answers the validation prompts greedily against mlx-lm's prompt cache (`ft_models`'
`MlxLM`, what `ft generate` runs), in eval mode. Nothing is drawn from MLX's random state, and
the loop seeds it afresh for every micro-batch anyway (`state.seed_micro_batch`)."""

from __future__ import annotations

from collections.abc import Callable

import mlx.nn as nn

from ft_models.generation.mlx_backend import MlxLM
from ft_train_core.protocol import Sample
from ft_train_core.samples import EvalSamples, greedy_tokens


def answer_samples(model: nn.Module, samples: EvalSamples) -> list[Sample]:
    """`samples` answered by `model` in eval mode (no dropout), training mode put back."""
    lm = MlxLM(model)
    model.eval()
    try:
        return samples.answer(lambda ids, most, stops: greedy_tokens(lm, ids, most, stops))
    finally:
        model.train()


def samples_function(
    model: nn.Module, samples: EvalSamples | None
) -> Callable[[], list[Sample]] | None:
    """What the loop calls after each evaluation (None without samples)."""
    if samples is None:
        return None
    return lambda: answer_samples(model, samples)
