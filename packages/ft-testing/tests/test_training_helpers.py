"""The pieces the conformance suite stands on: event checks against the protocol's TypedDicts,
tensor digests, job settings, and the launcher its SIGKILL tests fork children from. (The suite
itself runs in ft-train-torch's and ft-train-mlx's tests, on real trainers.)"""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import pytest

pytest.importorskip("ft_train_core", reason="needs ft-testing[conformance]")

from ft_testing.conformance.crash import launcher
from ft_testing.training import (
    TINY_SETTINGS,
    event_problems,
    job_settings,
    safetensors_header,
    tensors_sha256,
)

STEP = {
    "type": "step",
    "step": 1,
    "epoch": 0.5,
    "loss": 6.2,
    "learning_rate": 1e-3,
    "grad_norm": 0.1,
    "tokens": 100,
    "tokens_per_s": 10.0,
    "elapsed_s": 10,  # an int is a float
    "memory_bytes": None,
}


def test_event_problems_name_keys_and_types() -> None:
    assert event_problems(STEP) == []
    assert event_problems({**STEP, "memory_bytes": 5}) == []
    wrong = {**STEP, "tokens": 1.5, "extra": 1}
    del wrong["loss"]
    assert event_problems(wrong) == [
        "step: no key 'loss'",
        "step: unexpected key 'extra'",
        "step: tokens=1.5 is not <class 'int'>",
    ]
    assert event_problems({**STEP, "step": True}) == ["step: step=True is not <class 'int'>"]
    assert event_problems({"type": "epoch"}) == [
        "unknown event type 'epoch' (known: start, step, eval, samples, checkpoint, message, end)"
    ]


def test_event_problems_read_literals_and_optional_keys() -> None:
    evaluation = {"type": "eval", "step": 2, "eval_loss": 1.0, "perplexity": 2.7, "is_best": True}
    assert event_problems(evaluation) == []
    assert event_problems({**evaluation, "accuracy": 0.5}) == []  # NotRequired
    sample = {"prompt": "Q", "output": "A", "reference": "B", "output_tokens": 1}
    samples = {"type": "samples", "step": 2, "samples": [sample]}
    assert event_problems(samples) == []
    assert event_problems({**samples, "samples": [{**sample, "output_tokens": "1"}]}) == [
        "samples: samples=[{'prompt': 'Q', 'output': 'A', 'reference': 'B', 'output_tokens': "
        "'1'}] is not list[ft_train_core.protocol.Sample]"
    ]
    message = {"type": "message", "level": "debug", "text": "hi"}
    assert event_problems(message) == [
        "message: level='debug' is not typing.Literal['info', 'warning', 'error']"
    ]


def _safetensors(path: Path, tensors: dict[str, bytes], metadata: dict[str, str]) -> Path:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, data in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": [len(data) // 4],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(tensors.values()))
    return path


def test_tensors_sha256_covers_tensors_not_metadata(tmp_path: Path) -> None:
    one = struct.pack("<2f", 1.0, 2.0)
    a = _safetensors(tmp_path / "a.safetensors", {"w": one, "b": one}, {"format": "pt"})
    b = _safetensors(tmp_path / "b.safetensors", {"b": one, "w": one}, {"format": "np"})
    c = _safetensors(tmp_path / "c.safetensors", {"w": one, "b": one[:4] + one[:4]}, {})
    assert tensors_sha256(tmp_path, a.name) == tensors_sha256(tmp_path, b.name)
    assert tensors_sha256(tmp_path, a.name) != tensors_sha256(tmp_path, c.name)
    assert set(safetensors_header(a)) == {"w", "b"}


def test_job_settings_override_by_section() -> None:
    data = job_settings({"data__max_seq_length": 64}, training__max_steps=3)
    assert data["data"] == {"max_seq_length": 64, "packing": False}
    assert data["training"]["max_steps"] == 3 and data["training"]["precision"] == "fp32"
    assert TINY_SETTINGS["data"]["max_seq_length"] == 128  # untouched


def test_launcher_runs_modules_and_reports_how_they_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ft_sleeper.py").write_text(
        "import sys, time\n"
        "print('args', sys.argv[1:], flush=True)\n"
        "if sys.argv[1] == 'exit':\n"
        "    sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with launcher(("json",)) as server:
        done = server.start("ft_sleeper", Path("exit"), tmp_path / "exit.log")
        assert server.exit_code(done, wait=True) == 3
        assert (tmp_path / "exit.log").read_text() == "args ['exit']\n"
        sleeping = server.start("ft_sleeper", Path("sleep"), tmp_path / "sleep.log")
        assert server.exit_code(sleeping, wait=False) is None
        os.kill(sleeping, signal.SIGKILL)
        assert server.exit_code(sleeping, wait=True) == -signal.SIGKILL
