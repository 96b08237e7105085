"""Settings that act after or around a run, end to end through `ft train` / `ft evaluate` on a
tiny random Llama: `output.export`, `output.push_to_hub`, `data.test`, `logging.every` and
`logging.level`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

FAST = (
    "--set",
    "data.max_seq_length=64",
    "--set",
    "training.batch_size=2",
    "--set",
    "training.max_steps=3",
    "--set",
    "training.precision=fp32",
)


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path, run_ft) -> Path:
    code, out = run_ft("init", "proj", cwd=tmp_path)
    assert code == 0, out
    folder = tmp_path / "proj"
    text = (folder / "train.yml").read_text().replace("name: smollm2-135m", f"name: {tiny_llama}")
    (folder / "train.yml").write_text(text)
    return folder


def only_run(project: Path) -> Path:
    (run,) = [p for p in (project / "runs").iterdir() if p.is_dir()]
    return run


def test_output_export_and_push_to_hub_when_the_run_completes(
    project: Path, run_ft, hub_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    code, out = run_ft(
        "train",
        *FAST,
        "--set",
        "output.export=[peft, gguf]",
        "--set",
        "output.push_to_hub=ft-test/after-training",
        cwd=project,
    )
    assert code == 0, out
    run = only_run(project)
    outputs = json.loads((run / "run.json").read_text())["outputs"]
    assert outputs["peft"]["verified"] is True and outputs["gguf"]["verified"] is True
    assert (run / "exports" / "peft-float32" / "adapter_model.safetensors").is_file()
    assert next((run / "exports" / "gguf-f16").glob("*.gguf")).stat().st_size > 0
    assert outputs["push_to_hub"]["repo"] == "ft-test/after-training", outputs
    assert "url" in outputs["push_to_hub"], outputs
    assert "adapter_model.safetensors" in HfApi().list_repo_files("ft-test/after-training")
    assert "output.push_to_hub: pushed" in out


def test_a_failed_export_is_reported_and_the_run_stays_completed(project: Path, run_ft) -> None:
    code, out = run_ft(
        "train", *FAST, "--set", "output.export=[onnx]", "--set", "logging.wandb=true",
        cwd=project,
    )  # fmt: skip
    assert code == 0, out
    assert "warning: output.export onnx failed: unknown export format 'onnx'" in out
    if importlib.util.find_spec("wandb") is None:  # the hint names the extra, brackets and all
        assert 'W&B logging is off: W&B logging needs wandb: pip install "ft-runs[wandb]"' in out
    assert "completed (max_steps)" in out
    outputs = json.loads((only_run(project) / "run.json").read_text())["outputs"]
    assert "unknown export format" in outputs["onnx"]["error"]


def test_data_test_is_what_evaluate_scores(project: Path, run_ft) -> None:
    rows = (project / "data" / "train.jsonl").read_text().splitlines()
    (project / "data" / "test.jsonl").write_text("\n".join(rows[:4]) + "\n")
    code, out = run_ft("train", *FAST, "--set", "data.test=data/test.jsonl", cwd=project)
    assert code == 0, out
    code, out = run_ft("evaluate", "--no-base", "--max-examples", "1", "--json", cwd=project)
    assert code == 0, out
    result = json.loads(out[out.index("{\n") :])
    assert result["data"] == "the test set (data.test)"
    # --data still wins.
    code, out = run_ft(
        "evaluate", "--no-base", "--max-examples", "1", "--data", "data/train.jsonl", "--json",
        cwd=project,
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out[out.index("{\n") :])["data"].endswith("data/train.jsonl")


def test_logging_level_and_every(project: Path, run_ft) -> None:
    code, quiet = run_ft("train", *FAST, "--set", "logging.level=warning", cwd=project)
    assert code == 0, quiet
    assert "plan:" not in quiet and "backend:" not in quiet and "completed" in quiet
    code, debug = run_ft(
        "train", *FAST, "--set", "logging.level=debug", "--set", "logging.every=2", cwd=project
    )
    assert code == 0, debug
    assert "plan:" in debug and 'event: {"type": "step", "step": 3' in debug


def test_every_n_steps_averages_the_loss_between_them() -> None:
    from ft_runs.sinks import EveryNSteps, MessagesAtLevel, at_level

    got: list[dict] = []
    sink = EveryNSteps(got.append, 2)
    for step, loss in ((1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)):
        sink({"type": "step", "step": step, "loss": loss})
    sink({"type": "eval", "step": 4, "eval_loss": 1.5})
    assert [(e["type"], e["step"], e.get("loss")) for e in got] == [
        ("step", 1, 4.0),
        ("step", 2, 3.0),
        ("step", 4, 1.5),
        ("eval", 4, None),
    ]
    said: list[str] = []
    at_level(said.append, "warning")("plan: 3 steps")
    at_level(said.append, "warning")("warning: only 3 steps")
    assert said == ["warning: only 3 steps"]
    messages: list[dict] = []
    quiet = MessagesAtLevel(messages.append, "error")
    quiet({"type": "message", "level": "warning", "text": "x"})
    quiet({"type": "step", "step": 1})
    assert messages == [{"type": "step", "step": 1}]
