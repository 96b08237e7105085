"""Checkpoints are complete or absent: crashes, kills and corruption are detected, never resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ft_models.checkpoint import (
    CorruptCheckpoint,
    latest_valid_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_manifest,
    staged_folder,
    step_folder,
    write_checkpoint,
)


def write(root: Path, step: int, value: float = 1.0) -> Path:
    final = step_folder(root, step)
    with write_checkpoint(final, step=step, metadata={"loss": value}) as tmp:
        save_file(
            {"w": np.full((4, 4), value, dtype=np.float32)}, str(tmp / "adapter_model.safetensors")
        )
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
    return final


def test_written_checkpoint_has_a_manifest_of_every_file(tmp_path):
    folder = write(tmp_path, 3, 2.0)
    assert folder.name == "step-00000003"
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_model.safetensors",
        "manifest.json",
        "trainer_state.json",
    ]
    manifest = read_manifest(folder)
    assert manifest.step == 3 and manifest.metadata == {"loss": 2.0}
    assert sorted(manifest.files) == ["adapter_model.safetensors", "trainer_state.json"]
    assert all(len(f["sha256"]) == 64 for f in manifest.files.values())
    assert load_file(str(folder / "adapter_model.safetensors"))["w"][0, 0] == 2.0


def test_an_error_while_writing_leaves_nothing_under_the_final_name(tmp_path):
    final = step_folder(tmp_path, 5)
    with pytest.raises(RuntimeError), write_checkpoint(final, step=5) as tmp:
        (tmp / "trainer_state.json").write_text("{}")
        raise RuntimeError("killed mid-write")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_pickle_files_are_refused(tmp_path):
    with (
        pytest.raises(ValueError, match="only safetensors, JSON and text files"),
        write_checkpoint(step_folder(tmp_path, 1), step=1) as tmp,
    ):
        (tmp / "optimizer.pt").write_bytes(b"\x80\x04")
    assert not step_folder(tmp_path, 1).exists()


def test_corruption_is_detected(tmp_path):
    folder = write(tmp_path, 1)
    tensor = folder / "adapter_model.safetensors"
    data = bytearray(tensor.read_bytes())
    data[-1] ^= 0xFF
    tensor.write_bytes(bytes(data))
    with pytest.raises(
        CorruptCheckpoint, match=r"adapter_model\.safetensors does not match its sha256"
    ):
        read_manifest(folder)
    tensor.write_bytes(bytes(data[:-10]))
    with pytest.raises(
        CorruptCheckpoint, match=r"is \d+ bytes, the manifest says \d+ \(truncated\?\)"
    ):
        read_manifest(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CorruptCheckpoint, match=r"no manifest\.json \(the write never finished\)"):
        read_manifest(folder)


def test_latest_valid_skips_broken_newer_ones(tmp_path, caplog):
    write(tmp_path, 1)
    write(tmp_path, 2)
    broken = write(tmp_path, 3)
    (broken / "trainer_state.json").write_text("{}")
    folder, manifest = latest_valid_checkpoint(tmp_path)
    assert (folder.name, manifest.step) == ("step-00000002", 2)
    assert "skipping checkpoint" in caplog.text and "step-00000003" in caplog.text


def test_rewriting_a_step_replaces_it(tmp_path):
    write(tmp_path, 4, 1.0)
    write(tmp_path, 4, 7.0)
    assert read_manifest(step_folder(tmp_path, 4)).metadata == {"loss": 7.0}
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    for step in (1, 2, 3, 4, 5):
        write(tmp_path, step)
    deleted = prune_checkpoints(tmp_path, keep_last=2, keep=(step_folder(tmp_path, 2),))
    assert sorted(p.name for p in deleted) == ["step-00000001", "step-00000003"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 5]


READER = """
import sys, time
from pathlib import Path
from ft_models.checkpoint import reading_checkpoints
with reading_checkpoints(Path(sys.argv[1])):
    print("reading", flush=True)
    time.sleep(600)
"""


def test_pruning_waits_for_a_reader_and_a_killed_reader_blocks_nothing(tmp_path):
    for step in (1, 2, 3):
        write(tmp_path, step)
    # A real second process reads (as `ft export` does) while the trainer prunes.
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        assert prune_checkpoints(tmp_path, keep_last=1) == []
        assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3]
    finally:
        reader.send_signal(signal.SIGKILL)  # no cleanup code runs: the kernel drops the lock
        reader.wait()
    deleted = prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in deleted) == ["step-00000001", "step-00000002"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3]


WRITER = """
import sys, numpy as np
from pathlib import Path
from safetensors.numpy import save_file
from ft_models.checkpoint import write_checkpoint, step_folder
root = Path(sys.argv[1])
for step in range(1, 10_000):
    with write_checkpoint(step_folder(root, step), step=step) as tmp:
        save_file({"w": np.full((256, 256), step, dtype=np.float32)}, str(tmp / "adapter_model.safetensors"))
        (tmp / "trainer_state.json").write_text('{"step": %d}' % step)
    print(step, flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    rng = random.Random(0)
    for attempt in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one checkpoint was finished
        time.sleep(rng.uniform(0.0, 0.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Everything under a final name is complete; the newest valid one is the newest one.
        for _step, folder in list_checkpoints(tmp_path):
            read_manifest(folder)
        assert latest_valid_checkpoint(tmp_path) is not None, attempt


def test_staged_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "runs" / "adapter"
    with pytest.raises(RuntimeError, match="crash"), staged_folder(final) as build:
        (build / "adapter_model.safetensors").write_bytes(b"half")
        raise RuntimeError("crash while saving")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with staged_folder(final) as build:
        (build / "sub").mkdir()
        (build / "sub" / "a.json").write_text("1")
    assert (final / "sub" / "a.json").read_text() == "1"
    with staged_folder(final) as build:  # a second save replaces the first
        (build / "b.json").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b.json"]
    assert [p.name for p in final.parent.iterdir()] == ["adapter"]
