"""The server SIGKILLed with one job running and two queued, then started again: nothing lost,
nothing run twice. A real `ft-server` process (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ft_runs.store import JobStore

ROWS = [
    {"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i)))}
    for i in range(1, 17)
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FT_HOME": str(home)}
    env.pop("FT_SERVER_API_KEY", None)
    env.pop("FT_API_KEY", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ft_server.main",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not start")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_sigkill_loses_no_job_and_runs_none_twice(tmp_path, tiny_llama):
    home = tmp_path / "home"
    data = tmp_path / "count.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    roots = ("--allow-root", str(tiny_llama.parent), "--allow-root", str(tmp_path))
    body = {
        "config": {
            "model": {"name": str(tiny_llama)},
            "data": {"train": str(data), "max_seq_length": 64, "validation_split": 0},
            "training": {"backend": "torch", "max_steps": 400, "batch_size": 2, "save_every": 1000},
        }
    }
    server, url = start_server(home, *roots)
    try:
        ids = [httpx.post(f"{url}/api/training/start", json=body).json()["id"] for _ in range(3)]
        first = ids[0]
        deadline = time.monotonic() + 240
        while True:
            job = httpx.get(f"{url}/api/training/{first}/status").json()
            if job["run"] is not None and job["run"]["step"] >= 1:
                break
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        statuses = [httpx.get(f"{url}/api/jobs/{i}").json()["status"] for i in ids]
        assert statuses == ["running", "queued", "queued"]
        worker = JobStore(home / "ft.db").get_job(first).pid
        server.send_signal(signal.SIGKILL)
        server.wait()
    finally:
        if server.poll() is None:
            server.kill()
    # The worker sees its server gone and stops as Ctrl-C would: a checkpoint, then exit.
    deadline = time.monotonic() + 120
    while not gone(worker):
        assert time.monotonic() < deadline, "the worker outlived its server"
        time.sleep(0.2)

    # Started again with the queue paused (0 at once), to see the queue as the kill left it.
    server, url = start_server(
        home, *roots, "--max-concurrent-trainings", "0", "--heartbeat-seconds", "0.2"
    )
    try:
        jobs = {j["id"]: j for j in httpx.get(f"{url}/api/jobs").json()["jobs"]}
        assert [jobs[i]["status"] for i in ids] == ["interrupted", "queued", "queued"]
        assert [jobs[i]["queue_position"] for i in ids] == [None, 1, 2]
        assert jobs[ids[1]]["started_at"] is None and jobs[ids[2]]["started_at"] is None
        run = jobs[first]["run"]
        assert run["status"] == "interrupted"
        assert len(run["checkpoints"]) == 1  # the stop checkpoint: resumable
        runs = [p for p in (home / "runs").iterdir() if p.is_dir()]
        assert [p.name for p in runs] == [run["id"]]  # one run folder: nothing ran twice
        # Resumed, it goes back to the queue in its old place (the queue is oldest first).
        assert httpx.post(f"{url}/api/jobs/{first}/resume").json()["queue_position"] == 1
        # A queued job's stream sends heartbeats while it waits.
        with httpx.stream("GET", f"{url}/api/metrics/{ids[1]}/stream", timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines) == "retry: 2000"
            assert next(lines) == ""
            assert next(lines) == ": heartbeat"
        # Cancelling a queued job is immediate.
        assert httpx.post(f"{url}/api/jobs/{ids[2]}/cancel").json()["status"] == "cancelled"
    finally:
        server.terminate()
        server.wait(timeout=60)
