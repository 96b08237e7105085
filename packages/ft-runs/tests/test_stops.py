"""Ctrl-C and SIGTERM, sent to a real `ft train` process: at once while the data prepares or the
model loads (nothing to save), with a checkpoint once the training loop runs (that path, with
real trainers, is apps/ft-cli/tests/test_train_cmd.py's stop test; here the flag itself)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ft_runs.launching import StopFlag, StoppedBeforeTraining
from ft_runs.store import JobStore

# The child is `ft_runs.training.train` on a real train.yml, tiny model and data; only the slow
# steps are stand-ins that never end on their own (a model or a data set that takes hours).
CHILD = r"""
import sys, time
from pathlib import Path
import ft_runs.training as training

config, marker, phase = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def forever(what):
    marker.write_text(what)
    while True:
        time.sleep(0.02)

class Trainer:
    def train(self, job, emit, should_stop):
        if phase == "model":
            forever("loading the model")
        raise AssertionError("the model never finishes loading")

if phase == "data":
    training.prepare = lambda *args, **kwargs: forever("preparing the data")
training.get_trainer = lambda backend: Trainer()
outcome = training.train(config, say=lambda text: print(text, flush=True))
print("outcome:", outcome.status, outcome.result.reason, flush=True)
"""


@pytest.fixture
def project(tmp_path: Path, tiny_llama: Path) -> Path:
    rows = "".join(
        f'{{"instruction": "Say {word}.", "output": "{word}"}}\n'
        for word in ("one", "two", "three", "four", "five", "six", "seven", "eight")
    )
    (tmp_path / "data.jsonl").write_text(rows, encoding="utf-8")
    (tmp_path / "train.yml").write_text(
        f"model: {tiny_llama}\n"
        "data:\n  train: data.jsonl\n  max_seq_length: 32\n  validation_split: 0\n"
        "training:\n  backend: torch\n  max_steps: 4\n",
        encoding="utf-8",
    )
    return tmp_path


def start(project: Path, phase: str) -> tuple[subprocess.Popen[str], Path]:
    marker = project / "reached"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(project / "train.yml"), str(marker), phase],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for _ in range(6000):  # until the child reaches the phase (imports take a while)
        if marker.exists() or child.poll() is not None:
            break
        threading.Event().wait(0.05)
    assert marker.exists(), child.communicate()[0]
    return child, marker


@pytest.mark.parametrize(
    ("phase", "signum"),
    [
        ("data", signal.SIGTERM),
        ("data", signal.SIGINT),
        # the model is loaded after the data is prepared for real: slower (imports, tokenizer)
        pytest.param("model", signal.SIGTERM, marks=pytest.mark.slow),
    ],
)
def test_a_signal_while_the_model_loads_or_the_data_prepares_stops_at_once(
    project: Path, phase: str, signum: signal.Signals
) -> None:
    child, _ = start(project, phase)
    child.send_signal(signum)
    # Without the fix the child goes on loading forever: communicate() would time out.
    output = child.communicate(timeout=60)[0]
    assert child.returncode == 1, output
    assert (
        f"StoppedBeforeTraining: stopped ({signum.name}) before training started: "
        "nothing was trained"
    ) in output
    assert "saving a checkpoint" not in output
    runs = JobStore().list_runs()
    if phase == "data":
        assert runs == []  # stopped before any run was created
    else:
        ((run,),) = [runs]
        assert (run.status, run.reason) == ("interrupted", "interrupted")


def test_the_flag_arms_when_the_loop_first_asks() -> None:
    said: list[str] = []
    flag = StopFlag()
    restore = flag.install(said.append)
    try:
        with pytest.raises(StoppedBeforeTraining, match=r"stopped \(SIGINT\) before training"):
            signal.raise_signal(signal.SIGINT)
        assert flag.requested()

        flag = StopFlag()
        restore()
        restore = flag.install(said.append)
        assert flag() is False  # the loop's first question
        signal.raise_signal(signal.SIGTERM)
        assert flag() is True and said == [
            "stopping: saving a checkpoint first (press Ctrl-C again to stop at once)"
        ]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        restore()
