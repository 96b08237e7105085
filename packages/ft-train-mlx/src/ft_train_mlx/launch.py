"""Run a job described by a JSON file in this process: what `mlx.launch` starts on each process.

    mlx.launch --backend ring -n 2 -- python -m ft_train_mlx.launch job.json

`launch_argv(job.json, nproc, hostfile)` returns that command line. `job.json` holds `config`
(the train.yml settings as a mapping), `model_path`, `train_data`, `validation_data`,
`run_dir`, and optionally `resume_from` (a checkpoint folder, or `"latest"` for the newest
valid checkpoint of the run, if any) and `events` (a JSONL file rank 0 appends every event to).
The result is written to `<run_dir>/result.json` by rank 0. The format is ft_train_torch.launch's.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ft_train_core.jobs import load_job as load_job  # where callers of this module find it
from ft_train_core.jobs import run_job_file


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


def main(argv: list[str] | None = None) -> int:
    from ft_train_mlx.distributed import world_from_env
    from ft_train_mlx.trainer import MLXTrainer

    return run_job_file(
        sys.argv[1:] if argv is None else argv,
        module="ft_train_mlx.launch",
        trainer=MLXTrainer,
        is_main=lambda: world_from_env().is_main,
        with_metrics=True,
    )


if __name__ == "__main__":
    sys.exit(main())
