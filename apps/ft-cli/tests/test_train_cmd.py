"""`ft train` end to end on a fresh `ft init` project, with a tiny random Llama."""

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
        result = runner.invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.output


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path) -> Path:
    code, out = run("init", "proj", "--profile", "chat", cwd=tmp_path)
    assert code == 0, out
    folder = tmp_path / "proj"
    text = (folder / "train.yml").read_text()
    text = text.replace("name: smollm2-135m", f"name: {tiny_llama}")
    (folder / "train.yml").write_text(text)
    return folder


FAST = (
    "--set",
    "data.max_seq_length=64",
    "--set",
    "training.batch_size=2",
    "--set",
    "training.eval_every=2",
    "--set",
    "data.validation_split=0.25",
)


def only_run(project: Path) -> Path:
    runs = [p for p in (project / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_train_on_a_fresh_project_records_the_run(project: Path) -> None:
    code, out = run("train", *FAST, "--set", "training.max_steps=4", "--json", cwd=project)
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["status"] == "completed"
    assert summary["reason"] == "max_steps"
    assert summary["step"] == 4
    folder = only_run(project)
    assert summary["folder"] == str(folder)
    # The run folder holds the config snapshot, run.json with what was used, metrics, the
    # held-out split, checkpoints and the final adapter in PEFT's layout.
    info = json.loads((folder / "run.json").read_text())
    assert Path(info["model"]["path"]).is_absolute()
    assert info["data"]["format"] == "openai"
    assert info["backend"] == "torch"
    assert info["config_commit"]  # ft init made a git repository and committed train.yml
    assert (folder / "data" / "validation.h5").exists()
    assert (folder / "adapter" / "adapter_config.json").exists()
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert [e["step"] for e in events if e["type"] == "eval"] == [2, 4]
    best = json.loads((folder / "best.json").read_text())
    assert best["checkpoint"].startswith("checkpoints/step-")

    code, out = run("runs", "list", "--json", cwd=project)
    assert code == 0, out
    (record,) = json.loads(out)
    assert record["id"] == folder.name
    assert record["status"] == "completed"
    assert record["step"] == 4
    assert record["best_eval_loss"] == pytest.approx(best["eval_loss"])
    code, out = run("runs", "show", folder.name[:15], cwd=project)
    assert code == 0, out
    assert "completed" in out and str(folder / "adapter") in out


def test_resume_continues_the_same_run_and_refuses_a_changed_config(project: Path) -> None:
    code, out = run("train", *FAST, "--set", "training.max_steps=2", cwd=project)
    assert code == 0, out
    folder = only_run(project)

    code, out = run(
        "train", *FAST, "--set", "training.max_steps=2", "--set", "training.learning_rate=0.5",
        "--resume", cwd=project,
    )  # fmt: skip
    assert code == 1
    assert "training.learning_rate was 0.0003, now 0.5" in out
    assert "--force" in out

    code, out = run(
        "train", *FAST, "--set", "training.max_steps=4", "--resume", "--json", cwd=project
    )
    assert code == 0, out
    assert f"resuming {folder.name} from step 2" in out
    summary = json.loads(out[out.index("{") :])
    assert summary["run"] == folder.name and summary["step"] == 4
    assert only_run(project) == folder  # no second run folder
    steps = [
        json.loads(line)["step"]
        for line in (folder / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "step"
    ]
    assert steps == [1, 2, 3, 4]

    # The checkpoint at step 4 is damaged: the run resumes from step 2 and steps 3 and 4 are
    # recorded again in place of the first ones, in metrics.jsonl and in the job store.
    (folder / "checkpoints" / "step-00000004" / "adapter_model.safetensors").write_bytes(b"x")
    code, out = run("train", *FAST, "--set", "training.max_steps=4", "--resume", cwd=project)
    assert code == 0, out
    assert f"resuming {folder.name} from step 2" in out
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert [e["step"] for e in events if e["type"] == "eval"] == [2, 4]
    from ft_runs.store import JobStore

    assert [m["step"] for m in JobStore().metrics(folder.name, "train")] == [1, 2, 3, 4]
    assert [m["step"] for m in JobStore().metrics(folder.name, "eval")] == [2, 4]

    # Every checkpoint damaged: the completed run is not trained again from step 0.
    for checkpoint in (folder / "checkpoints").glob("step-*"):
        (checkpoint / "manifest.json").unlink()
    code, out = run("train", *FAST, "--set", "training.max_steps=4", "--resume", cwd=project)
    assert code == 1
    assert f"error: run {folder.name} completed at step 4, and none of its" in out


def test_a_bad_setting_names_the_file_line_and_key(project: Path) -> None:
    text = (
        (project / "train.yml").read_text().replace("learning_rate: 3.0e-04", "learning_rate: fast")
    )
    (project / "train.yml").write_text(text)
    line = text.splitlines().index("  learning_rate: fast") + 1
    code, out = run("train", cwd=project)
    assert code == 1
    assert f"train.yml:{line}: training.learning_rate: expected a number, got 'fast'" in out
    assert not (project / "runs").exists()


def test_no_train_yml_says_what_to_do(tmp_path: Path) -> None:
    code, out = run("train", cwd=tmp_path)
    assert code == 1
    assert "ft init" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--set", "method.name=prefix"),
            "resources.strategy: fsdp does not support method prefix (its weights cannot be "
            "sharded and gathered by FSDP here): use resources.strategy: ddp, or method lora",
        ),
        (
            ("--backend", "mlx"),
            "resources.strategy: fsdp is a PyTorch strategy; the mlx backend replicates the "
            "model in each process. Remove it, or set training.backend: torch",
        ),
    ],
)
def test_fsdp_refusals_say_what_to_do(project: Path, flags: tuple[str, ...], message: str) -> None:
    code, out = run("train", *FAST, "--strategy", "fsdp", "--nproc", "2", *flags, cwd=project)
    assert code == 1
    assert message in " ".join(out.split())
    assert not list((project / "runs").glob("*"))  # refused before any run folder


