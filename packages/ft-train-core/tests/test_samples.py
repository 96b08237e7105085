"""Evaluation samples (ft_train_core.samples): which validation rows become prompts, and the
greedy loop both trainers' answers come from. The trainers' own runs are checked by the
conformance suite (`test_samples_follow_each_evaluation`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from ft_data.hdf5 import PreparedDataset, PreparedWriter
from ft_train_core.samples import EvalSamples, greedy_tokens, prompt_examples

WORDS = ["<eos>", "user:", "bot:", "hi", "there", "red", "blue", "green", "sky"]


def word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="sky"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<eos>"])
    return tokenizer


def ids(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.split()]


def test_prompts_are_the_tokens_before_the_first_trained_span(tmp_path):
    path = tmp_path / "val.h5"
    with PreparedWriter(path, {"cache_key": "k" * 64}) as w:
        # Raw text, trained from its first token: no prompt, skipped.
        w.add(ids("hi there"), [1, 1])
        # A prompt, its answer (and eos) trained, then a second turn: the first answer only.
        w.add(
            ids("user: hi bot: red blue <eos> user: sky bot: green"), [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
        )
        w.add(ids("user: sky bot: blue <eos>"), [0, 0, 0, 1, 1])
        w.add(ids("user: there bot: green <eos>"), [0, 0, 0, 1, 1])
    with PreparedDataset(path) as data:
        found = prompt_examples(data, word_tokenizer(), 2)
    assert [(e.index, e.prompt_ids, e.prompt, e.reference) for e in found] == [
        (1, ids("user: hi bot:"), "user: hi bot:", "red blue"),
        (2, ids("user: sky bot:"), "user: sky bot:", "blue"),
    ]


class ScriptedLM:
    """Logits that make `script[i]` the most likely token at step i; records what it read."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.read = script, []

    def _logits(self) -> np.ndarray:
        logits = np.zeros(len(WORDS), dtype=np.float32)
        logits[self.script[len(self.read) - 1]] = 1.0
        return logits

    def start(self, prompt_ids: Sequence[int]) -> np.ndarray:
        self.read.append(list(prompt_ids))
        return self._logits()

    def step(self, token: int) -> np.ndarray:
        self.read.append(token)
        return self._logits()


def test_greedy_stops_at_a_stop_token_or_the_limit():
    lm = ScriptedLM(ids("red blue <eos> green"))
    assert greedy_tokens(lm, [1, 3], 10, frozenset({0})) == ids("red blue")
    assert lm.read == [[1, 3], *ids("red blue")]
    lm = ScriptedLM(ids("red blue green sky"))
    assert greedy_tokens(lm, [1], 2, frozenset({0})) == ids("red blue")
    assert lm.read == [[1], ids("red")[0]]  # no forward pass for a token never used


def test_samples_carry_prompt_output_and_reference(tmp_path):
    path = tmp_path / "val.h5"
    with PreparedWriter(path, {"cache_key": "k" * 64}) as w:
        w.add(ids("user: hi bot: red <eos>"), [0, 0, 0, 1, 1])
    with PreparedDataset(path) as data:
        samples = EvalSamples(prompt_examples(data, word_tokenizer(), 3), word_tokenizer(), frozenset({0}), 4)  # fmt: skip
    asked = []

    def generate(prompt: list[int], most: int, stops: frozenset[int]) -> list[int]:
        asked.append((prompt, most, stops))
        return ids("blue sky")

    assert samples.answer(generate) == [
        {"prompt": "user: hi bot:", "output": "blue sky", "reference": "red", "output_tokens": 2}
    ]
    assert asked == [(ids("user: hi bot:"), 4, frozenset({0}))]
