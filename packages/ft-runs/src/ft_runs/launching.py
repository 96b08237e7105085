"""Stopping a run and running it in several processes: the Ctrl-C flag the trainer polls, and
the launch of the trainer's processes (torchrun, mlx.launch) whose events are relayed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ft_runs.run_lock import RunLock
from ft_runs.trainers import get_trainer
from ft_train_core.jobs import STOP_FILE, job_spec
from ft_train_core.protocol import Event, Launch, TrainJob, TrainResult

Say = Callable[[str], None]


class StoppedBeforeTraining(KeyboardInterrupt):
    """Ctrl-C or SIGTERM came before the training loop started (while the model loads, the data
    prepares or the processes start): there is nothing to save, so ft stops at once."""


class StopFlag:
    """Ctrl-C and SIGTERM, as `ft train` answers them.

    Before the training loop starts (model loading, data preparation: nothing to save yet) a
    signal stops the process at once, by raising `StoppedBeforeTraining` in the main thread.
    Once the loop has asked whether to stop (its first call of the flag, or `arm()`), the
    first signal sets the flag: the trainer saves a checkpoint and stops; a second one
    interrupts at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._armed = False

    def __call__(self) -> bool:
        """The training loop's question: should it stop? (Asking arms the flag.)"""
        self._armed = True
        return self._event.is_set()

    def requested(self) -> bool:
        """Whether a stop was asked for, without arming the flag."""
        return self._event.is_set()

    def arm(self) -> None:
        """The training loop runs (elsewhere: launched processes): signals now checkpoint."""
        self._armed = True

    def set(self) -> None:
        self._event.set()

    def install(self, say: Say) -> Callable[[], None]:
        """Handle SIGINT/SIGTERM until the returned function is called (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum: int, frame: FrameType | None) -> None:
            if not self._armed:
                self._event.set()
                raise StoppedBeforeTraining(
                    f"stopped ({signal.Signals(signum).name}) before training started: "
                    "nothing was trained"
                )
            if self._event.is_set():
                raise KeyboardInterrupt
            self._event.set()
            say("stopping: saving a checkpoint first (press Ctrl-C again to stop at once)")

        for sig in previous:
            signal.signal(sig, handle)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore


def run_distributed(
    backend: str,
    job: TrainJob,
    launch: Launch,
    emit: Callable[[Event], None],
    should_stop: Callable[[], bool],
    say: Say,
    *,
    lock: RunLock | None = None,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Start the trainer processes and relay rank 0's events until they exit.

    The processes inherit `lock` (the run folder's lock): the run stays locked while they
    live, even if this process is killed.

    A stop request (Ctrl-C) creates the job's stop file. Rank 0 sees it between two steps and
    every process learns rank 0's answer (the loops broadcast it), so they all stop at the same
    step, save a checkpoint together and exit: the run resumes from it with `ft train
    --resume`. A second Ctrl-C kills the processes at once. A stop requested before rank 0
    reports its `start` event (the processes still load the model: nothing to save) kills
    them at once and raises `StoppedBeforeTraining`. `on_start` is called on that event.
    """
    import subprocess
    import time

    events = job.run_dir / "launch-events.jsonl"
    events.unlink(missing_ok=True)
    (job.run_dir / "result.json").unlink(missing_ok=True)
    stop_file = job.run_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)
    job_file = job.run_dir / "job.json"
    from ft_config import atomic_write_text

    atomic_write_text(job_file, json.dumps(job_spec(job, events=events), indent=2) + "\n")
    argv = list(get_trainer(backend).launch_command(job_file, launch))
    say(f"launching {launch.nproc} process(es): {' '.join(argv[1:6])} ...")
    process = subprocess.Popen(
        argv,
        cwd=job.run_dir,
        start_new_session=True,
        pass_fds=(lock.fileno(),) if lock is not None else (),
    )
    if lock is not None:
        lock.launched([process.pid])
    offset = 0
    last: dict[str, Any] = {}

    def relay() -> None:
        nonlocal offset
        if not events.exists():
            return
        with events.open("r", encoding="utf-8") as f:
            f.seek(offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break  # a line still being written: read it next time
                offset += len(line.encode("utf-8"))
                event = json.loads(line)
                last[event.get("type", "")] = event
                if event.get("type") == "start" and on_start is not None:
                    on_start()
                emit(event)

    stopped = False
    try:
        while process.poll() is None:
            relay()
            if should_stop() and not stopped:
                if "start" not in last:
                    raise StoppedBeforeTraining(
                        "stopped while the trainer processes were starting: nothing was trained"
                    )
                stopped = True
                say(
                    "stopping after this step: the trainer processes save a checkpoint and exit "
                    "(Ctrl-C again kills them; `ft train --resume` continues from the last checkpoint)"
                )
                stop_file.touch()
            time.sleep(0.5)
    except BaseException:
        # A second Ctrl-C, or any failure here: the processes must not outlive `ft train`.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait()
        raise
    finally:
        stop_file.unlink(missing_ok=True)
    relay()
    result_file = job.run_dir / "result.json"
    if process.returncode != 0 or not result_file.exists():
        raise RuntimeError(
            f"the {backend} trainer processes failed (exit {process.returncode}); "
            f"their output is above, the job is {job_file}"
        )
    done = json.loads(result_file.read_text(encoding="utf-8"))
    best = last.get("end", {}).get("best_checkpoint")
    return TrainResult(
        done["reason"],
        int(done["step"]),
        Path(done["adapter_path"]) if done.get("adapter_path") else None,
        Path(best) if best else None,
    )
