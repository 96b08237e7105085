"""Run a job described by a JSON file in this process: what `mlx.launch` starts on each process.

    mlx.launch --backend ring -n 2 -- python -m ft_train_mlx.launch job.json

`launch_argv(job.json, nproc, hostfile)` returns that command line. `job.json` holds `config`
(the train.yml settings as a mapping), `model_path`, `train_data`, `validation_data`,
`run_dir`, and optionally `resume_from` (a checkpoint folder, or `"latest"` for the newest
valid checkpoint of the run, if any) and `events` (a JSONL file rank 0 appends every event to).
The result is written to `<run_dir>/result.json` by rank 0. The format is ft_train_torch.launch's.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ft_config.structure import structure_config
from ft_models.checkpoint import latest_valid_checkpoint


def launch_argv(
    job_json: Path, nproc: int, hostfile: Path | None = None, *, python: str | None = None
) -> list[str]:
    """The `mlx.launch` command that runs `job_json` on `nproc` local processes (ring backend
    over 127.0.0.1), or on the hosts of an `mlx.launch` hostfile (several Macs; then the
    hostfile says how many processes run where, and `nproc` is not used)."""
    python = python or sys.executable
    launcher = Path(python).parent / "mlx.launch"
    argv = [str(launcher)] if launcher.is_file() else [shutil.which("mlx.launch") or "mlx.launch"]
    argv += ["--backend", "ring"]
    if hostfile is not None:
        argv += ["--hostfile", str(hostfile)]
    else:
        if nproc < 1:
            raise ValueError(f"nproc must be at least 1, got {nproc}")
        argv += ["--hosts", "127.0.0.1", "-n", str(nproc)]
    return [*argv, "--", python, "-m", "ft_train_mlx.launch", str(job_json)]


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
    from ft_train_mlx.distributed import world_from_env
    from ft_train_mlx.trainer import MLXTrainer

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ft_train_mlx.launch JOB.json", file=sys.stderr)
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

    result = MLXTrainer().train(job, emit=emit, should_stop=lambda: False)
    if main_rank:
        (job.run_dir / "result.json").write_text(
            json.dumps(
                {
                    "reason": result.reason,
                    "step": result.step,
                    "adapter_path": str(result.adapter_path) if result.adapter_path else None,
                    "metrics": result.metrics,
                }
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
