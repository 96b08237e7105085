"""MLX on this machine's CPU is slow: every test job (and the conformance suite's) cuts its rows
at 64 tokens."""

from __future__ import annotations

import os

import pytest

# One thread: CPU results then depend on nothing but the inputs, and the 2 cores stay shared.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def job_settings() -> dict[str, object]:
    return {"data__max_seq_length": 64}
