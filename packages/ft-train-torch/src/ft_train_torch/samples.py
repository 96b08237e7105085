"""Evaluation samples on torch (`ft_train_core.samples`): the model being trained answers the
validation prompts greedily with transformers' `generate` (through peft's, so the adapter is
on), in eval mode, without gradients, under the run's autocast.

Prompt-learning methods (prefix tuning, P-tuning) answer without a KV cache, one whole forward
pass per token, as they train: peft 0.21's `generate` under transformers 5 leaves prefix
tuning's virtual keys and values out (its answers were the base model's).

A causal LM trains with ft's per-example attention (`ft_train_torch.attention`), which reads
whole rows and knows no KV cache: while it generates, the model attends with transformers'
SDPA (masks, sliding windows and the cache as transformers builds them; eager attention for an
architecture without SDPA, as Gemma 2), then goes back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from ft_train_core.protocol import Sample
from ft_train_core.samples import EvalSamples, GenerateFn, greedy_tokens
from ft_train_torch.attention import ATTENTION
from ft_train_torch.state import rng_state, set_rng_state


class _Uncached:
    """A `StepLM` that runs the whole sequence through `model` at every token (no KV cache)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, cast: Any) -> None:
        self.model, self.device, self.cast = model, device, cast
        self.ids: list[int] = []

    def _next(self) -> np.ndarray:
        inputs = torch.tensor([self.ids], dtype=torch.long, device=self.device)
        with torch.no_grad(), self.cast():
            out = self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs))
        return out.logits[0, -1].float().cpu().numpy()

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        self.ids = list(prompt_ids)
        return self._next()

    def step(self, token: int) -> np.ndarray:
        self.ids.append(token)
        return self._next()


def greedy_generate(
    model: torch.nn.Module,
    device: torch.device,
    cast: Callable[[], AbstractContextManager[object]],
    *,
    cache: bool = True,
) -> GenerateFn:
    """A `GenerateFn` over `model` (the peft model or the full one, not a DDP/FSDP wrapper);
    without `cache`, every token is a forward pass over the whole sequence."""
    from transformers import GenerationConfig

    if not cache:
        uncached = _Uncached(model, device, cast)
        return lambda ids, most, stops: greedy_tokens(uncached, ids, most, stops)

    def generate(prompt_ids: list[int], max_new_tokens: int, stop_ids: frozenset[int]) -> list[int]:
        stops = sorted(stop_ids)
        # A config of its own: the model's generation_config may ask for sampling.
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops or None,
            pad_token_id=stops[0] if stops else 0,
        )
        inputs = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        with torch.no_grad(), cast():
            out = model.generate(  # type: ignore[operator]
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                generation_config=config,
            )
        new = [int(t) for t in out[0, len(prompt_ids) :].tolist()]
        for index, token in enumerate(new):
            if token in stop_ids:
                return new[:index]
        return new

    return generate


@contextlib.contextmanager
def generation_attention(base: Any) -> Iterator[None]:
    """transformers' SDPA (else eager) attention in `base` (the transformers model) while in
    the block, where it trains with ft's per-example attention."""
    trained_with = getattr(base.config, "_attn_implementation", None)
    if trained_with != ATTENTION:
        yield
        return
    try:
        base.set_attn_implementation("sdpa")
    except ValueError:  # an architecture without it (Gemma 2: soft-capped scores)
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(trained_with)


def answer_samples(
    model: torch.nn.Module, base: Any, samples: EvalSamples, generate: GenerateFn
) -> list[Sample]:
    """`samples` answered by `model` in eval mode; its training mode, its attention and
    every random generator put back after (greedy decoding draws nothing, but a run must
    stay bit-identical to one without samples whatever a library does inside)."""
    rng = rng_state()
    model.eval()
    try:
        with generation_attention(base):
            return samples.answer(generate)
    finally:
        model.train()
        set_rng_state(*rng)


def samples_function(
    model: torch.nn.Module,
    base: Any,
    samples: EvalSamples | None,
    device: torch.device,
    cast: Callable[[], AbstractContextManager[object]],
    *,
    cache: bool = True,
) -> Callable[[], list[Sample]] | None:
    """What the loop calls after each evaluation (None without samples): `model` is the
    adapted model (not a DDP/FSDP wrapper), `base` the transformers model inside it; `cache`
    False for prompt-learning methods (see the module docstring)."""
    if samples is None:
        return None
    generate = greedy_generate(model, device, cast, cache=cache)
    return lambda: answer_samples(model, base, samples, generate)
