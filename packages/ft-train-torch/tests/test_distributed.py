"""Data parallel under torchrun: 2 CPU processes (gloo) with batch b end with the LoRA weights of
1 process with batch 2b, to 1e-6 (only the order of floating-point sums differs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import train

from ft_config.structure import unstructure_config


@pytest.mark.slow
def test_two_processes_equal_one_with_twice_the_batch(make_job, tmp_path) -> None:
    common = {
        "training__max_steps": 4,
        "training__eval_every": 2,
        "training__lr_scheduler": "linear",
        "method__dropout": 0.0,
        "data__packing": True,
    }
    single_events, single = train(make_job(run="single", training__batch_size=4, **common))
    job = make_job(run="ddp", training__batch_size=2, **common)
    spec = {
        "config": unstructure_config(job.config),
        "model_path": str(job.model_path),
        "train_data": str(job.train_data),
        "validation_data": str(job.validation_data),
        "run_dir": str(job.run_dir),
        "events": str(tmp_path / "events.jsonl"),
    }
    (tmp_path / "job.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "ft_train_torch.launch",
            str(tmp_path / "job.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    # Only rank 0 reports: one start, one end, 4 steps, 2 evaluations.
    assert (kinds.count("start"), kinds.count("step"), kinds.count("eval"), kinds.count("end")) == (
        1,
        4,
        2,
        1,
    )
    assert events[-1]["reason"] == "max_steps"
    a = load_file(str(single.adapter_path / "adapter_model.safetensors"))
    b = load_file(str(job.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    single_losses = [e["loss"] for e in single_events if e["type"] == "step"]
    ddp_losses = [e["loss"] for e in events if e["type"] == "step"]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-6)
    single_evals = [e["eval_loss"] for e in single_events if e["type"] == "eval"]
    assert [e["eval_loss"] for e in events if e["type"] == "eval"] == pytest.approx(
        single_evals, rel=1e-6
    )
