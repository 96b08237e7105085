"""Exact resume: a run stopped (or killed) and resumed ends bit-identical to an uninterrupted one.

The runs use dropout (so the RNG must be restored), packing, gradient accumulation, warmup
and a cosine schedule, and evaluation with best-checkpoint tracking.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import time
from pathlib import Path

import pytest
from train_helpers import launch, tensors_sha256, train

from ft_config.structure import unstructure_config
from ft_models.checkpoint import latest_valid_checkpoint, read_manifest
from ft_train_torch import check_resume_compatible

RESUME_SETTINGS = {
    "method__dropout": 0.1,
    "data__packing": True,
    "training__batch_size": 2,
    "training__gradient_accumulation_steps": 2,
    "training__lr_scheduler": "cosine",
    "training__warmup_steps": 2,
    "training__epochs": 2,
    "training__eval_every": 3,
}


def _resumed(make_job, run: str, stops: list[int], **settings) -> tuple[Path, list[dict]]:
    """Run with a stop after each step count in `stops`, resuming each time from the newest
    checkpoint; returns the final adapter folder and the last run's events."""
    job = make_job(run=run, **settings)
    for stop in stops:
        events, result = train(job, stop_at=stop)
        assert result.reason == "interrupted"
        found = latest_valid_checkpoint(job.checkpoints_dir)
        assert found is not None
        job = make_job(run=run, resume_from=found[0], **settings)
    events, result = train(job)
    assert result.reason == "completed"
    return result.adapter_path, events


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_factory, prepared) -> tuple[str, int]:
    """The uninterrupted run: (sha256 of the final adapter's tensors, its steps)."""
    from train_helpers import settings

    from ft_config.structure import structure_config
    from ft_runs.protocols import TrainJob

    config, _ = structure_config(settings(**RESUME_SETTINGS))
    train_data, val = prepared("llama")
    run_dir = tmp_path_factory.mktemp("straight")
    job = TrainJob(
        config=config,
        model_path=tiny_model_factory("llama"),
        train_data=train_data,
        validation_data=val,
        run_dir=run_dir,
    )
    _events, result = train(job)
    assert result.reason == "completed"
    return tensors_sha256(result.adapter_path), result.step


def test_stop_and_resume_is_bit_identical(make_job, straight) -> None:
    digest, steps = straight
    assert steps >= 12
    # Stops after the first step, mid-epoch, on an evaluation step, and twice in one run.
    for run, stops in (("a", [1]), ("b", [5]), ("c", [3, 4, steps - 1])):
        adapter, events = _resumed(make_job, run, stops, **RESUME_SETTINGS)
        assert events[0]["resumed_from_step"] == stops[-1]
        assert tensors_sha256(adapter) == digest, f"stops at {stops}"


def test_resume_restores_the_best_and_patience(make_job) -> None:
    settings = {
        **RESUME_SETTINGS,
        "training__eval_every": 1,
        "training__early_stopping_patience": 3,
        "training__early_stopping_threshold": 10.0,
    }
    job = make_job(run="p", **settings)
    train(job, stop_at=2)  # evaluations at 1 (best) and 2 (1 without improvement)
    events, result = train(
        make_job(run="p", resume_from=job.checkpoints_dir / "step-00000002", **settings)
    )
    assert [e["step"] for e in events if e["type"] == "eval"] == [3, 4]
    assert (result.reason, result.step) == ("early_stopping", 4)
    assert result.best_checkpoint == job.checkpoints_dir / "step-00000001"


def test_check_resume_compatible(make_job) -> None:
    job = make_job(validation=False, training__max_steps=1)
    train(job)
    checkpoint = job.checkpoints_dir / "step-00000001"
    assert (
        check_resume_compatible(
            checkpoint, make_job(validation=False, training__max_steps=5, logging__every=1)
        )
        == []
    )
    changed = check_resume_compatible(
        checkpoint, make_job(validation=False, training__learning_rate=5e-4)
    )
    assert changed == ["training.learning_rate was 0.001, now 0.0005"]
    other_data = check_resume_compatible(checkpoint, make_job(validation=True))
    assert other_data == ["the validation data differs (a different prepared dataset)"]
    other_model = check_resume_compatible(checkpoint, make_job(arch="qwen2", validation=False))
    assert "the base model differs (config.json or weight files changed)" in other_model
    assert "the train data differs (a different prepared dataset)" in other_model


