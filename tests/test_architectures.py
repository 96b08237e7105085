"""Every cell of the architecture table (ft_models.architectures, docs/architectures.md), run on
ft-testing's tiny random model of the architecture, through the functions the CLI calls:

- load: the backend's loader; on MLX, the logits agree with torch's (`check_logits`);
- train: `ft train` (ft_runs.training.train), LoRA, two steps; where both backends train an
  architecture, their first losses agree (same data, same weights, float32);
- evaluate: `ft evaluate` (ft_runs.evaluate.evaluate_run) on the run, which also generates;
- generate: `ft generate`'s Generator; greedy tokens agree between the backends;
- export hf|mlx|gguf: `ft export` (ft_runs.exports.export_run) of the torch run, which checks
  the export with an independent reader (the export's own check, which must pass).

A cell the table marks as missing must fail, with the error `REFUSALS` expects. One run per
architecture and backend is trained for the session and shared by the tests that need it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ft_models.architectures import ARCHITECTURES, CAPABILITIES, EXPORTS, STEPS

TinyModelFactory = Callable[[str], Path]

CELLS = [(family, capability) for family in ARCHITECTURES for capability in CAPABILITIES]

# What ft says for each missing cell (a regular expression of the error's message).
REFUSALS: dict[tuple[str, str], str] = {
    ("phi", "export gguf"): r"ft's GGUF converter does not write 'phi' models",
    ("gptj", "export gguf"): r"ft's GGUF converter does not write 'gptj' models",
    ("bert", "torch generate"): r"is a sequence classifier \(bert\): it labels text",
    ("bert", "mlx load"): r"bert models do not run on mlx: mlx-lm has no encoder",
    ("bert", "mlx train"): r"sequence-classification is torch only \(mlx-lm has causal LMs\)",
    ("bert", "mlx evaluate"): r"bert models do not run on mlx: mlx-lm has no encoder",
    ("bert", "mlx generate"): r"is a sequence classifier \(bert\): it labels text",
    **{("bert", f"export {fmt}"): r"trained a sequence classifier" for fmt in EXPORTS},
}


TRAIN_YML = """\
model:
  name: {model}
  task: {task}
data:
  train: {data}
  validation_split: 0.25
  max_seq_length: 64
  overlong: truncate
  packing: false
{label}method:
  name: lora
  rank: 4
  alpha: 8
training:
  backend: {backend}
  max_steps: 2
  batch_size: 2
  learning_rate: 1.0e-3
  lr_scheduler: constant
  warmup_steps: 0
  eval_every: 2
  seed: 0
  precision: fp32
resources:
  device: cpu
  num_threads: 1
output:
  dir: {runs}
"""


def test_the_table_is_complete() -> None:
    """Every architecture has a tiny model, and every missing cell a refusal to check."""
    from ft_testing.tiny_models import ARCHITECTURES as TINY

    missing = {(f, c) for f, a in ARCHITECTURES.items() for c in a.missing}
    assert set(TINY) == set(ARCHITECTURES)
    assert set(REFUSALS) == missing


def test_every_catalog_model_is_an_architecture_ft_runs() -> None:
    from ft_models.catalog import CATALOG

    for entry in CATALOG:
        arch = ARCHITECTURES.get(entry.family)
        assert arch is not None, f"catalog {entry.alias}: {entry.family} is not in the table"
        assert arch.supports("torch load") and arch.supports("torch train"), entry.alias


# -- the models, the data and the runs --------------------------------------------------------


@pytest.fixture(scope="session")
def model_of(
    tiny_model_factory: TinyModelFactory, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The tiny model of a family; GPT-2 and GPT-J with the standard MLP width (4 x n_embd,
    as every released GPT-2/GPT-J has, and the only one mlx-lm builds) and no dropout."""
    built: dict[str, Path] = {}

    def folder(family: str) -> Path:
        if family not in ("gpt2", "gptj"):
            return tiny_model_factory(family)
        if family not in built:
            import torch
            import transformers

            source = tiny_model_factory(family)
            config = transformers.AutoConfig.from_pretrained(source)
            config.n_inner = None
            # torch trains GPT-2 with its dropout (0.1), mlx-lm's GPT-2 has none: without it the
            # backends compute the same losses, which test_train compares.
            config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
            torch.manual_seed(0)
            target = tmp_path_factory.mktemp(f"{family}_standard")
            transformers.AutoModelForCausalLM.from_config(config).save_pretrained(target)
            for file in source.iterdir():
                if file.name != "config.json" and not file.name.startswith("model"):
                    shutil.copy(file, target / file.name)
            built[family] = target
        return built[family]

    return folder


