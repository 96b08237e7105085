"""Training jobs over HTTP: a real child process trains the tiny Llama for 2 steps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROWS = [
    {"instruction": f"Say the number {i}.", "input": "", "output": f"The number is {i}."}
    for i in range(16)
]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "numbers.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def train_body(model: Path, data: Path, **training) -> dict:
    return {
        "config": {
            "model": {"name": str(model)},
            "data": {"train": str(data), "max_seq_length": 64, "validation_split": 0.25},
            "training": {
                "backend": "torch",
                "max_steps": 2,
                "batch_size": 2,
                "eval_every": 1,
                "save_every": 1,
                **training,
            },
        }
    }


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/training/{job_id}/status").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")


def test_a_training_job_runs_to_completion_as_an_ordinary_run(
    make_client, tiny_llama, data_file, tmp_path
):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    r = client.post("/api/training/start", json=train_body(tiny_llama, data_file))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running")
    done = wait_for(client, job["id"], ("completed", "failed", "interrupted"))
    log = (client.app.state.jobs.job_dir(job["id"]) / "job.log").read_text()
    assert done["status"] == "completed", log
    run = done["run"]
    assert run["status"] == "completed"
    assert run["step"] == 2
    assert run["checkpoints"] == [1, 2]
    assert Path(run["run_dir"]).parent == client.app.state.settings.runs_dir
    assert (Path(run["run_dir"]) / "config.yml").is_file()
    metrics = client.get(f"/api/metrics/{job['id']}").json()
    assert [p["step"] for p in metrics["points"]] == [1, 2]
    assert {"train", "eval"} <= set(metrics["points"][0])
    assert metrics["points"][0]["train"]["loss"] > 0
    since = client.get(f"/api/metrics/{job['id']}", params={"since": 1}).json()
    assert [p["step"] for p in since["points"]] == [2]
    # The same points as Server-Sent Events, id = step; a reconnect gets only what it missed.
    assert sse_ids(client, job["id"]) == (["1", "2"], "completed")
    assert sse_ids(client, job["id"], last_event_id="1") == (["2"], "completed")
    assert sse_ids(client, job["id"], last_event_id="2") == ([], "completed")


def sse_ids(client, job_id: str, last_event_id: str | None = None) -> tuple[list[str], str]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    ids, end = [], None
    with client.stream("GET", f"/api/metrics/{job_id}/stream", headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = {}
        for line in r.iter_lines():
            if line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and event:
                if event.get("event") == "metrics":
                    assert event["data"]["step"] == int(event["id"])
                    ids.append(event["id"])
                elif event.get("event") == "end":
                    end = event["data"]["status"]
                event = {}
    return ids, end
