"""Job files: the JSON a launched trainer process reads (`python -m ft_train_torch.launch
job.json`, what torchrun and mlx.launch start on each process), and the loop each such process
runs: train, append events to the job's events file, write the result.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ft_config.structure import structure_config, unstructure_config
from ft_models.checkpoint import latest_valid_checkpoint
from ft_train_core.batch_plan import BatchPlan
from ft_train_core.protocol import Trainer, TrainJob

STOP_FILE = "stop-request"
"""Created by `ft train` in the run folder on Ctrl-C while trainer processes run; rank 0
checks for it each step."""


def job_spec(job: TrainJob, *, events: Path) -> dict[str, Any]:
    """The JSON a launched process reads (`load_job`)."""
    return {
        "config": unstructure_config(job.config),
        "model_path": str(job.model_path),
        "train_data": str(job.train_data),
        "validation_data": str(job.validation_data) if job.validation_data else None,
        "run_dir": str(job.run_dir),
        "resume_from": str(job.resume_from) if job.resume_from else None,
        "plan": job.plan.to_dict() if job.plan else None,
        "events": str(events),
        "stop_file": str(job.run_dir / STOP_FILE),
    }


def load_job(path: Path) -> TrainJob:
    """The TrainJob a job file describes (the JSON file the trainers' `launch` modules run)."""
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    config, problems = structure_config(spec["config"])
    if config is None or problems:
        raise ValueError(f"{path}: invalid config: {problems}")
    run_dir = Path(spec["run_dir"])
    resume = spec.get("resume_from")
    if resume == "latest":
        found = latest_valid_checkpoint(run_dir / "checkpoints")
        resume = found[0] if found else None
    return TrainJob(
        config=config,
        model_path=Path(spec["model_path"]),
        train_data=Path(spec["train_data"]),
        validation_data=Path(spec["validation_data"]) if spec.get("validation_data") else None,
        run_dir=run_dir,
        resume_from=Path(resume) if resume else None,
        plan=BatchPlan.from_dict(spec["plan"]) if spec.get("plan") else None,
    )


def run_job_file(
    args: list[str],
    *,
    module: str,
    trainer: Callable[[], Trainer],
    is_main: Callable[[], bool],
    with_metrics: bool = False,
) -> int:
    """`python -m <module> JOB.json` on one process of a launch: train the job, append every
    event to the job's `events` file and write `<run_dir>/result.json` (on the main process,
    `is_main()`, asked once the job is read); `with_metrics` adds the run's metrics to it.
    The job's `stop_file`, once it exists, asks the processes to checkpoint and stop."""
    if len(args) != 1:
        print(f"usage: python -m {module} JOB.json", file=sys.stderr)
        return 2
    job_file = Path(args[0])
    job = load_job(job_file)
    spec = json.loads(job_file.read_text(encoding="utf-8"))
    events = Path(spec["events"]) if spec.get("events") else None
    main_rank = is_main()

    def emit(event: dict[str, Any]) -> None:
        if events is not None and main_rank:
            with events.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")

    # `ft train` creates the stop file on Ctrl-C. Only rank 0's answer counts (the loops
    # broadcast it), so every process stops at the same step and checkpoints together.
    stop_file = Path(spec["stop_file"]) if spec.get("stop_file") else None

    def should_stop() -> bool:
        return main_rank and stop_file is not None and stop_file.exists()

    result = trainer().train(job, emit=emit, should_stop=should_stop)
    if main_rank:
        done: dict[str, Any] = {
            "reason": result.reason,
            "step": result.step,
            "adapter_path": str(result.adapter_path) if result.adapter_path else None,
        }
        if with_metrics:
            done["metrics"] = result.metrics
        (job.run_dir / "result.json").write_text(json.dumps(done), encoding="utf-8")
    return 0
