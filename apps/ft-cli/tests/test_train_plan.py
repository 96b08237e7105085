"""`ft train`'s plan and memory guard on a fresh `ft init` project with a tiny random Llama:
the plan printed before training, a fixed batch that cannot fit refused before any run folder
exists (and split by `batch_size: auto`), and the watchdog that stops a run which grows past
the memory it may use, with a checkpoint and a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ft_runs.preflight


@pytest.fixture
def run(run_ft):
    return run_ft


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path, run) -> Path:
    code, out = run("init", "proj", "--profile", "chat", cwd=tmp_path)
    assert code == 0, out
    folder = tmp_path / "proj"
    text = (folder / "train.yml").read_text()
    (folder / "train.yml").write_text(text.replace("name: smollm2-135m", f"name: {tiny_llama}"))
    return folder


def runs_of(project: Path) -> list[Path]:
    folder = project / "runs"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def test_the_plan_is_printed_before_training(project: Path, run) -> None:
    code, out = run("train", "--set", "training.max_steps=2", cwd=project)
    assert code == 0, out
    plan = out[out.index("plan: ") : out.index("training on")]
    assert "examples" in plan and "tokens (" in plan and "trained) per epoch" in plan
    assert "tokens per optimizer step" in plan and "2 optimizer steps (training.max_steps)" in plan
    assert "of memory at the peak (fp32)" in plan or "of memory at the peak (bf16)" in plan
    assert "why: tokens per step: 256 (auto:" in plan  # the chat profile: batch_size: auto
    info = json.loads((runs_of(project)[0] / "run.json").read_text())
    assert info["plan"]["batch"]["micro_batch"] >= 1 and info["plan"]["optimizer_steps"] == 2


def _limit_between(project: Path, rows: int, length: int) -> float:
    """A memory limit (GB) under which `rows` rows of `length` do not fit but one row does."""
    from ft_config import load_config
    from ft_train_core.batch_plan import BatchPlan, DatasetSize
    from ft_train_core.plan import MemoryBudget, make_plan, model_shape

    config = load_config(project / "train.yml", overrides=[f"data.max_seq_length={length}"])
    model = Path(config.model.name)
    data = DatasetSize(lengths=np.full(8, length // 4), trained_tokens=length, mode="pack")

    def peak(batch: int) -> int:
        result = make_plan(
            config,
            data,
            model_shape(model),
            budget=MemoryBudget(10**15, "test"),
            device="cpu",
            precision="fp32",
            resumed=BatchPlan("pack", length, batch, 1),
        )
        return result.estimate.total_bytes

    one, many = peak(1), peak(rows)
    assert many > one * 1.2
    return (one + many) / 2 / 0.85 / 1e9


def test_a_batch_that_cannot_fit_is_refused_before_training_or_split_by_auto(
    project: Path, run
) -> None:
    limit = _limit_between(project, 64, 512)
    fixed = (
        "--set",
        "data.max_seq_length=512",
        "--set",
        "training.batch_size=64",
        "--set",
        f"resources.max_memory_gb={limit:.3f}",
        "--set",
        "training.precision=fp32",
    )
    code, out = run("train", *fixed, cwd=project)
    assert code != 0
    assert "error: the run does not fit in memory: a micro-batch of 64 row(s) of 512 tokens" in out
    assert f"of {limit:.1f} GB" in out or "this process may use" in out
    assert "training.batch_size: auto" in out
    assert runs_of(project) == []  # refused before a run folder or a job record was made
    code, out = run(
        "train",
        "--set",
        "data.max_seq_length=512",
        "--set",
        "training.batch_size=auto",
        "--set",
        "training.tokens_per_step=32768",
        "--set",
        f"resources.max_memory_gb={limit:.3f}",
        "--set",
        "training.precision=fp32",
        "--set",
        "training.max_steps=1",
        cwd=project,
    )
    assert code == 0, out
    info = json.loads((runs_of(project)[0] / "run.json").read_text())
    batch = info["plan"]["batch"]
    assert batch["row_length"] == 512 and 1 <= batch["micro_batch"] < 64
    assert batch["micro_batch"] * batch["accumulation"] == 64  # the same tokens per step
    assert info["plan"]["estimated_peak_bytes"] <= 0.85 * limit * 1e9


def _scripted_memory(monkeypatch: pytest.MonkeyPatch, project: Path, *, at_step: int, share: float):
    """Make the watchdog read `share` of the limit once step `at_step` is in metrics.jsonl."""
    limit = 50.0  # GB: resources.max_memory_gb, far above what the tiny run needs

    def reading() -> int:
        for folder in runs_of(project):
            metrics = folder / "metrics.jsonl"
            if metrics.exists() and f'"type": "step", "step": {at_step},' in metrics.read_text():
                return int(share * limit * 1e9)
        return int(0.1 * limit * 1e9)

    monkeypatch.setattr(ft_runs.preflight, "tree_memory", reading)
    return ("--set", f"resources.max_memory_gb={limit}")


FAST = ("--set", "data.max_seq_length=64", "--set", "training.batch_size=2")


def test_the_watchdog_stops_with_a_checkpoint_near_the_limit(project, monkeypatch, run) -> None:
    limit = _scripted_memory(monkeypatch, project, at_step=2, share=0.93)
    code, out = run("train", *FAST, *limit, "--set", "training.max_steps=50", cwd=project)
    assert code == 0, out
    assert "memory: training uses 46.5 GB of the 50.0 GB this process may use" in out
    assert "saving a checkpoint and stopping after this step" in out
    assert "interrupted (memory)" in out
    folder = runs_of(project)[0]
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
    step = int(checkpoints[-1].split("-")[1])
    # Stopped soon after the reading (the tiny model makes a step in milliseconds, the
    # watchdog reads four times a second), at the step it saved.
    assert 2 <= step < 50 and f"interrupted (memory) at step {step}" in out
    monkeypatch.setattr(ft_runs.preflight, "tree_memory", lambda: 10**9)
    code, out = run("train", "--resume", "--set", "training.max_steps=6", cwd=project)
    assert code == 0, out
    assert f"resuming {folder.name} from step {step}" in out


def test_the_watchdog_interrupts_a_step_past_the_hard_limit(project, monkeypatch, run) -> None:
    """Memory past 97% while a step runs: the step is interrupted at once (inside its forward
    and backward passes only), the last complete step is saved (never a half-written
    checkpoint), and the run ends with a message that says what to change."""
    import time

    import ft_train_torch.packing

    limit = _scripted_memory(monkeypatch, project, at_step=3, share=0.99)
    # Steps of the tiny model take milliseconds: slow them down so the reading lands in one.
    selected = ft_train_torch.packing.selected_lm_loss

    def slow(logits, batch):
        time.sleep(0.3)
        return selected(logits, batch)

    monkeypatch.setattr("ft_train_torch.trainer.selected_lm_loss", slow)
    chunked = ft_train_torch.packing.OutputAtTargets.chunked_loss

    def slow_chunked(self, batch):
        time.sleep(0.3)
        return chunked(self, batch)

    monkeypatch.setattr(ft_train_torch.packing.OutputAtTargets, "chunked_loss", slow_chunked)
    code, out = run("train", *FAST, *limit, "--set", "training.max_steps=200", cwd=project)
    assert code != 0
    assert "49.5 GB of the 50.0 GB this process may use (resources.max_memory_gb)" in out
    assert "--set training.gradient_checkpointing=true" in out
    folder = runs_of(project)[0]
    saved = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert saved and all(not name.startswith(".") for name in saved)
    assert 3 <= int(saved[-1].split("-")[1]) < 200
    from ft_runs.store import JobStore

    record = JobStore().get_run(folder.name)
    assert (record.status, record.reason) == ("interrupted", "memory")
