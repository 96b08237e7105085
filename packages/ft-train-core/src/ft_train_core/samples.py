"""Evaluation samples: at each evaluation a trainer answers a few validation prompts with the
model as it is, and reports them (`samples` event) beside their reference answers, so a user
sees what the loss curve means.

The prompts are the validation set's first rows that have one: a row's prompt is every token
before its first trained token (the conversation so far through the run's chat template, up to
the opened assistant turn: what training fed the model), its reference the first trained span
(that answer). Rows trained from their first token (raw text) have no prompt and are skipped.
`ft evaluate` picks its prompts by the same rule (`prompt_examples`).

The answers are greedy: they draw nothing from any random generator, so a run that evaluates
with samples trains exactly as one without (and a resumed run stays bit-identical). The backend
gives the token generator (`GenerateFn`); `greedy_tokens` is one over a model that reads a
prompt and then one token at a time (`ft_models.generation`'s `TorchLM` and `MlxLM`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ft_data.hdf5 import PreparedDataset
from ft_train_core.protocol import Sample

# (prompt ids, most new tokens, stop ids) -> the new tokens, the stop token left out.
GenerateFn = Callable[[list[int], int, frozenset[int]], list[int]]


@dataclass(frozen=True)
class Example:
    """A validation row as a prompt to answer and the answer it was trained on."""

    prompt_ids: list[int]
    prompt: str  # decoded with its special tokens: the template's markup as the model read it
    reference: str  # decoded without special tokens
    index: int = 0  # the row's place in the dataset


def prompt_examples(data: PreparedDataset, tokenizer: Any, limit: int) -> list[Example]:
    """Up to `limit` (prompt, reference) pairs from a prepared dataset, first rows first (see
    the module docstring); `tokenizer` decodes (a `tokenizers.Tokenizer`)."""
    found: list[Example] = []
    for i in range(len(data)):
        if len(found) >= limit:
            break
        tokens, mask = data[i]
        trained = np.flatnonzero(np.asarray(mask))
        if len(trained) == 0 or trained[0] == 0:
            continue  # nothing to answer, or trained from the first token (raw text)
        start = end = int(trained[0])
        while end < len(mask) and mask[end]:
            end += 1
        ids = [int(t) for t in tokens[:start]]
        found.append(
            Example(
                prompt_ids=ids,
                prompt=tokenizer.decode(ids, skip_special_tokens=False),
                reference=tokenizer.decode(
                    [int(t) for t in tokens[start:end]], skip_special_tokens=True
                ).strip(),
                index=i,
            )
        )
    return found


class StepLM(Protocol):
    """A model that reads a prompt into a fresh cache, then one token at a time; each call
    gives the logits of the next token (`ft_models.generation.TorchLM`, `MlxLM`)."""

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray: ...

    def step(self, token: int) -> np.ndarray: ...


def greedy_tokens(
    lm: StepLM, prompt_ids: list[int], max_new_tokens: int, stop_ids: frozenset[int]
) -> list[int]:
    """The most likely token at each step, until a stop token (left out) or `max_new_tokens`."""
    out: list[int] = []
    logits = lm.start(prompt_ids)
    while len(out) < max_new_tokens:
        token = int(np.argmax(logits))
        if token in stop_ids:
            break
        out.append(token)
        if len(out) < max_new_tokens:
            logits = lm.step(token)
    return out


class EvalSamples:
    """The validation prompts a run answers at each evaluation (`training.eval_samples`), and
    the `Sample`s of one evaluation's answers."""

    def __init__(
        self,
        examples: list[Example],
        tokenizer: Any,
        stop_ids: frozenset[int],
        max_new_tokens: int,
    ) -> None:
        self.examples, self.tokenizer = examples, tokenizer
        self.stop_ids, self.max_new_tokens = stop_ids, max_new_tokens

    @classmethod
    def for_run(
        cls, config: Any, model_path: Path, validation: PreparedDataset | None
    ) -> EvalSamples | None:
        """The samples of a run of `config` on the base model at `model_path` with the
        validation set `validation`; None when there are none to answer: no validation set,
        `training.eval_samples: 0`, a classifier (it has no answers), or no row with a prompt."""
        count = config.training.eval_samples
        if validation is None or count <= 0 or config.model.task != "causal-lm":
            return None
        from ft_data.tokenizer import load_tokenizer
        from ft_models.generate import eos_token_ids

        loaded = load_tokenizer(model_path)
        examples = prompt_examples(validation, loaded.tokenizer, count)
        if not examples:
            return None
        stop = set(eos_token_ids(model_path, loaded))
        eos = validation.attrs.get("eos_token_id", -1)  # what the data ended answers with
        if isinstance(eos, int) and eos >= 0:
            stop.add(eos)
        return cls(examples, loaded.tokenizer, frozenset(stop), config.training.eval_sample_tokens)

    def answer(self, generate: GenerateFn) -> list[Sample]:
        """Each prompt answered by `generate`, with its reference."""
        samples: list[Sample] = []
        for example in self.examples:
            tokens = generate(list(example.prompt_ids), self.max_new_tokens, self.stop_ids)
            samples.append(
                {
                    "prompt": example.prompt,
                    "output": self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    "reference": example.reference,
                    "output_tokens": len(tokens),
                }
            )
        return samples
