"""`ft train` with `method.objective: dpo` on preference pairs (a JSONL of prompt / chosen /
rejected), then `ft evaluate`: the preference metrics in the run's events, preference accuracy
on the held-out pairs next to the base model's, and the chosen, rejected and generated answers
side by side. SFT data with a preference objective is refused, naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ft_cli.main import cli


def run(*args: str, cwd: Path) -> tuple[int, str]:
    runner = CliRunner()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(cli, list(args))
    finally:
        os.chdir(old)
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path, alpaca_short_rows: list[dict[str, str]]) -> Path:
    from ft_testing.training import preference_rows

    code, out = run("init", "proj", "--profile", "chat", cwd=tmp_path)
    assert code == 0, out
    folder = tmp_path / "proj"
    text = (folder / "train.yml").read_text()
    (folder / "train.yml").write_text(text.replace("name: smollm2-135m", f"name: {tiny_llama}"))
    pairs = preference_rows(alpaca_short_rows[:24])
    (folder / "data" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (folder / "data" / "answers.jsonl").write_text(
        "".join(
            json.dumps({"prompt": p["prompt"], "completion": p["chosen"]}) + "\n" for p in pairs
        )
    )
    return folder


DPO = (
    "--set", "method.objective=dpo",
    "--set", "method.beta=0.5",
    "--set", "data.max_seq_length=128",
    "--set", "data.validation_split=0.25",
    "--set", "training.batch_size=4",
    "--set", "training.learning_rate=0.005",
    "--set", "training.max_steps=4",
    "--set", "training.eval_every=2",
    "--set", "training.precision=fp32",
    "--set", "resources.device=cpu",
)  # fmt: skip


def test_train_and_evaluate_dpo(project: Path) -> None:
    code, out = run("train", *DPO, "--set", "data.train=data/pairs.jsonl", "--json", cwd=project)
    assert code == 0, out
    (folder,) = [p for p in (project / "runs").iterdir() if p.is_dir()]
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and [e["step"] for e in evals] == [2, 4]
    for event in steps + evals:
        assert {"rewards_chosen", "rewards_rejected", "margin", "accuracy"} <= event.keys()
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # policy = reference at first

    code, out = run("evaluate", folder.name, "--samples", "2", "--max-tokens", "4", cwd=project)
    assert code == 0, out
    assert "preference_accuracy" in out and "reward_accuracy" in out
    assert "rejected" in out and "chosen" in out
    (saved,) = (folder / "evaluations").glob("*.json")
    result = json.loads(saved.read_text())
    assert 0.0 <= result["metrics"]["preference_accuracy"] <= 1.0
    assert "preference_accuracy" in result["base_metrics"]
    assert all(sample["rejected"] for sample in result["samples"])


def test_dpo_on_data_without_pairs_is_refused(project: Path) -> None:
    code, out = run("train", *DPO, "--set", "data.train=data/answers.jsonl", cwd=project)
    assert code != 0
    assert "method.objective: dpo trains on preference pairs" in out
    assert "data.train" in out and "answers.jsonl" in out and "method.objective: sft" in out
