"""`ft dataset augment` as a user runs it: a preview that writes nothing, and a run killed with
SIGKILL in a real child process that resumes without repeating a row."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import RunFt

ROWS = [
    {
        "instruction": f"Describe place number {i} in two sentences.",
        "input": "",
        "output": f"Place {i} is a quiet town by a lake.",
    }
    for i in range(3)
]


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def unit(line: str) -> tuple[int, str, int]:
    tag = json.loads(line)["augment"]
    return (tag["origin"]["row"], tag["method"], tag["variant"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return path


def test_preview_shows_rows_and_writes_nothing(
    data: Path, tmp_path: Path, run_ft: RunFt, tiny_llama: Path
) -> None:
    code, out = run_ft(
        "dataset", "augment", str(data), "--model", str(tiny_llama), "--preview", "2",
        "--max-tokens", "3", "--method", "qa", "--keep-cut", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, out
    assert "--- qa #0 of row 1 (" in out and "--- qa #0 of row 2 (" in out
    assert (
        "preview: " in out
        and "the whole run makes 3 rows before filtering (nothing written)" in out
    )
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["train.jsonl"]  # nothing written


@pytest.mark.slow
def test_a_killed_run_resumes_without_repeating_rows(
    data: Path, tmp_path: Path, run_ft: RunFt, tiny_llama: Path
) -> None:
    output = tmp_path / "aug.jsonl"
    rejected = tmp_path / "aug.rejected.jsonl"
    args = [
        "dataset", "augment", str(data), "-o", str(output), "--model", str(tiny_llama),
        "-n", "4", "--batch-size", "1", "--max-tokens", "3", "--backend", "torch",
    ]  # fmt: skip
    ft = Path(sys.executable).parent / "ft"
    child = subprocess.Popen(
        [str(ft), *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600  # a guard against a hang, not a speed check
    try:
        while len(read_lines(output) + read_lines(rejected)) < 3:
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL  # killed mid-run, not finished
    before = {path: read_lines(path) for path in (output, rejected)}
    done = len(before[output]) + len(before[rejected])
    assert 3 <= done < 12

    code, out = run_ft(*args, cwd=tmp_path)
    assert code == 0, out
    assert f"({done} done before: resumed)" in out
    after: dict[Path, Any] = {path: read_lines(path) for path in (output, rejected)}
    for path in (output, rejected):
        assert after[path][: len(before[path])] == before[path]  # kept as they were
    units = [unit(line) for line in after[output] + after[rejected]]
    assert sorted(units) == [(row, "paraphrase", v) for row in (1, 2, 3) for v in range(4)]
