"""`ft train` and `ft evaluate` for sequence classification: a fresh `ft init` project, a small
labelled CSV of two clearly separable classes, and the tiny random BERT."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ft_cli.main import cli

GOOD = ["great", "lovely", "happy", "wonderful", "excellent"]
BAD = ["awful", "terrible", "sad", "horrible", "dreadful"]
THINGS = ["the film", "this meal", "our trip", "the book"]


def run(*args: str, cwd: Path) -> tuple[int, str]:
    runner = CliRunner()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path, tiny_model_factory) -> Path:
    code, out = run("init", "proj", "--profile", "chat", cwd=tmp_path)
    assert code == 0, out
    folder = tmp_path / "proj"
    text = (folder / "train.yml").read_text()
    text = text.replace("name: smollm2-135m", f"name: {tiny_model_factory('bert')}")
    (folder / "train.yml").write_text(text)
    # 40 rows: 20 positive sentences made of good words, 20 negative ones of bad words.
    with open(folder / "data" / "reviews.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for thing in THINGS:
            for good, bad in zip(GOOD, BAD, strict=True):
                writer.writerow([f"{thing} was {good}", "positive"])
                writer.writerow([f"{thing} felt {bad}", "negative"])
    return folder


CLASSIFY = (
    "--set", "model.task=sequence-classification",
    "--set", "data.label_column=label",
    "--set", "data.train=data/reviews.csv",
    "--set", "data.max_seq_length=32",
    "--set", "data.validation_split=0.25",
    "--set", "training.batch_size=8",
    "--set", "training.learning_rate=0.01",
    "--set", "training.max_steps=6",
    "--set", "training.eval_every=3",
)  # fmt: skip


def test_train_and_evaluate_a_classifier(project: Path) -> None:
    code, out = run("train", *CLASSIFY, "--json", cwd=project)
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert (summary["status"], summary["step"]) == ("completed", 6)
    (folder,) = [p for p in (project / "runs").iterdir() if p.is_dir()]
    assert json.loads((folder / "run.json").read_text())["data"]["format"] == "text"
    # The adapter knows its classes (sorted names), and trains the classifier head too.
    adapter = folder / "adapter"
    classes = json.loads((adapter / "classes.json").read_text())
    assert classes["id2label"] == {"0": "negative", "1": "positive"}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS"
    assert "classifier" in adapter_config["modules_to_save"]
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in evals)

    from ft_runs.store import JobStore

    stored = JobStore().metrics(folder.name, "eval")
    assert [m["accuracy"] for m in stored] == [e["accuracy"] for e in evals]

    code, out = run("evaluate", "--samples", "3", "--json", cwd=project)
    assert code == 0, out
    assert "base model skipped" in out
    result = json.loads(out[out.index("{") :])
    assert set(result["metrics"]) == {"eval_loss", "accuracy", "macro_f1"}
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert 0.0 <= result["metrics"]["macro_f1"] <= 1.0
    assert result["base_metrics"] == {}
    # ft evaluate scores the best checkpoint on the held-out rows as the trainer did.
    best = min(evals, key=lambda e: e["eval_loss"])
    assert result["checkpoint"] == f"best (step-{best['step']:08d})"
    assert result["metrics"]["eval_loss"] == pytest.approx(best["eval_loss"], rel=1e-4)
    assert result["metrics"]["accuracy"] == pytest.approx(best["accuracy"])
    assert len(result["samples"]) == 3
    for sample in result["samples"]:
        assert sample["tuned"] in ("negative", "positive")
        assert sample["reference"] == ("positive" if " was " in sample["prompt"] else "negative")
    (evaluation,) = JobStore().evaluations(folder.name)
    assert evaluation["metrics"] == pytest.approx(result["metrics"])

    # The table form names the columns for classes, not answers.
    code, out = run("evaluate", "--samples", "1", cwd=project)
    assert code == 0, out
    assert "macro_f1" in out and "predicted" in out and "label" in out

    # Other data, prepared as the run's: its classes are matched to the model's by name (this
    # file has one class, numbered 0 on its own; the model calls it 1).
    (project / "data" / "more.csv").write_text(
        "text,label\nthe show was lovely,positive\nthe song was great,positive\n"
    )
    code, out = run("evaluate", "--data", "data/more.csv", "--json", cwd=project)
    assert code == 0, out
    result = json.loads(out[out.index("{") :])
    assert [s["reference"] for s in result["samples"]] == ["positive", "positive"]
    assert result["metrics"]["accuracy"] in (0.0, 0.5, 1.0)
    (project / "data" / "odd.csv").write_text("text,label\nthe show was fine,neutral\n")
    code, out = run("evaluate", "--data", "data/odd.csv", cwd=project)
    assert code == 1
    assert "classes the model was not trained on: neutral (it knows negative, positive)" in out

    # A classifier does not generate, and ft export writes language models: both say so.
    for command in (("generate", "--run", "last", "hello"), ("chat", "--run", "last")):
        code, out = run(*command, cwd=project)
        assert code == 1, out
        assert f"run {folder.name} trained a sequence classifier" in out
        assert f"ft evaluate {folder.name}" in " ".join(out.split())
    code, out = run("export", "last", "--format", "hf", cwd=project)
    assert code == 1, out
    assert "ft export writes language models" in " ".join(out.split())
