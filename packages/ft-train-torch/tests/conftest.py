"""The tests' jobs come from ft-testing's plugin: `make_job` (tiny jobs on real Alpaca rows,
`ft_testing.training.TINY_SETTINGS`) and `prepared_alpaca`."""

from __future__ import annotations

import os

# One thread: CPU results then depend on nothing but the inputs, and the 2 cores stay shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")
