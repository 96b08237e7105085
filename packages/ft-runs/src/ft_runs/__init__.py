"""ft-runs: runs, the job store, and the protocols trainers and exporters implement."""

from ft_runs.run_folder import RunFolder, RunNotFoundError, find_run

__all__ = ["RunFolder", "RunNotFoundError", "find_run"]