@pytest.fixture(scope="session")
def datasets(shared_datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 short Alpaca rows (instruction tuning), and 16 labelled sentences (classification)."""
    root = tmp_path_factory.mktemp("arch_data")
    rows = json.loads((shared_datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    short = [r for r in rows if not r["input"] and len(r["instruction"]) + len(r["output"]) < 160]
    (root / "alpaca.json").write_text(json.dumps(short[:12]), encoding="utf-8")
    lines = ["text,label"] + [
        f"{thing} was {word},{label}"
        for thing in ("the film", "this meal", "our trip", "the book")
        for word, label in (("great", "good"), ("lovely", "good"), ("awful", "bad"), ("sad", "bad"))
    ]
    (root / "reviews.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"causal": root / "alpaca.json", "classifier": root / "reviews.csv"}


def train_yml(folder: Path, model: Path, data: Path, backend: str, classifier: bool) -> Path:
    path = folder / "train.yml"
    path.write_text(
        TRAIN_YML.format(
            model=model,
            task="sequence-classification" if classifier else "causal-lm",
            data=data,
            label="  label_column: label\n" if classifier else "",
            backend=backend,
            runs=folder / "runs",
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def trained(
    model_of: Callable[[str], Path],
    datasets: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str, str], Any]:
    """`trained(family, backend)`: the outcome of `ft train` (2 LoRA steps), once a session."""
    from ft_runs.store import JobStore
    from ft_runs.training import train

    root = tmp_path_factory.mktemp("arch_runs")
    store = JobStore(root / "jobs.sqlite")
    outcomes: dict[tuple[str, str], Any] = {}

    def run(family: str, backend: str) -> Any:
        if (family, backend) not in outcomes:
            classifier = ARCHITECTURES[family].classifier
            folder = root / f"{family}-{backend}"
            folder.mkdir()
            data = datasets["classifier" if classifier else "causal"]
            config = train_yml(folder, model_of(family), data, backend, classifier)
            try:
                outcomes[family, backend] = train(config, say=lambda text: None, store=store)
            except Exception as error:  # a refused run is refused once
                outcomes[family, backend] = error
        outcome = outcomes[family, backend]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return run


def events_of(outcome: Any, kind: str) -> list[dict[str, Any]]:
    lines = (outcome.folder.path / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


# -- one test per cell ------------------------------------------------------------------------


def cells(kind: str) -> list[Any]:
    return [
        pytest.param(family, capability, id=f"{family}-{capability.replace(' ', '-')}")
        for family, capability in CELLS
        if capability.split(" ")[1 if kind in STEPS else 0] == kind
    ]


def refused(family: str, capability: str) -> Any:
    return pytest.raises(Exception, match=REFUSALS[family, capability])


@pytest.mark.parametrize(("family", "capability"), cells("load"))
def test_load(family: str, capability: str, model_of: Callable[[str], Path]) -> None:
    from ft_models.convert import check_logits
    from ft_models.load import load_pretrained

    backend = capability.split(" ")[0]
    folder = model_of(family)
    if not ARCHITECTURES[family].supports(capability):
        with refused(family, capability):
            load_pretrained(folder, backend=backend)
        return
    model, tokenizer = load_pretrained(folder, backend=backend, dtype="float32", device="cpu")
    assert len(tokenizer.encode("What is the capital of France?")) > 3
    if backend == "mlx":
        check = check_logits(folder, mlx_model=model)  # raises ConversionError beyond 1e-4
        assert check.ok and check.max_abs_diff < 2e-6, check


@pytest.mark.parametrize(("family", "capability"), cells("train"))
def test_train(family: str, capability: str, trained: Callable[[str, str], Any]) -> None:
    backend = capability.split(" ")[0]
    if not ARCHITECTURES[family].supports(capability):
        with refused(family, capability):
            trained(family, backend)
        return
    outcome = trained(family, backend)
    assert (outcome.status, outcome.result.step) == ("completed", 2)
    steps = events_of(outcome, "step")
    assert [e["step"] for e in steps] == [1, 2]
    assert all(math.isfinite(e["loss"]) for e in steps)
    assert (outcome.folder.path / "adapter" / "adapter_model.safetensors").is_file()
    other = "torch" if backend == "mlx" else None
    if other and ARCHITECTURES[family].supports(f"{other} train"):
        # Before the first update the adapter changes nothing (B = 0): both backends compute the
        # loss of the same weights on the same batch.
        theirs = events_of(trained(family, other), "step")[0]["loss"]
        assert steps[0]["loss"] == pytest.approx(theirs, rel=1e-4)


@pytest.mark.parametrize(("family", "capability"), cells("evaluate"))
def test_evaluate(
    family: str,
    capability: str,
    model_of: Callable[[str], Path],
    trained: Callable[[str, str], Any],
    tmp_path: Path,
) -> None:
    from ft_runs.evaluate import evaluate_run

    backend = capability.split(" ")[0]
    if not ARCHITECTURES[family].supports(capability):
        # What `ft evaluate` would run on that backend: its trainer's evaluator.
        from ft_runs.trainers import get_trainer

        with refused(family, capability):
            get_trainer(backend).evaluate_loss(model_of(family), None, tmp_path / "none.h5")
        return
    outcome = trained(family, backend)
    result = evaluate_run(
        outcome.folder,
        backend=backend,
        max_examples=2,
        max_tokens=4,
        samples=1,
        compare_base=False,
        say=lambda text: None,
    )
    (evaluated,) = events_of(outcome, "eval")
    # The trainer's own evaluation of the same checkpoint on the same rows.
    assert result.metrics["eval_loss"] == pytest.approx(evaluated["eval_loss"], rel=1e-4)
    assert len(result.samples) == 1
    if backend == "mlx" and ARCHITECTURES[family].supports("torch evaluate"):
        from ft_runs.trainers import get_trainer

        # Both evaluators on the base model, with the validation rows packed several to a
        # 256-token row: attention stays inside each example (and its window) on both.
        rows = outcome.folder.path / "data" / "validation.h5"
        losses = [
            get_trainer(name).evaluate_loss(model_of(family), None, rows, max_seq_length=256)
            for name in ("mlx", "torch")
        ]
        assert losses[0].loss == pytest.approx(losses[1].loss, rel=1e-4)
        assert losses[0].tokens == losses[1].tokens


@pytest.mark.parametrize(("family", "capability"), cells("generate"))
def test_generate(
    family: str,
    capability: str,
    model_of: Callable[[str], Path],
    trained: Callable[[str, str], Any],
) -> None:
    from ft_models.generate import GenerationOptions, Generator

    backend = capability.split(" ")[0]
    folder = model_of(family)
    if not ARCHITECTURES[family].supports(capability):
        with refused(family, capability):
            Generator.load(folder, backend=backend)
        return
    greedy = GenerationOptions(max_tokens=6)
    # 30 prompt tokens: past Gemma 2/3's 24-token window, so decoding reads through it.
    prompt = [(7 + 7919 * i) % 500 + 3 for i in range(30)]
    base = Generator.load(folder, backend=backend, dtype="float32", device="cpu")
    tokens = base.generate(prompt, greedy).tokens
    assert 1 <= len(tokens) <= 6
    other = "torch" if backend == "mlx" else None
    if other and ARCHITECTURES[family].supports(f"{other} generate"):
        theirs = Generator.load(folder, backend=other, dtype="float32", device="cpu")
        assert theirs.generate(prompt, greedy).tokens == tokens
    adapter = trained(family, backend).folder.path / "adapter"
    tuned = Generator.load(folder, backend=backend, adapter=adapter, dtype="float32")
    answer = tuned.generate([{"role": "user", "content": "Name a colour."}], greedy)
    assert answer.finish_reason in ("stop", "length") and answer.tokens


@pytest.mark.parametrize(("family", "capability"), cells("export"))
def test_export(
    family: str, capability: str, trained: Callable[[str, str], Any], tmp_path: Path
) -> None:
    from ft_runs.exports import export_run

    fmt = capability.split(" ")[1]
    outcome = trained(family, "torch")
    if not ARCHITECTURES[family].supports(capability):
        with refused(family, capability):
            export_run(outcome.folder, fmt, output=tmp_path / "out", say=lambda t: None)
        assert not (tmp_path / "out").exists()
        return
    result = export_run(outcome.folder, fmt, output=tmp_path / "out", say=lambda t: None)
    check = result.verification
    assert check is not None and check.passed, check.summary()
