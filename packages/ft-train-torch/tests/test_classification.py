"""Sequence classification: LoRA and full fine-tuning of tiny BERT (and a tiny Llama with a
classification head) on a separable toy set prepared by ft-data with a label column."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from ft_config.structure import structure_config
from ft_data.hdf5 import PreparedDataset
from ft_data.prepare import PrepareOptions, prepare_dataset
from ft_testing import training
from ft_testing.training import job_settings, tensors_sha256
from ft_train_core.protocol import TrainJob
from ft_train_torch import TorchTrainer

train = partial(training.train, TorchTrainer)

GOOD = ["great", "lovely", "happy", "wonderful", "excellent"]
BAD = ["awful", "terrible", "sad", "horrible", "dreadful"]
THINGS = ["the film", "this meal", "our trip", "the book"]


def toy_rows() -> list[dict[str, str]]:
    """40 rows: 20 `positive` sentences built from good words, 20 `negative` from bad ones."""
    rows = []
    for i, thing in enumerate(THINGS):
        for j, (good, bad) in enumerate(zip(GOOD, BAD, strict=True)):
            rows.append({"text": f"{thing} was {good}", "label": "positive"})
            rows.append(
                {
                    "text": f"{thing} felt {bad} {'today' if (i + j) % 2 else ''}".strip(),
                    "label": "negative",
                }
            )
    return rows


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, tiny_model_factory):
    """`toy_data(arch) -> prepared .h5` of the 40 toy rows for `arch`'s tokenizer."""
    root = tmp_path_factory.mktemp("toy")
    built: dict[tuple[str, bool], Path] = {}
    source = root / "toy.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in toy_rows()))

    def build(arch: str, labelled: bool = True) -> Path:
        if (arch, labelled) not in built:
            output = root / f"{arch}-{labelled}.h5"
            report = prepare_dataset(
                source,
                tiny_model_factory(arch),
                output,
                PrepareOptions(max_length=64, label_column="label" if labelled else None),
            ).report
            assert report.examples == 40
            assert report.label_names == (["negative", "positive"] if labelled else None)
            built[arch, labelled] = output
        return built[arch, labelled]

    return build


def classification_job(
    tmp_path,
    model: Path,
    data: Path,
    run: str = "run",
    resume_from: Path | None = None,
    **overrides,
):
    defaults = {
        "model__task": "sequence-classification",
        "data__label_column": "label",
        "method__target_modules": ["query", "value"],
        "training__batch_size": 8,
        "training__learning_rate": 1e-2,
    }
    values = job_settings(**{**defaults, **overrides})
    config, problems = structure_config(values)
    assert not problems, problems
    folder = tmp_path / run
    folder.mkdir(exist_ok=True)
    return TrainJob(
        config=config,
        model_path=model,
        train_data=data,
        validation_data=data,
        run_dir=folder,
        resume_from=resume_from,
    )


def test_lora_learns_a_separable_set(tmp_path, tiny_model_factory, toy_data) -> None:
    model, data = tiny_model_factory("bert"), toy_data("bert")
    job = classification_job(tmp_path, model, data, training__epochs=6, training__eval_every=10)
    events, result = train(job)
    assert result.reason == "completed" and result.step == 30
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert evals[-1]["accuracy"] == 1.0
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    start = next(e for e in events if e["type"] == "start")
    # r=4 on query and value (64 -> 64) in 2 layers, plus the classifier head (64*2 + 2).
    assert start["trainable_params"] == 2 * 2 * 4 * (64 + 64) + 64 * 2 + 2
    adapter = result.adapter_path
    classes = json.loads((adapter / "classes.json").read_text())
    assert classes["id2label"] == {"0": "negative", "1": "positive"}
    assert classes["label2id"] == {"negative": 0, "positive": 1}
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    # The saved adapter (with its head) scores the same set again from disk.
    scored = TorchTrainer().evaluate_classification(model, adapter, data, device="cpu")
    assert scored.label_names == ["negative", "positive"]
    assert scored.accuracy == 1.0
    assert scored.labels[:2] == ["positive", "negative"]
    assert scored.loss == pytest.approx(evals[-1]["eval_loss"], rel=1e-4)


