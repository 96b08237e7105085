"""The metrics stream while a job runs: a step is sent once complete (its eval included), a
reconnect with Last-Event-ID gets exactly what it missed. Driven through the store, no training."""

from __future__ import annotations

import asyncio
import json

from ft_runs.store import JobStore
from ft_server.jobs_api import _events


class _Jobs:
    def __init__(self, store: JobStore) -> None:
        self.store = store


class _Request:
    async def is_disconnected(self) -> bool:
        return False


def _take(loop, stream, count: int) -> list[str]:
    async def take() -> list[str]:
        out = []
        while len(out) < count:
            chunk = await asyncio.wait_for(anext(stream), 10)
            if chunk.startswith(("id:", "event: end")):
                out.append(chunk)
        return out

    return loop.run_until_complete(take())


def _step(chunk: str) -> tuple[int, dict]:
    lines = dict(line.split(": ", 1) for line in chunk.strip().splitlines())
    return int(lines["id"]), json.loads(lines["data"])


def test_steps_are_sent_complete_and_resumed_exactly(tmp_path):
    store = JobStore(tmp_path / "ft.db")
    store.create_run("r", run_dir=tmp_path / "r", config={}, model="m", method="lora")
    store.update_run("r", total_steps=3)
    store.create_job("j", "train", {})
    store.claim_job("j")
    store.update_job("j", run_id="r")
    store.add_metrics("r", "train", 1, {"loss": 2.0})
    store.add_metrics("r", "train", 2, {"loss": 1.5})
    loop = asyncio.new_event_loop()
    stream = _events(_Jobs(store), "j", -1, _Request(), heartbeat=60)
    [first] = _take(loop, stream, 1)
    assert _step(first) == (1, {"step": 1, "train": {"loss": 2.0}})  # no pace yet: no ETA
    # Step 2 waits for its evaluation, which comes before step 3 starts.
    store.add_metrics("r", "eval", 2, {"eval_loss": 1.7})
    store.add_metrics("r", "train", 3, {"loss": 1.2})
    [second] = _take(loop, stream, 1)
    step, point = _step(second)
    eta = point["train"].pop("eta_s")  # 1 step left at the pace of step 1 -> 2
    assert (step, point) == (2, {"step": 2, "train": {"loss": 1.5}, "eval": {"eval_loss": 1.7}})
    assert 0 <= eta < 10
    store.update_job("j", status="completed")
    third, end = _take(loop, stream, 2)
    assert _step(third)[0] == 3
    assert json.loads(end.split("data: ", 1)[1])["status"] == "completed"
    # A client that saw step 1 reconnects (Last-Event-ID: 1): steps 2 and 3, then the end.
    again = _events(_Jobs(store), "j", 1, _Request(), heartbeat=60)
    assert [c.split("\n")[0] for c in _take(loop, again, 3)] == ["id: 2", "id: 3", "event: end"]
    loop.close()


def test_a_job_log_is_read_from_its_folder(make_client):
    client = make_client(max_concurrent_trainings=0)  # the queue paused: nothing runs
    jobs = client.app.state.jobs
    jobs.store.create_job("job-1", "train", {})
    folder = jobs.job_dir("job-1")
    folder.mkdir(parents=True)
    (folder / "job.log").write_text("backend: torch\nrun r: /x\njob job-1: completed\n")
    r = client.get("/api/jobs/job-1/log", params={"tail": 2})
    assert r.json() == {"job_id": "job-1", "lines": ["run r: /x", "job job-1: completed"]}
    assert client.get("/api/jobs/job-2/log").status_code == 404


def test_samples_reach_the_metrics_api_and_stream(make_client):
    """A trainer's `samples` event, stored by the run's sink, comes back with its step: from
    the job's and the run's metrics, and in the stream's point for that step."""
    from ft_runs.sinks import StoreSink

    client = make_client(max_concurrent_trainings=0)  # the queue paused: nothing runs
    store = client.app.state.jobs.store
    store.create_run("r", run_dir=client.app.state.settings.runs_dir / "r", config={}, model="m", method="lora")  # fmt: skip
    store.create_job("j", "train", {})
    store.claim_job("j")
    store.update_job("j", run_id="r")
    sample = {
        "prompt": "<|im_start|>user\nName a colour<|im_end|>\n<|im_start|>assistant\n",
        "output": "<b>Blue</b> & green",
        "reference": "Red",
        "output_tokens": 6,
    }
    sink = StoreSink(store, "r")
    sink({"type": "step", "step": 1, "loss": 2.0, "learning_rate": 1e-3})
    sink({"type": "eval", "step": 1, "eval_loss": 1.5, "perplexity": 4.5, "is_best": True})
    sink({"type": "samples", "step": 1, "samples": [sample]})
    sink({"type": "step", "step": 2, "loss": 1.8, "learning_rate": 1e-3})
    expected = {
        "step": 1,
        "train": {"loss": 2.0, "learning_rate": 1e-3},
        "eval": {"eval_loss": 1.5, "perplexity": 4.5},
        "samples": [sample],
    }
    points = client.get("/api/metrics/j").json()["points"]
    assert points[0] == expected and "samples" not in points[1]
    assert client.get("/api/runs/r/metrics").json()["points"][0] == expected
    store.update_job("j", status="completed")
    loop = asyncio.new_event_loop()
    first, _second, _end = _take(loop, _events(_Jobs(store), "j", -1, _Request(), heartbeat=60), 3)
    assert _step(first) == (1, expected)
    loop.close()
