"""Studies over HTTP: POST /api/tune/start runs `ft tune` in a job's worker process (the tiny
Llama, 2 trials of 2 steps); status and trials read the study as it runs and when it is done."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROWS = [
    {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
    for i in range(16)
]


def study_body(model: Path, data: Path, space: dict) -> dict:
    return {
        "config": {
            "model": {"name": str(model)},
            "data": {"train": str(data), "max_seq_length": 64, "validation_split": 0.25},
            "training": {"backend": "torch", "max_steps": 2, "batch_size": 2, "eval_every": 1},
            "logging": {"tensorboard": False},
            "tune": {"search_space": space},
        },
        "trials": 2,
        "sampler": "random",
        "name": "numbers",
    }


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "numbers.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.mark.slow
def test_a_study_started_over_http_runs_its_trials_as_runs(
    make_client, tiny_llama, data_file, tmp_path
):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    space = {"training.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}
    r = client.post("/api/tune/start", json=study_body(tiny_llama, data_file, space))
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["kind"], job["study"]["name"], job["study"]["trials"]) == ("tune", "numbers", 2)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = client.get(f"/api/tune/{job['id']}/status").json()
        if status["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    log = client.get(f"/api/jobs/{job['id']}/log").json()["lines"]
    assert status["status"] == "completed", log
    assert status["study"]["finished"] == 2
    assert status["study"]["best"]["state"] == "COMPLETE"
    trials = client.get(f"/api/tune/{job['id']}/trials").json()["trials"]
    assert [t["number"] for t in trials] == [0, 1]
    for trial in trials:
        assert 1e-4 <= trial["settings"]["training.learning_rate"] <= 1e-2
        run = client.get(f"/api/runs/{trial['run_id']}")
        assert run.status_code == 200, run.text


def test_a_search_space_ft_cannot_use_is_a_400(make_client, tiny_llama, data_file, tmp_path):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    space = {"method.alpha": {"same_as": "method.rank"}}
    r = client.post("/api/tune/start", json=study_body(tiny_llama, data_file, space))
    assert r.status_code == 400
    assert "tune.search_space.method.alpha.same_as: 'method.rank' is not a parameter" in r.text
    assert client.get("/api/tune/nope/status").status_code == 404
