"""Continuous batching (`lm.batch()`, `Generator.generate_many`): sequences decoded together get
exactly the answers they get alone, on both backends, on the tiny random Llama. On torch both
loops are checked: ft's static one (`StaticBatch`, what a Llama gets) and transformers' forward
(`TorchBatch`, what other architectures and unmerged adapters get)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_models.generate import GenerationOptions, Generator

BACKENDS = ("torch", "transformers", "mlx")
PROMPTS = [
    "The capital of France",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Hi",
    "Numbers: one, two, three, four,",
]


@pytest.fixture(scope="module")
def generators(tiny_llama: Path) -> dict[str, Generator]:
    loaded = {b: Generator.load(tiny_llama, backend=b, dtype="float32") for b in ("torch", "mlx")}
    loaded["transformers"] = Generator.load(tiny_llama, backend="torch", dtype="float32")
    loaded["transformers"].lm.static_reason = "turned off for this test"
    assert type(loaded["torch"].lm.batch()).__name__ == "StaticBatch"
    assert type(loaded["transformers"].lm.batch()).__name__ == "TorchBatch"
    return loaded


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_of_mixed_lengths_gives_each_prompt_its_answer_alone(generators, backend) -> None:
    generator = generators[backend]
    options = [
        GenerationOptions(max_tokens=12),
        GenerationOptions(max_tokens=20),
        GenerationOptions(max_tokens=5),
        GenerationOptions(max_tokens=16, temperature=0.9, seed=4),
    ]
    alone = [generator.generate(p, o) for p, o in zip(PROMPTS, options, strict=True)]
    together = generator.generate_many(PROMPTS, options)
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.finish_reason for r in together] == [r.finish_reason for r in alone]
    assert [len(r.tokens) for r in together] == [12, 20, 5, 16]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_join_and_leave_between_steps_and_keep_their_answers(generators, backend) -> None:
    generator = generators[backend]
    ids = [generator.encode(p) for p in PROMPTS]
    alone = [generator.generate(i, GenerationOptions(max_tokens=10)).tokens for i in ids]
    batch = generator.lm.batch()
    got: dict[int, list[int]] = {}
    logits = {}
    # Row 0 starts alone; rows 1, 2 and 3 join after 2, 3 and 5 steps; each leaves after 10.
    joins = {0: [0], 2: [1], 3: [2], 5: [3]}
    step = 0
    while step == 0 or len(batch):
        for row in joins.get(step, []):
            logits[row] = batch.add(row, ids[row])
            got[row] = []
        feed = {}
        for row in list(batch.keys):
            token = int(logits[row].argmax())
            got[row].append(token)
            if len(got[row]) == 10:
                batch.remove(row)
            else:
                feed[row] = token
        if feed:
            logits = batch.step(feed)
        step += 1
    assert [got[row] for row in range(4)] == [list(t) for t in alone]


@pytest.mark.parametrize("loop", ["torch", "transformers"])
def test_a_row_that_leaves_does_not_disturb_the_others(generators, loop) -> None:
    generator = generators[loop]
    ids = [generator.encode(p) for p in PROMPTS[:3]]
    alone = generator.generate(ids[1], GenerationOptions(max_tokens=8)).tokens
    batch = generator.lm.batch()
    logits = {row: batch.add(row, ids[row]) for row in range(3)}
    got = []
    for step in range(8):
        if step == 2:
            batch.remove(0)  # the longest padding goes with it: cut, rows stay aligned
            batch.remove(2)
        feed = {row: int(logits[row].argmax()) for row in batch.keys}
        got.append(feed[1])
        logits = batch.step(feed)
    assert tuple(got) == alone
    if loop == "transformers":
        assert batch.pad == [0]


def make_adapter(base: Path, folder: Path, seed: int, targets: list[str], dora: bool = False):
    """A PEFT LoRA (or DoRA) adapter for the tiny Llama with random, non-zero A and B."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False, use_dora=dora
    )
    peft_model = get_peft_model(model, config)
    if dora:  # DoRA starts at the weight's own norm: move it so it changes the answer
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "magnitude" in name:
                    param.mul_(1.5)
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "one": make_adapter(tiny_llama, root / "one", 1, ["q_proj", "v_proj"]),
        "two": make_adapter(tiny_llama, root / "two", 2, ["k_proj", "down_proj"], dora=True),
    }


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_unmerged_adapters_on_one_base_answer_as_merged_copies(
    tiny_llama: Path, generators, adapters, backend
) -> None:
    options = GenerationOptions(max_tokens=10)
    merged = {
        name: Generator.load(tiny_llama, backend=backend, dtype="float32", adapter=folder)
        .generate(PROMPTS[0], options)
        .tokens
        for name, folder in adapters.items()
    }
    shared = Generator.load(tiny_llama, backend=backend, dtype="float32")
    base = shared.generate(PROMPTS[0], options).tokens
    assert len({base, *merged.values()}) == 3  # each adapter changes the answer
    loaded = shared.lm.adapters()
    for name, folder in adapters.items():
        loaded.load(name, folder)
    for name in ("two", None, "one", "two"):
        loaded.activate(name)
        assert shared.generate(PROMPTS[0], options).tokens == (merged[name] if name else base)
    loaded.unload("two")
    assert loaded.names == ["one"]
    loaded.activate(None)
    assert shared.generate(PROMPTS[0], options).tokens == base
    loaded.activate("one")
    assert shared.generate(PROMPTS[0], options).tokens == merged["one"]
