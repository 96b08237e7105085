"""Run a job described by a JSON file in this process: what torchrun starts on each process.

    python -m torch.distributed.run --nproc-per-node 2 -m ft_train_torch.launch job.json

`job.json` holds `config` (the train.yml settings as a mapping), `model_path`, `train_data`,
`validation_data`, `run_dir`, and optionally `resume_from` (a checkpoint folder, or `"latest"`
for the newest valid checkpoint of the run, if any) and `events` (a JSONL file rank 0 appends
every event to). The result is written to `<run_dir>/result.json` by rank 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ft_config.structure import structure_config
from ft_models.checkpoint import latest_valid_checkpoint


def load_job(path: Path) -> Any:
    """The TrainJob a job file describes."""
    from ft_runs.protocols import TrainJob

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
    )


def main(argv: list[str] | None = None) -> int:
    from ft_train_torch.distributed import world_from_env
    from ft_train_torch.trainer import TorchTrainer

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ft_train_torch.launch JOB.json", file=sys.stderr)
        return 2
    job_file = Path(args[0])
    job = load_job(job_file)
    spec = json.loads(job_file.read_text(encoding="utf-8"))
    events = Path(spec["events"]) if spec.get("events") else None
    main_rank = world_from_env().is_main

    def emit(event: dict[str, Any]) -> None:
        if events is not None and main_rank:
            with events.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")

    result = TorchTrainer().train(job, emit=emit, should_stop=lambda: False)
    if main_rank:
        (job.run_dir / "result.json").write_text(
            json.dumps(
                {
                    "reason": result.reason,
                    "step": result.step,
                    "adapter_path": str(result.adapter_path) if result.adapter_path else None,
                }
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
