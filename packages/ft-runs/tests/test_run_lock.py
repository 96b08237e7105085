"""One writer per run: the run folder's lock, held by the process that trains, freed by the
kernel when that process dies (even by SIGKILL), kept by the trainer processes it launched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ft_runs.run_lock import RunLock, RunLocked, holder

HOLDER = """
import sys, time
from ft_runs.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_and_a_killed_one_frees_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "my-run"
    folder.mkdir(parents=True)
    trainer = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout is not None and trainer.stdout.readline() == "locked\n"
        with pytest.raises(RunLocked) as refused:
            RunLock(folder, wait_s=0.2).acquire()
        assert str(refused.value).startswith(
            f"my-run is being trained by process {trainer.pid} on {socket.gethostname()}: "
        )
        assert "ft train --resume my-run" in str(refused.value)
        assert holder(folder) == refused.value.holder
        assert refused.value.holder["pid"] == trainer.pid
    finally:
        trainer.send_signal(signal.SIGKILL)  # no cleanup code runs in the trainer
        trainer.wait()
    assert holder(folder) is None
    with RunLock(folder, wait_s=0) as lock:
        info = holder(folder)
        assert info is not None
        assert (info["pid"], info["host"], info["launched"]) == (
            os.getpid(),
            socket.gethostname(),
            [],
        )
        assert lock.path == folder / "run.lock"
    assert holder(folder) is None
    assert (folder / "run.lock").exists()  # kept: deleting it would let two writers in


LAUNCHER = """
import sys
from pathlib import Path
from ft_config import load_config
from ft_runs import launching
from ft_runs.run_lock import RunLock
from ft_train_core.protocol import Launch, TrainJob

SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)"


class Sleeper:  # a trainer whose launched processes train for ten minutes
    def launch_command(self, job_file, launch):
        return [sys.executable, "-c", SLEEPER, sys.argv[2]]


launching.get_trainer = lambda backend: Sleeper()
folder = Path(sys.argv[1])
lock = RunLock(folder).acquire()
job = TrainJob(
    config=load_config(None), model_path=folder, train_data=folder / "train.h5",
    validation_data=None, run_dir=folder, resume_from=None, plan=None,
)
launching.run_distributed("fake", job, Launch(nproc=2), print, lambda: False, print, lock=lock)
"""


def test_launched_trainer_processes_keep_the_run_locked_after_ft_train_is_killed(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run-2"
    folder.mkdir()
    pid_file = tmp_path / "sleeper.pid"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(folder), str(pid_file)])
    sleeper = None
    try:
        for _ in range(600):  # the launched process writes its pid once it runs
            if pid_file.exists() and pid_file.read_text():
                break
            assert launcher.poll() is None, "the launcher exited early"
            time.sleep(0.1)
        sleeper = int(pid_file.read_text())
        launcher.send_signal(signal.SIGKILL)  # `ft train` dies; its trainer process lives on
        launcher.wait()
        with pytest.raises(RunLocked) as refused:
            RunLock(folder, wait_s=0.2).acquire()
        # The message names the process that still trains, not the dead `ft train`.
        assert str(refused.value).startswith(f"run-2 is being trained by process {sleeper} on ")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if sleeper is not None:
            os.killpg(sleeper, signal.SIGKILL)  # it runs in its own session, as torchrun does
    for _ in range(100):  # the kernel releases the lock once the last holder is gone
        if holder(folder) is None:
            break
        time.sleep(0.05)
    assert holder(folder) is None
    RunLock(folder, wait_s=0).acquire().release()


def test_evaluate_reads_while_pruning_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_config import load_config
    from ft_models.checkpoint import list_checkpoints, prune_checkpoints
    from ft_runs import evaluate
    from ft_runs.run_folder import RunFolder

    run = RunFolder(tmp_path / "run").create(load_config(None), {"model": {"path": "/m"}})
    for step in (1, 2, 3):
        (run.checkpoints / f"step-{step:08d}").mkdir()
    pruned = []

    def pick_while_the_trainer_prunes(folder: RunFolder, which: str | None) -> tuple[str, Path]:
        pruned.append(prune_checkpoints(folder.checkpoints, keep_last=1))
        raise ValueError("stopped by the test")

    monkeypatch.setattr(evaluate, "checkpoint_of", pick_while_the_trainer_prunes)
    with pytest.raises(ValueError, match="stopped by the test"):
        evaluate.evaluate_run(run, checkpoint="1")
    assert pruned == [[]]
    assert [s for s, _ in list_checkpoints(run.checkpoints)] == [1, 2, 3]
    assert len(prune_checkpoints(run.checkpoints, keep_last=1)) == 2  # released when it ended
