"""Data parallel under torchrun, 2 CPU processes (gloo).

DDP and FSDP (FSDP2, `resources.strategy: fsdp`) with batch b each end with the weights of one
process with batch 2b, to 1e-6 (only the order of floating-point sums differs). FSDP's
checkpoints are gathered to rank 0 and hold the same files as a single process' checkpoints:
an FSDP run resumes under FSDP, and alone, and ends where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ft_models.checkpoint import latest_valid_checkpoint
from ft_testing import training
from ft_train_core.jobs import job_spec
from ft_train_torch import TorchTrainer

train = partial(training.train, TorchTrainer)

COMMON = {
    "training__max_steps": 4,
    "training__eval_every": 2,
    "training__lr_scheduler": "linear",
    "method__dropout": 0.0,
    "data__packing": True,
}


def torchrun(job: Any, folder: Path, nproc: int = 2) -> list[dict[str, Any]]:
    """Run `job` in `nproc` local processes, as `ft train` launches them; rank 0's events."""
    folder.mkdir(parents=True, exist_ok=True)
    events = folder / "events.jsonl"
    (folder / "job.json").write_text(json.dumps(job_spec(job, events=events)))
    process = run_torchrun(nproc, "-m", "ft_train_torch.launch", str(folder / "job.json"))
    assert process.returncode == 0, process.stderr[-3000:]
    return [json.loads(line) for line in events.read_text().splitlines()]


def run_torchrun(nproc: int, *target: str) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node N TARGET...` with one thread per process."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(nproc), *target],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def assert_same_adapter(
    a_dir: Path, b_dir: Path, atol: float = 1e-6, file: str = "adapter_model.safetensors"
) -> None:
    a = load_file(str(a_dir / file))
    b = load_file(str(b_dir / file))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol)


def newest(checkpoints: Path) -> Path:
    found = latest_valid_checkpoint(checkpoints)
    assert found is not None, f"no valid checkpoint in {checkpoints}"
    return found[0]


def of(events: list[dict[str, Any]], kind: str, key: str) -> list[float]:
    return [e[key] for e in events if e["type"] == kind]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "method"), [("ddp", "lora"), ("fsdp", "lora"), ("fsdp", "full")]
)
def test_two_processes_equal_one_with_twice_the_batch(make_job, tmp_path, strategy, method) -> None:
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    common = {**COMMON, "method__name": method}
    if method == "full":
        common["training__learning_rate"] = 1e-4
    single_job = make_job(run="single", training__batch_size=4, **common)
    single_events, single = train(single_job)
    job = make_job(run=strategy, training__batch_size=2, resources__strategy=strategy, **common)
    events = torchrun(job, tmp_path / "launch")
    kinds = [e["type"] for e in events]
    # Only rank 0 reports: one start, one end, 4 steps, 2 evaluations.
    assert (kinds.count("start"), kinds.count("step"), kinds.count("eval"), kinds.count("end")) == (
        1,
        4,
        2,
        1,
    )
    assert events[-1]["reason"] == "max_steps"
    # Rank 0 answers the evaluation samples alone, as one process does; not under FSDP (its
    # forward pass needs every process), which a note says.
    if strategy == "ddp":
        assert of(events, "samples", "samples") == of(single_events, "samples", "samples")
    else:
        assert kinds.count("samples") == 0
        assert "training.eval_samples: no samples under FSDP" in of(events, "message", "text")
    assert_same_adapter(single.adapter_path, job.adapter_dir, file=weights)
    assert of(events, "step", "loss") == pytest.approx(of(single_events, "step", "loss"), rel=1e-6)
    assert of(events, "eval", "eval_loss") == pytest.approx(
        of(single_events, "eval", "eval_loss"), rel=1e-6
    )
    if strategy == "fsdp":
        # The checkpoint rank 0 gathered holds the whole adapter and optimizer state, in the
        # files and numbering a single process writes.
        checkpoint = newest(job.checkpoints_dir)
        alone = newest(single_job.checkpoints_dir)
        for file in (weights, "optimizer.safetensors"):
            mine, theirs = load_file(str(checkpoint / file)), load_file(str(alone / file))
            assert mine.keys() == theirs.keys()
            for name in mine:
                assert mine[name].shape == theirs[name].shape, name
                torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-6)
        index = json.loads((checkpoint / "optimizer.json").read_text())
        assert (
            index["param_groups"]
            == json.loads((alone / "optimizer.json").read_text())["param_groups"]
        )


@pytest.mark.slow
def test_fsdp_run_resumes_sharded_and_alone(make_job, tmp_path) -> None:
    """Stopped at step 2 of 4, an FSDP run resumes (under FSDP, and in one process) to the
    weights of the run that was never stopped."""
    # A constant rate: the first launch plans 2 steps, and a schedule's shape depends on the plan.
    settings = {**COMMON, "training__save_every": 2, "training__lr_scheduler": "constant"}
    _, whole = train(make_job(run="whole", training__batch_size=4, **settings))
    first = make_job(
        run="fsdp",
        training__batch_size=2,
        resources__strategy="fsdp",
        **{**settings, "training__max_steps": 2},
    )
    torchrun(first, tmp_path / "first")
    checkpoint = newest(first.checkpoints_dir)
    assert checkpoint.name == "step-00000002"

    sharded = make_job(
        run="fsdp",
        training__batch_size=2,
        resources__strategy="fsdp",
        resume_from=checkpoint,
        **settings,
    )
    events = torchrun(sharded, tmp_path / "second")
    assert events[0]["resumed_from_step"] == 2
    assert of(events, "step", "loss") and events[-1]["step"] == 4
    assert_same_adapter(whole.adapter_path, sharded.adapter_dir)

    alone = make_job(run="alone", training__batch_size=4, resume_from=checkpoint, **settings)
    _, result = train(alone)
    assert result.step == 4
    assert_same_adapter(whole.adapter_path, result.adapter_path)


@pytest.mark.gpu
def test_fsdp_on_cuda_gathers_and_restores_state() -> None:
    """FSDP2 over NCCL (one GPU): gathered weights and optimizer state equal an unsharded
    copy's, and restoring them continues training identically (see fsdp_cuda_check.py)."""
    process = run_torchrun(1, str(Path(__file__).with_name("fsdp_cuda_check.py")))
    assert process.returncode == 0 and "OK" in process.stdout, process.stderr[-3000:]