def test_full_finetune_saves_the_classes_in_the_config(
    tmp_path, tiny_model_factory, toy_data
) -> None:
    model, data = tiny_model_factory("bert"), toy_data("bert")
    job = classification_job(
        tmp_path,
        model,
        data,
        method__name="full",
        training__learning_rate=3e-3,
        training__max_steps=20,
    )
    events, result = train(job)
    assert result.reason == "max_steps"
    config = json.loads((result.adapter_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (result.adapter_path / "tokenizer.json").exists()
    scored = TorchTrainer().evaluate_classification(model, result.adapter_path, data, device="cpu")
    last = [e for e in events if e["type"] == "eval"][-1]
    assert scored.accuracy == last["accuracy"] == 1.0


def test_causal_lm_with_a_classification_head(tmp_path, tiny_model_factory, toy_data) -> None:
    model, data = tiny_model_factory("llama"), toy_data("llama")
    job = classification_job(
        tmp_path,
        model,
        data,
        method__target_modules=["q_proj", "v_proj"],
        training__max_steps=3,
        data__packing=True,
    )
    events, result = train(job)
    assert result.reason == "max_steps"
    assert [e["text"] for e in events if e["type"] == "message"] == [
        "sequence classification takes one example a row: packing is off"
    ]
    classes = json.loads((result.adapter_path / "classes.json").read_text())
    assert classes["id2label"] == {"0": "negative", "1": "positive"}
    assert isinstance(classes["pad_token_id"], int)
    evals = [e for e in events if e["type"] == "eval"]
    assert 0.0 <= evals[-1]["accuracy"] <= 1.0
    scored = TorchTrainer().evaluate_classification(model, result.adapter_path, data, device="cpu")
    assert scored.loss == pytest.approx(evals[-1]["eval_loss"], rel=1e-4)


def test_resume_is_bit_identical(tmp_path, tiny_model_factory, toy_data) -> None:
    from ft_models.checkpoint import latest_valid_checkpoint

    model, data = tiny_model_factory("bert"), toy_data("bert")
    extra = {"method__dropout": 0.1, "training__max_steps": 6, "training__save_every": 2}
    _, straight = train(classification_job(tmp_path, model, data, "straight", **extra))
    job = classification_job(tmp_path, model, data, "stopped", **extra)
    _, stopped = train(job, stop_at=3)
    assert stopped.reason == "interrupted"
    found = latest_valid_checkpoint(job.checkpoints_dir)
    assert found is not None
    resumed_job = classification_job(
        tmp_path, model, data, "stopped", resume_from=found[0], **extra
    )
    events, resumed = train(resumed_job)
    assert events[0]["resumed_from_step"] == 3
    assert tensors_sha256(resumed.adapter_path) == tensors_sha256(straight.adapter_path)


def test_a_dataset_without_labels_is_refused(tmp_path, tiny_model_factory, toy_data) -> None:
    train_data = toy_data("bert", labelled=False)
    job = classification_job(
        tmp_path, tiny_model_factory("bert"), train_data, training__max_steps=1
    )
    with pytest.raises(ValueError, match=r"has no labels: set data\.label_column"):
        train(job)
    with PreparedDataset(train_data) as dataset:
        assert dataset.labels() is None


def test_num_labels_adds_outputs_and_refuses_too_few(
    tmp_path, tiny_model_factory, toy_data
) -> None:
    """`model.num_labels` above the data's classes gives the head that many outputs (a class
    the training rows lack is named LABEL_<n>); below them, a clear error before training."""
    model, data = tiny_model_factory("bert"), toy_data("bert")
    job = classification_job(
        tmp_path, model, data, model__num_labels=3, training__max_steps=1, method__name="full"
    )
    _, result = train(job)
    config = json.loads((result.adapter_path / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive", "2": "LABEL_2"}
    # Fewer outputs than the data's classes: refused, naming them.
    from ft_data.hdf5 import PreparedWriter
    from ft_train_torch.classification import label_names

    with PreparedWriter(tmp_path / "three.h5", {"cache_key": "k"}) as writer:
        for i, name in enumerate(["a", "b", "c"]):
            writer.add(np.array([1, 2, 3 + i]), np.array([0, 1, 1]), label=name)
        writer.finish_labels()
    with PreparedDataset(tmp_path / "three.h5") as three:
        assert label_names(three, tmp_path / "three.h5") == ["a", "b", "c"]
        with pytest.raises(
            ValueError, match=r"model.num_labels is 2, but .* has 3 classes \(a, b, c\)"
        ):
            label_names(three, tmp_path / "three.h5", num_labels=2)