@pytest.mark.slow
def test_two_processes_with_torchrun(project: Path) -> None:
    code, out = run(
        "train", *FAST, "--set", "training.max_steps=2", "--set", "training.batch_size=1",
        "--nproc-per-node", "2", "--json", cwd=project,
    )  # fmt: skip
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["status"] == "completed" and summary["step"] == 2
    folder = only_run(project)
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    job = json.loads((folder / "job.json").read_text())
    assert job["train_data"].endswith("data/train.h5")
    steps = [e for e in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]
    assert [e["step"] for e in steps if e["type"] == "step"] == [1, 2]


@pytest.mark.slow
def test_stopping_two_processes_saves_a_checkpoint_and_resumes(project: Path) -> None:
    """Ctrl-C during a torchrun launch: both processes stop at the same step, save a checkpoint
    together and exit; `ft train --resume` continues from it, with the settings the run was
    started with (`settings` is not repeated) plus a longer `max_steps`."""
    from ft_runs.training import train
    from ft_train_core.protocol import Launch

    def stepped() -> bool:  # the stop request, once the processes have taken a step
        events = list((project / "runs").glob("*/launch-events.jsonl"))
        return bool(events) and '"type": "step"' in events[0].read_text()

    settings = [
        "data.max_seq_length=64", "training.batch_size=1", "data.validation_split=0.25",
        "training.eval_every=100000", "training.save_every=100000",
    ]  # fmt: skip
    outcome = train(
        project / "train.yml",
        overrides=[*settings, "training.max_steps=100000"],
        say=lambda text: None,
        should_stop=stepped,
        launch=Launch(nproc=2),
    )  # fmt: skip
    assert outcome.status == "interrupted" and outcome.result.reason == "interrupted"
    stopped_at = outcome.result.step
    assert 1 <= stopped_at < 100000
    checkpoints = sorted(p.name for p in (outcome.folder.path / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step-{stopped_at:08d}"
    assert not (outcome.folder.path / "stop-request").exists()

    code, out = run(
        "train", "--resume", outcome.run_id, "--set", f"training.max_steps={stopped_at + 2}",
        "--nproc-per-node", "2", "--json", cwd=project,
    )  # fmt: skip
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["status"] == "completed" and summary["step"] == stopped_at + 2


def test_report_and_compare(project: Path) -> None:
    for lr in ("1e-3", "1e-2"):
        code, out = run(
            "train", *FAST, "--set", "training.max_steps=4", "--set",
            f"training.learning_rate={lr}", cwd=project,
        )  # fmt: skip
        assert code == 0, out
    first, second = sorted(p.name for p in (project / "runs").iterdir())

    code, out = run("runs", "report", first, cwd=project)
    assert code == 0, out
    png = project / "runs" / first / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] >= 1200  # readable without zooming
    page = (project / "runs" / first / "report.html").read_text()
    assert f"<h1>Run {first}</h1>" in page and "data:image/png;base64," in page
    assert "best validation loss" in page

    code, out = run("runs", "compare", first, second, "--json", cwd=project)
    assert code == 0, out
    comparison = json.loads(out)
    assert comparison["runs"] == [first, second]
    assert comparison["settings"] == {"training.learning_rate": [0.001, 0.01]}
    assert comparison["figures"]["steps"] == [4, 4]
    assert all(isinstance(v, float) for v in comparison["figures"]["best eval loss"])

    code, out = run("runs", "compare", first, cwd=project)
    assert code == 1 and "at least two runs" in out


def test_evaluate_stores_metrics_and_answers(project: Path) -> None:
    code, out = run("train", *FAST, "--set", "training.max_steps=2", cwd=project)
    assert code == 0, out
    folder = only_run(project)
    code, out = run(
        "evaluate", "--max-examples", "3", "--max-tokens", "4", "--samples", "2", "--json",
        cwd=project,
    )  # fmt: skip
    assert code == 0, out
    result = json.loads(out[out.index("{") :])
    assert result["run"] == folder.name
    assert result["checkpoint"] == "best (step-00000002)"
    assert set(result["metrics"]) == {
        "eval_loss", "perplexity", "exact_match", "token_f1", "rouge_l", "bleu",
    }  # fmt: skip
    assert set(result["base_metrics"]) == set(result["metrics"])
    # The trainer's own evaluation at step 2 and ft evaluate agree on the loss.
    (evaluated,) = [
        e for e in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        if e["type"] == "eval"
    ]  # fmt: skip
    assert result["metrics"]["eval_loss"] == pytest.approx(evaluated["eval_loss"], abs=1e-4)
    assert len(result["samples"]) == 2
    assert all(s["reference"] and s["prompt"] for s in result["samples"])
    saved = json.loads(Path(result["file"]).read_text())
    assert saved["metrics"] == result["metrics"]

    from ft_runs.store import JobStore

    (stored,) = JobStore().evaluations(folder.name)
    assert stored["metrics"]["eval_loss"] == pytest.approx(result["metrics"]["eval_loss"])
    assert stored["metrics"]["base_eval_loss"] == pytest.approx(result["base_metrics"]["eval_loss"])

    code, out = run("evaluate", "--checkpoint", "7", cwd=project)
    assert code == 1 and "no checkpoint at step 7" in out


def test_train_with_the_mlx_backend(project: Path) -> None:
    pytest.importorskip("ft_train_mlx")
    code, out = run(
        "train", *FAST, "--set", "training.max_steps=2", "--backend", "mlx", "--json", cwd=project
    )
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["status"] == "completed" and summary["step"] == 2
    folder = only_run(project)
    assert json.loads((folder / "run.json").read_text())["backend"] == "mlx"
    # MLX saves adapters in PEFT's layout too.
    adapter = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert (folder / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_two_mlx_processes_with_mlx_launch(project: Path) -> None:
    pytest.importorskip("ft_train_mlx")
    code, out = run(
        "train", *FAST, "--set", "training.max_steps=2", "--set", "training.batch_size=1",
        "--backend", "mlx", "--nproc", "2", "--json", cwd=project,
    )  # fmt: skip
    assert code == 0, out
    summary = json.loads(out[out.index("{") :])
    assert summary["status"] == "completed" and summary["step"] == 2
    folder = only_run(project)
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]


def test_the_run_adapter_loads_in_plain_peft_with_the_logits_of_ft_generation(
    project: Path,
) -> None:
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft_models.generate import Generator

    code, out = run("train", *FAST, "--set", "training.max_steps=3", cwd=project)
    assert code == 0, out
    folder = only_run(project)
    model_path = Path(json.loads((folder / "run.json").read_text())["model"]["path"])
    # float32 on both sides (a CPU with native bf16 would otherwise generate in bf16).
    ours = Generator.load(model_path, backend="torch", dtype="float32", adapter=folder / "adapter")
    ids = ours.encode([{"role": "user", "content": "What is your name?"}])
    ft_logits = np.asarray(ours.lm.start(ids))

    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), folder / "adapter"
    ).eval()
    with torch.no_grad():
        peft_logits = plain(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    np.testing.assert_allclose(ft_logits, peft_logits, rtol=0, atol=1e-5)
    assert np.abs(peft_logits - base_logits).max() > 1e-4  # the adapter did change the model
