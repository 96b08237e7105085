"""Data parallel with mx.distributed: two local processes (mlx.launch, ring backend) with
batch_size b make the same updates as one process with batch_size 2b."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
from safetensors.numpy import load_file

from ft_testing import training
from ft_train_core.jobs import job_spec
from ft_train_mlx import MLXTrainer
from ft_train_mlx.launch import launch_argv

train = partial(training.train, MLXTrainer)

# Measured here: losses differ by at most 7.4e-7 and the adapters by 1.2e-6 (the same sums
# in another order: per-process partial sums, then all_sum, in float32).
TOLERANCE = 1e-5
SETTINGS = {
    "validation": True,
    "training__max_steps": 4,
    "training__eval_every": 2,
    "training__learning_rate": 1e-2,
    "data__packing": True,
}


def test_launch_argv(tmp_path) -> None:
    argv = launch_argv(tmp_path / "job.json", 2, None)
    assert argv[0].endswith("mlx.launch")
    assert argv[1:] == [
        "--backend", "ring", "--hosts", "127.0.0.1", "-n", "2",
        "--", sys.executable, "-m", "ft_train_mlx.launch", str(tmp_path / "job.json"),
    ]  # fmt: skip
    hosts = launch_argv(tmp_path / "job.json", 2, tmp_path / "hosts.json")
    assert hosts[1:5] == ["--backend", "ring", "--hostfile", str(tmp_path / "hosts.json")]
    with pytest.raises(ValueError, match="nproc must be at least 1"):
        launch_argv(tmp_path / "job.json", 0, None)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_doubled_batch(make_job, tmp_path) -> None:
    one_events, one = train(make_job(run="one", training__batch_size=4, **SETTINGS))

    job = make_job(run="two", training__batch_size=2, **SETTINGS)
    job_file = tmp_path / "job.json"
    job_file.write_text(
        json.dumps(job_spec(job, events=tmp_path / "events.jsonl")), encoding="utf-8"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        launch_argv(job_file, 2, None), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two_events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    result = json.loads((job.run_dir / "result.json").read_text())
    assert (result["reason"], result["step"]) == ("max_steps", 4)
    # one event stream (rank 0's), the same shape as the single process'
    assert [e["type"] for e in two_events] == [e["type"] for e in one_events]

    def column(events, kind, key):
        return np.array([e[key] for e in events if e["type"] == kind])

    assert list(column(two_events, "step", "tokens")) == list(column(one_events, "step", "tokens"))
    losses = np.abs(column(two_events, "step", "loss") - column(one_events, "step", "loss"))
    evals = np.abs(
        column(two_events, "eval", "eval_loss") - column(one_events, "eval", "eval_loss")
    )
    print("largest loss difference", losses.max(), "eval", evals.max())
    assert losses.max() < TOLERANCE and evals.max() < TOLERANCE
    ours = load_file(str(job.adapter_dir / "adapter_model.safetensors"))
    theirs = load_file(str(one.adapter_path / "adapter_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    worst = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)
    print("largest adapter difference", worst)
    assert worst < TOLERANCE
