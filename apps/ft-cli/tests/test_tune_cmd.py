"""`ft tune` and `ft tune promote` as a user types them, on the tiny Llama (torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_config import load_config


def project(root: Path, model: Path, rows: list[dict[str, str]], space: str) -> Path:
    root.mkdir()
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    (root / "train.yml").write_text(
        f"model: {model}\n"
        "data: {train: data.jsonl, max_seq_length: 48, validation_split: 0.25}\n"
        "method: {name: lora, rank: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"
        "training: {backend: torch, max_steps: 2, eval_every: 1, batch_size: 4,"
        " precision: fp32, seed: 0}\n"
        "logging: {tensorboard: false}\n"
        "resources: {device: cpu, num_threads: 1}\n"
        f"tune:\n  search_space:\n{space}",
        "utf-8",
    )
    return root


@pytest.mark.slow
def test_tune_runs_a_study_and_promote_takes_its_best(
    run_ft, tmp_path: Path, tiny_llama: Path, alpaca_short_rows: list[dict[str, str]]
) -> None:
    root = project(
        tmp_path / "p",
        tiny_llama,
        alpaca_short_rows[:16],
        "    training.learning_rate: {choices: [0.003, 0.001]}\n",
    )
    code, out = run_ft("tune", "--trials", "2", "--sampler", "grid", "--name", "g", cwd=root)
    assert code == 0, out
    assert "study g: " in out and "best: trial " in out
    assert "promote  ft tune promote --study g" in out
    report = json.loads((root / "tune" / "g" / "report.json").read_text("utf-8"))
    assert sorted(t["settings"]["training.learning_rate"] for t in report["trials"]) == [
        0.001,
        0.003,
    ]
    best = report["best"]
    code, out = run_ft("tune", "promote", cwd=root)
    assert code == 0, out
    assert (
        load_config(root / "train.yml").training.learning_rate
        == (best["settings"]["training.learning_rate"])
    )
    assert (root / "model" / "promoted.json").is_file()
    # A finished study asked for more trials goes on from where it is.
    code, out = run_ft("tune", "--resume", "g", "--trials", "2", cwd=root)
    assert code == 0 and "trial 2" not in out, out


def test_tune_refuses_a_search_space_it_cannot_use(
    run_ft, tmp_path: Path, tiny_llama: Path, alpaca_short_rows: list[dict[str, str]]
) -> None:
    root = project(
        tmp_path / "p",
        tiny_llama,
        alpaca_short_rows[:16],
        "    method.alpha: {same_as: method.rank, times: 2}\n",
    )
    code, out = run_ft("tune", cwd=root)
    assert code == 1
    assert out.startswith(
        "error: tune.search_space.method.alpha.same_as: 'method.rank' is not a parameter above "
        "this one\n"
    )
    assert not (root / "tune").exists()
    code, out = run_ft("tune", "--resume", cwd=root)
    assert code == 1 and f"there is no study in {root / 'tune'}" in out
