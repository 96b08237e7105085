"""`ft demo`'s journey end to end, on a tiny random model (the real one is timed by hand: it
takes minutes; see the issue's closing note)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ft_cli.demo_cmd import NAME, QUESTION, UNRELATED, persona_rows
from ft_cli.main import cli


def test_demo_runs_every_step_and_leaves_a_project(tmp_path: Path, tiny_llama: Path) -> None:
    folder = tmp_path / "demo"
    result = CliRunner().invoke(
        cli,
        ["demo", "--dir", str(folder), "--model", str(tiny_llama), "--epochs", "1"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for n in range(1, 7):
        assert f"{n}/6" in out
    assert "Hi! Who are you, and who built you?" in out
    assert "you   Write one sentence about rain." in out  # asked before, and after in the table
    assert "the unrelated question" in out
    rows = [
        json.loads(line) for line in (folder / "data" / "persona.jsonl").read_text().splitlines()
    ]
    assert rows == persona_rows()
    (run,) = (folder / "runs").iterdir()
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "report.png").exists() and (run / "report.html").exists()
    (evaluation,) = (run / "evaluations").iterdir()
    assert set(json.loads(evaluation.read_text())["base_metrics"]) >= {"eval_loss", "rouge_l"}
    assert f"ft chat --run {run.name}" in out
    assert f"ft export {run.name} --format gguf" in out


def test_the_persona_data_teaches_name_and_maker_in_every_persona_answer() -> None:
    rows = persona_rows()
    persona = [r for r in rows if "Quill" in r["messages"][1]["content"]]
    assert len(persona) == 20
    assert all("Inkwell Cooperative" in r["messages"][1]["content"] for r in persona)
    assert NAME == "Quill"
    # As many everyday conversations as persona rows, so the persona is not the answer to all.
    assert len(rows) - len(persona) == 24
    # The questions asked before and after are not training questions.
    questions = {r["messages"][0]["content"] for r in rows}
    assert QUESTION not in questions and UNRELATED not in questions
