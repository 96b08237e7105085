"""ft-runs: runs, the job store, and the protocols trainers and exporters implement."""
