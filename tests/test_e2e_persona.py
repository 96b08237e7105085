"""A user's first own dataset, as a new user runs it: `ft init`, about a hundred chats that
teach the embedded SmolLM2-135M-Instruct a name and a maker in place of the starter data,
`ft train` with the train.yml `ft init` wrote, then `ft generate --run last` on a question no
row asks. With the chat profile's defaults (batch_size: auto, the plan) it trains in a few
GB and a few minutes on two CPU cores, and answers with what it was taught."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ft_cli.main import cli
from ft_testing.personas import HELD_OUT_QUESTIONS, PIP, persona_rows


def ft(*args: str, cwd: Path) -> str:
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_init_a_persona_dataset_and_train_with_no_other_change(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    ft("init", "mine", cwd=tmp_path)
    project = tmp_path / "mine"
    rows = persona_rows(PIP)
    (project / "data" / "train.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8"
    )
    out = ft("train", "--json", cwd=project)
    assert "plan: " in out and "warning: only" not in out
    summary = json.loads(out[out.index("{\n") :])
    assert summary["status"] == "completed"
    info = json.loads((Path(summary["folder"]) / "run.json").read_text())
    assert info["plan"]["optimizer_steps"] >= 30
    answers = [
        ft("generate", "--run", "last", "--max-tokens", "40", question, cwd=project)
        for question in HELD_OUT_QUESTIONS
    ]
    assert all(PIP.name in answer for answer in answers), answers
    assert any(PIP.maker in answer for answer in answers), answers
