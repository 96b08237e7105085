"""Run a job described by a JSON file in this process: what torchrun starts on each process.

    python -m torch.distributed.run --nproc-per-node 2 -m ft_train_torch.launch job.json

`job.json` holds `config` (the train.yml settings as a mapping), `model_path`, `train_data`,
`validation_data`, `run_dir`, and optionally `resume_from` (a checkpoint folder, or `"latest"`
for the newest valid checkpoint of the run, if any) and `events` (a JSONL file rank 0 appends
every event to). The result is written to `<run_dir>/result.json` by rank 0.
"""

from __future__ import annotations

import sys

from ft_train_core.jobs import load_job as load_job  # where callers of this module find it
from ft_train_core.jobs import run_job_file


def main(argv: list[str] | None = None) -> int:
    from ft_train_torch.distributed import world_from_env
    from ft_train_torch.trainer import TorchTrainer

    return run_job_file(
        sys.argv[1:] if argv is None else argv,
        module="ft_train_torch.launch",
        trainer=TorchTrainer,
        is_main=lambda: world_from_env().is_main,
    )


if __name__ == "__main__":
    sys.exit(main())
