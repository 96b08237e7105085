"""What a user sees when a run already has a writer, when --resume would start a completed run
over, when a checkpoint is read while its trainer prunes, and when ft.db is damaged."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ft_config import load_config
from ft_models.checkpoint import list_checkpoints, prune_checkpoints
from ft_runs.run_folder import RunFolder
from ft_runs.store import JobStore

from .conftest import RunFt

HOLDER = """
import sys, time
from ft_runs.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def recorded_run(tmp_path: Path, run_id: str = "r1") -> RunFolder:
    store = JobStore()
    run = RunFolder(tmp_path / "runs" / run_id).create(load_config(None), {"backend": "torch"})
    store.create_run(run.id, run_dir=run.path, config={}, model="tiny", method="lora")
    store.close()
    return run


def test_a_second_ft_train_of_a_live_run_is_refused(tmp_path: Path, run_ft: RunFt) -> None:
    run = recorded_run(tmp_path)
    trainer = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout is not None and trainer.stdout.readline() == "locked\n"
        code, out = run_ft("train", "--resume", "r1", cwd=tmp_path)
        assert code == 1
        assert out.startswith(
            f"error: r1 is being trained by process {trainer.pid} on {socket.gethostname()}: "
        )
        assert "Traceback" not in out
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    assert JobStore().get_run("r1").status == "queued"  # the refused start changed nothing


def test_resume_never_starts_a_completed_run_over(tmp_path: Path, run_ft: RunFt) -> None:
    run = recorded_run(tmp_path)
    run.append_event({"type": "end", "step": 4, "reason": "max_steps", "adapter_path": None})
    JobStore().finish_run("r1", "completed", reason="max_steps")
    (run.checkpoints / "step-00000002").mkdir()  # never finished: no manifest
    (run.checkpoints / "step-00000004").mkdir()
    (run.checkpoints / "step-00000004" / "manifest.json").write_text("{ torn")
    code, out = run_ft("train", "--resume", "r1", cwd=tmp_path)
    assert code == 1
    text = " ".join(out.split())  # rich wraps long lines
    assert text.startswith(
        "error: run r1 completed at step 4, and none of its 2 checkpoint(s) can be resumed from: "
    )
    assert "step-00000004: unreadable manifest.json" in text
    assert "step-00000002: no manifest.json" in text
    assert "Start a new run with `ft train`" in text
    assert run.events("step") == []  # nothing trained, nothing recorded


def test_export_keeps_its_checkpoint_from_being_pruned(
    tmp_path: Path, run_ft: RunFt, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_export import ExportError, registry

    run = recorded_run(tmp_path)
    for step in (2, 4, 6):
        (run.checkpoints / f"step-{step:08d}").mkdir()
        (run.checkpoints / f"step-{step:08d}" / "config.json").write_text("{}")
    pruned: list[list[Path]] = []

    class Exporter:
        def export(self, source, out, options, progress):  # type: ignore[no-untyped-def]
            # The trainer of this run prunes while the export reads step 2.
            pruned.append(prune_checkpoints(run.checkpoints, keep_last=1))
            assert (source.base / "config.json").is_file()
            raise ExportError("stopped by the test")

    monkeypatch.setattr(registry, "get_exporter", lambda name: Exporter())
    code, out = run_ft(
        "export", str(run.path), "--checkpoint", "2", "--format", "gguf", "--no-verify",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 1 and "stopped by the test" in out
    assert pruned == [[]]
    assert [s for s, _ in list_checkpoints(run.checkpoints)] == [2, 4, 6]
    # The export is over: the next prune catches up.
    assert len(prune_checkpoints(run.checkpoints, keep_last=1)) == 2


def test_a_damaged_ft_db_says_what_to_do_and_rebuild_recovers_the_runs(
    tmp_path: Path, run_ft: RunFt, ft_home: Path
) -> None:
    run = recorded_run(tmp_path)
    run.append_event({"type": "start", "total_steps": 2})
    run.append_event({"type": "step", "step": 1, "loss": 2.5})
    run.append_event({"type": "step", "step": 2, "loss": 2.0})
    run.append_event({"type": "end", "step": 2, "reason": "max_steps", "adapter_path": None})
    database = ft_home / "ft.db"
    database.write_bytes(b"\x13\x37 not sqlite " * 300)
    for side in database.parent.glob("ft.db-*"):  # -wal, -shm of the file that was there
        side.unlink()

    for command in (("runs", "list"), ("runs", "show", "r1"), ("train", "--resume", "r1")):
        code, out = run_ft(*command, cwd=tmp_path)
        assert code == 1, command
        assert " ".join(out.split()).startswith(
            f"error: {database} is damaged (file is not a database): `ft runs rebuild` moves it "
            "aside and rebuilds the job store from the run folders"
        ), out
        assert "Traceback" not in out

    code, out = run_ft("runs", "rebuild", cwd=tmp_path)
    assert code == 0, out
    assert f"moved {database} aside to {database}.broken-" in out
    assert out.strip().endswith(f"rebuilt {database}: 1 run(s) recorded")
    code, out = run_ft("runs", "list", "--json", cwd=tmp_path)
    assert code == 0, out
    (record,) = json.loads(out)
    assert (record["id"], record["status"], record["step"]) == ("r1", "completed", 2)
    assert [m["loss"] for m in JobStore().metrics("r1", "train")] == [2.5, 2.0]

    # A folder where ft.db should be: named, and moved aside the same way.
    database.rename(tmp_path / "moved.db")
    database.mkdir()
    code, out = run_ft("runs", "list", cwd=tmp_path)
    assert code == 1
    assert out.startswith(f"error: {database} is a folder, not ft's job store database: ")
    code, out = run_ft("runs", "rebuild", cwd=tmp_path)
    assert code == 0 and "1 run(s) recorded" in out
    assert database.is_file()


def test_evaluate_of_a_run_folder_goes_on_without_a_readable_store(
    tmp_path: Path, run_ft: RunFt, ft_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_runs import evaluate

    run = recorded_run(tmp_path)
    (ft_home / "ft.db").unlink()
    (ft_home / "ft.db").mkdir()
    seen: list[object] = []

    def evaluate_run(folder: RunFolder, **options: object) -> None:
        seen.append((folder.path, options["store"]))
        raise ValueError("stopped by the test")

    monkeypatch.setattr(evaluate, "evaluate_run", evaluate_run)
    code, out = run_ft("evaluate", str(run.path), cwd=tmp_path)
    assert code == 1 and "stopped by the test" in out
    assert seen == [(run.path, None)]  # results go to the run folder only
    assert out.startswith(
        f"warning: not recording in the job store: {ft_home / 'ft.db'} is a folder, not ft's "
    )
