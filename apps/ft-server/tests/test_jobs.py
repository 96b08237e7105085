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


@pytest.mark.slow
def test_a_training_job_cancelled_with_a_checkpoint_resumes_to_completion(
    make_client, tiny_llama, data_file, tmp_path
):
    client = make_client(allowed_roots=(tiny_llama.parent, tmp_path))
    body = train_body(tiny_llama, data_file, max_steps=40, eval_every=10, save_every=1000)
    r = client.post("/api/training/start", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running")
    log = client.app.state.jobs.job_dir(job["id"]) / "job.log"
    # Cancel once it trains: a checkpoint is saved, then it stops.
    deadline = time.monotonic() + 240
    while client.get(f"/api/metrics/{job['id']}").json()["points"] == []:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    stopped = wait_for(client, job["id"], ("completed", "failed", "cancelled", "interrupted"))
    assert stopped["status"] == "cancelled", log.read_text()
    assert stopped["run"]["status"] == "interrupted"
    [checkpoint] = stopped["run"]["checkpoints"]
    assert 1 <= checkpoint < 40
    # Resume: the same job, the same run folder, from that checkpoint.
    assert client.post(f"/api/jobs/{job['id']}/resume").json()["status"] == "queued"
    done = wait_for(client, job["id"], ("completed", "failed", "cancelled", "interrupted"))
    assert done["status"] == "completed", log.read_text()
    run = done["run"]
    assert run["id"] == stopped["run"]["id"]
    assert (run["status"], run["step"]) == ("completed", 40)
    assert Path(run["run_dir"]).parent == client.app.state.settings.runs_dir
    assert (Path(run["run_dir"]) / "config.yml").is_file()
    assert f"from step {checkpoint} (" in log.read_text()
    assert client.post(f"/api/jobs/{job['id']}/resume").status_code == 409
    metrics = client.get(f"/api/metrics/{job['id']}").json()
    assert [p["step"] for p in metrics["points"]] == list(range(1, 41))
    assert metrics["points"][9]["eval"]["eval_loss"] > 0
    assert metrics["points"][0]["train"]["loss"] > 0
    since = client.get(f"/api/metrics/{job['id']}", params={"since": 38}).json()
    assert [p["step"] for p in since["points"]] == [39, 40]
    # The same points as Server-Sent Events, id = step; a reconnect gets only what it missed.
    all_ids = [str(step) for step in range(1, 41)]
    assert sse_ids(client, job["id"]) == (all_ids, "completed")
    assert sse_ids(client, job["id"], last_event_id="17") == (all_ids[17:], "completed")
    assert sse_ids(client, job["id"], last_event_id="40") == ([], "completed")

    # Export and evaluate the run as jobs.
    r = client.post(f"/api/runs/{run['id']}/export", json={"format": "peft"})
    assert r.status_code == 202, r.text
    exported = wait_for(client, r.json()["id"], ("completed", "failed", "interrupted"))
    assert exported["status"] == "completed", exported
    assert Path(exported["result"]["path"]).parent == Path(run["run_dir"]) / "exports"
    assert (Path(exported["result"]["path"]) / "adapter_model.safetensors").is_file()
    body = {"max_examples": 2, "max_tokens": 4, "samples": 1, "compare_base": False}
    r = client.post(f"/api/runs/{run['id']}/evaluate", json=body)
    evaluated = wait_for(client, r.json()["id"], ("completed", "failed", "interrupted"))
    assert evaluated["status"] == "completed", evaluated
    [evaluation] = client.get(f"/api/runs/{run['id']}/evaluations").json()["evaluations"]
    assert evaluation["metrics"]["eval_loss"] > 0
    assert evaluated["result"]["metrics"] == evaluation["metrics"]
    r = client.post("/api/runs/nope/export", json={"format": "peft"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "run_not_found")


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