def test_resume_warns_about_changes(make_job) -> None:
    job = make_job(validation=False, training__max_steps=1)
    train(job)
    events, _ = train(
        make_job(
            validation=False,
            training__max_steps=2,
            training__learning_rate=5e-4,
            resume_from=job.checkpoints_dir / "step-00000001",
        )
    )
    warnings = [e["text"] for e in events if e["type"] == "message"]
    assert warnings == ["resuming with a change: training.learning_rate was 0.001, now 0.0005"]


# -- crash: SIGKILL at random moments --------------------------------------------------------------


def _job_file(job, folder: Path) -> Path:
    spec = {
        "config": unstructure_config(job.config),
        "model_path": str(job.model_path),
        "train_data": str(job.train_data),
        "validation_data": str(job.validation_data) if job.validation_data else None,
        "run_dir": str(job.run_dir),
        "resume_from": "latest",
        "events": str(folder / "events.jsonl"),
    }
    path = folder / "job.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def _kill_and_resume(job, tmp_path: Path, kills: int, seed: int) -> tuple[list[dict], bool]:
    """Start the job in a child process and SIGKILL it `kills` times, first while a checkpoint
    is being written, then at random moments; then let it finish. Each start resumes from the
    newest valid checkpoint. Returns the events of every attempt, and whether the first kill
    left a half-written checkpoint behind."""
    job_file = str(_job_file(job, tmp_path))
    # forkserver: children fork from a process that has imported torch once (an import costs
    # 10-25 s on this machine) but never ran a thread pool, so forking is safe.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        ["torch", "transformers", "peft", "ft_train_torch.launch", "train_helpers"]
    )
    rng = random.Random(seed)
    checkpoints = job.checkpoints_dir
    mid_write = False
    for attempt in range(kills + 1):
        child = context.Process(target=launch, args=(job_file,))
        child.start()
        if attempt < kills:
            if attempt == 0:  # the first kill: during a checkpoint write, when one can be caught
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and child.is_alive():
                    # a checkpoint is complete and the next one is being written
                    names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
                    if any(n.startswith("step-") for n in names) and any(
                        n.startswith(".tmp-") for n in names
                    ):
                        break
                    time.sleep(0.0005)
            else:
                time.sleep(rng.uniform(1.0, 3.0))
            child.kill()
            child.join(120)
            if attempt == 0:
                mid_write = any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())
        child.join(120)
        assert child.exitcode is not None
        if attempt == kills:
            assert child.exitcode == 0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    return events, mid_write


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(make_job, straight, tmp_path) -> None:
    job = make_job(run="killed", **RESUME_SETTINGS, training__save_every=1)
    events, mid_write = _kill_and_resume(job, tmp_path, kills=3, seed=1)
    starts = [e["resumed_from_step"] for e in events if e["type"] == "start"]
    print("resumed from steps", starts, "first kill during a checkpoint write:", mid_write)
    # A kill may land before a child has started training (then it leaves no start event).
    assert 2 <= len(starts) <= 4 and starts[0] is None and events[-1]["reason"] == "completed"
    assert mid_write, "the first kill should land while a checkpoint is written"
    assert starts[1], f"the resume after the first kill should start from a checkpoint: {starts}"
    assert tensors_sha256(job.adapter_dir) == straight[0]
    for checkpoint in job.checkpoints_dir.iterdir():
        read_manifest(checkpoint)  # every surviving checkpoint is whole


@pytest.mark.slow
def test_full_finetune_sigkill_and_resume(make_job, tmp_path) -> None:
    settings = {
        "validation": False,
        "method__name": "full",
        "training__max_steps": 12,
        "training__save_every": 2,
        "training__learning_rate": 1e-4,
        "training__batch_size": 2,
    }
    _, reference = train(make_job(run="full-straight", **settings))
    job = make_job(run="full-killed", **settings)
    events, mid_write = _kill_and_resume(job, tmp_path, kills=1, seed=2)
    starts = [e["resumed_from_step"] for e in events if e["type"] == "start"]
    assert (
        mid_write and starts[0] is None and starts[1] >= 2 and events[-1]["reason"] == "max_steps"
    )
    assert tensors_sha256(job.adapter_dir, "model.safetensors") == tensors_sha256(
        reference.adapter_path, "model.safetensors"
    )
    shutil.rmtree(job.run_dir)
