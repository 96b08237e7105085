"""Crashing a trainer on purpose: start `python -m <launch module> job.json` (the job-file path
that torchrun and mlx.launch take), SIGKILL it at chosen moments, start it again (it resumes
from the newest valid checkpoint), and read what every attempt reported.

The processes fork from a `Launcher`: a Python process that has imported the backend once
(torch or mlx and transformers take 10 to 25 seconds to import on a small machine) and has
run nothing, so forking it is safe and a child starts training at once. It is a small
forkserver of our own rather than multiprocessing's, whose single server keeps the imports of
whichever suite started it first.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ft_train_core.jobs import job_spec
from ft_train_core.protocol import TrainJob

# The forking process: imports the modules it is given, then answers one JSON request a line:
# {"start": [module, job_file, log]} -> {"pid": N}; {"poll": N} and {"wait": N} -> {"exit": code
# or null}. A child runs the module as `python -m module job_file` does, its output in `log`.
_SERVER = r"""
import importlib, json, os, runpy, sys, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if "start" in request:
        module, job_file, log = request["start"]
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(out, 1)
                os.dup2(out, 2)
                sys.stdin.close()
                sys.argv = [module, job_file]
                try:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        reply = {"pid": pid}
    else:
        pid = request.get("poll") or request["wait"]
        done, status = os.waitpid(pid, os.WNOHANG if "poll" in request else 0)
        reply = {"exit": os.waitstatus_to_exitcode(status) if done else None}
    print(json.dumps(reply), flush=True)
"""


class Launcher:
    """Starts `python -m <module> job.json` processes forked from one that imported `preload`.
    It imports in the background: the first `start` waits for it."""

    def __init__(self, preload: tuple[str, ...]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self._server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._ready = False

    def _ask(self, request: dict[str, Any] | None) -> dict[str, Any]:
        assert self._server.stdin is not None and self._server.stdout is not None
        if request is not None:
            self._server.stdin.write(json.dumps(request) + "\n")
            self._server.stdin.flush()
        line = self._server.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher ended (exit code {self._server.wait()})")
        return json.loads(line)

    def start(self, module: str, job_file: Path, log: Path) -> int:
        """The pid of a new `python -m module job_file`, writing its output to `log`."""
        if not self._ready:
            assert self._ask(None) == {"ready": True}, "the launcher did not start"
            self._ready = True
        return int(self._ask({"start": [module, str(job_file), str(log)]})["pid"])

    def exit_code(self, pid: int, *, wait: bool) -> int | None:
        """The child's exit code (negative: the signal that ended it); None while it runs."""
        return self._ask({"wait" if wait else "poll": pid})["exit"]

    def close(self) -> None:
        if self._server.poll() is None:
            assert self._server.stdin is not None
            self._server.stdin.close()
            self._server.wait(30)


@contextmanager
def launcher(preload: tuple[str, ...]) -> Iterator[Launcher]:
    server = Launcher(preload)
    try:
        yield server
    finally:
        server.close()


def write_job_file(job: TrainJob, folder: Path) -> Path:
    """`folder/job.json` for `job` (`ft_train_core.jobs.job_spec`), resuming from the newest
    valid checkpoint of the run whenever it starts, and appending events to
    `folder/events.jsonl`."""
    spec = job_spec(job, events=folder / "events.jsonl")
    spec["resume_from"] = "latest"
    path = folder / "job.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def read_events(folder: Path) -> list[dict[str, Any]]:
    """Every event the attempts of `folder/job.json` appended, in order."""
    path = folder / "events.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines]


def _starts(folder: Path) -> int:
    return sum(e["type"] == "start" for e in read_events(folder))


def kill_and_resume(
    server: Launcher,
    module: str,
    job: TrainJob,
    folder: Path,
    *,
    kills: int,
    seed: int,
    step_seconds: float,
) -> tuple[list[dict[str, Any]], bool]:
    """Run `job` through its job file and SIGKILL it `kills` times: first while a checkpoint
    is being written (a `.tmp-*` folder next to a complete one), then at random moments up to
    three steps (`step_seconds` each) after the attempt started training; then let it finish.
    Returns the events of every attempt and whether the first kill left a half-written
    checkpoint behind. Asserts that the last attempt exits with 0."""
    job_file = write_job_file(job, folder)
    rng = random.Random(seed)
    checkpoints = job.checkpoints_dir
    mid_write = False
    for attempt in range(kills + 1):
        log = folder / f"attempt-{attempt}.log"
        before = _starts(folder)
        pid = server.start(module, job_file, log)
        if attempt == kills:
            code = server.exit_code(pid, wait=True)
            assert code == 0, f"the last attempt exited with {code}:\n{log.read_text()[-4000:]}"
            break
        deadline = time.monotonic() + 120
        if attempt == 0:
            while time.monotonic() < deadline and server.exit_code(pid, wait=False) is None:
                names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
                if any(n.startswith("step-") for n in names) and any(
                    n.startswith(".tmp-") for n in names
                ):
                    break
                time.sleep(0.0005)
        else:
            while (
                time.monotonic() < deadline
                and server.exit_code(pid, wait=False) is None
                and _starts(folder) == before
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 3.0) * step_seconds)
        os.kill(pid, signal.SIGKILL)
        code = server.exit_code(pid, wait=True)
        assert code in (-signal.SIGKILL, 0), f"attempt {attempt} exited with {code}"
        if attempt == 0:
            mid_write = any(p.name.startswith(".tmp-") for p in checkpoints.iterdir())
    return read_events(folder), mid_write
