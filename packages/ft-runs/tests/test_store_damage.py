"""A store that survives damage: garbage, torn pages, a folder in ft.db's place or a lock
held too long give an error naming the file and what to do, and `rebuild_store` moves the
damaged file aside and records the runs again from their folders."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from ft_config import load_config
from ft_runs import store as store_module
from ft_runs.rebuild import rebuild_store
from ft_runs.run_folder import RunFolder
from ft_runs.run_lock import RunLock
from ft_runs.sinks import EventSinks, StoreSink
from ft_runs.store import JobStore, StoreError

REBUILD = "`ft runs rebuild` moves it aside and rebuilds the job store from the run folders"


def a_run(store: JobStore, folder: Path, *, end: str | None) -> RunFolder:
    """A run recorded the way `ft train` records one: folder, store row, events to both."""
    run = RunFolder(folder).create(
        load_config(None), {"model": {"name": "tiny", "path": "/m"}, "backend": "torch"}
    )
    store.create_run(run.id, run_dir=run.path, config={"a": 1}, model="tiny", method="lora")
    store.start_run(run.id, backend="torch")
    emit = EventSinks(run, [StoreSink(store, run.id)])
    emit({"type": "start", "total_steps": 4})
    for step in (1, 2, 3, 4):
        emit({"type": "step", "step": step, "loss": 5.0 - step, "elapsed_s": step})
    emit({"type": "eval", "step": 4, "eval_loss": 1.5, "is_best": True})
    (run.checkpoints / "step-00000004").mkdir()
    emit(
        {
            "type": "checkpoint",
            "step": 4,
            "path": str(run.checkpoints / "step-00000004"),
            "is_best": True,
        }
    )
    if end:
        emit({"type": "end", "step": 4, "reason": end, "adapter_path": None})
        store.finish_run(run.id, "completed", reason=end)
    return run


def test_garbage_in_place_of_the_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ft.db"
    path.write_bytes(b"\x00garbage\xff" * 500)
    with pytest.raises(StoreError) as error:
        JobStore(path)
    assert (
        str(error.value)
        == f"{path} is damaged (file is not a database): {REBUILD} (they hold the truth)"
    )


def test_a_folder_in_place_of_the_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ft.db"
    path.mkdir()
    with pytest.raises(StoreError, match=f"^{path} is a folder, not ft's job store database: "):
        JobStore(path)


def test_torn_pages_name_the_file_when_they_are_read(tmp_path: Path) -> None:
    path = tmp_path / "ft.db"
    store = JobStore(path)
    for i in range(40):
        a_run(store, tmp_path / "runs" / f"r{i}", end="max_steps")
    store.close()
    with sqlite3.connect(path) as db:  # everything in the main file, the WAL emptied
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with path.open("r+b") as f:  # pages 3 onwards overwritten; the header stays valid
        f.seek(4096 * 2)
        f.write(b"\xde\xad\xbe\xef" * ((size - 4096 * 2) // 4))
    with pytest.raises(StoreError) as error:
        JobStore(path).list_runs()
    assert str(error.value).startswith(f"{path} is damaged (")
    assert REBUILD in str(error.value)


def test_a_lock_held_too_long_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ft.db"
    JobStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 100)
    try:
        with pytest.raises(StoreError, match=f"^{path} is locked by another process"):
            JobStore(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_rebuild_moves_the_damage_aside_and_records_the_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "home" / "ft.db"
    store = JobStore(path)
    done = a_run(store, tmp_path / "p1" / "runs" / "done", end="max_steps")
    killed = a_run(store, tmp_path / "p2" / "runs" / "killed", end=None)
    before = {r.id: r for r in store.list_runs()}
    metrics_before = {i: store.metrics(i) for i in before}
    store.close()
    path.write_bytes(b"this is not a database" * 100)

    said: list[str] = []
    result = rebuild_store(path, say=said.append)
    assert result.moved_to is not None and result.moved_to.name.startswith("ft.db.broken-")
    assert result.moved_to.read_bytes().startswith(b"this is not a database")  # kept, not deleted
    assert sorted(result.runs) == ["done", "killed"] and result.skipped == ()
    assert said[0] == f"moved {path} aside to {result.moved_to}"

    rebuilt = JobStore(path)
    for run_id, old in before.items():
        new = rebuilt.get_run(run_id)
        for field in (
            "run_dir",
            "model",
            "method",
            "backend",
            "step",
            "total_steps",
            "best_eval_loss",
            "best_checkpoint",
        ):
            assert getattr(new, field) == getattr(old, field), field
        assert [
            (m["kind"], m["step"], m.get("loss"), m.get("eval_loss"))
            for m in rebuilt.metrics(run_id)
        ] == [
            (m["kind"], m["step"], m.get("loss"), m.get("eval_loss"))
            for m in metrics_before[run_id]
        ]
        assert [(c["step"], c["is_best"]) for c in rebuilt.checkpoints(run_id)] == [(4, 1)]
    assert (rebuilt.get_run("done").status, rebuilt.get_run("done").reason) == (
        "completed",
        "max_steps",
    )
    # The run killed mid-way has no `end` line: interrupted, as the stale check would say.
    assert (rebuilt.get_run("killed").status, rebuilt.get_run("killed").reason) == (
        "interrupted",
        "process died",
    )
    rebuilt.close()

    # A run folder deleted meanwhile is skipped and said; a run being trained stops a rebuild.
    shutil.rmtree(killed.path)
    again = rebuild_store(path)
    assert again.runs == ("done",)
    assert again.skipped == (f"{killed.path}: no run.json (deleted, or not a run folder)",)
    with (
        RunLock(done.path),
        pytest.raises(StoreError, match=r"^run done is being trained by process "),
    ):
        rebuild_store(path)


def test_rebuild_records_the_tune_studies_trials_again_from_their_journals(
    tmp_path: Path,
) -> None:
    """`ft tune`'s trial rows (state, settings, value, run, adapter kept) come back from the
    study's Optuna journal: the same rows as before the damage."""
    import optuna

    from ft_runs.tune import StudyFiles, open_journal

    path = tmp_path / "home" / "ft.db"
    project = tmp_path / "project"
    files = StudyFiles(project / "tune" / "lr-sweep")
    files.dir.mkdir(parents=True)
    files.info.write_text("{}")
    store = JobStore(path)
    study = optuna.create_study(study_name=files.name, storage=open_journal(files))
    plan = [  # (state, value, the run's adapter still there)
        ("COMPLETE", 1.25, True),
        ("COMPLETE", 1.5, False),  # not among the best: `ft tune` deleted its adapter
        ("PRUNED", 2.0, False),
        ("SKIPPED", None, False),  # the memory guard refused it: no run
    ]
    for number, (state, value, kept) in enumerate(plan):
        trial = study.ask()
        settings = {"training.learning_rate": 10.0 ** -(number + 3)}
        trial.set_user_attr("settings", settings)
        store.record_trial(files.dir, files.name, number, state="RUNNING", params=settings)
        if state == "SKIPPED":
            trial.set_user_attr("skipped", "needs 30 GB")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            store.record_trial(files.dir, files.name, number, state="SKIPPED", note="needs 30 GB")
            continue
        run = a_run(store, project / "runs" / f"lr-sweep-t{number:03d}", end="max_steps")
        trial.set_user_attr("run_id", run.id)
        if kept:
            run.adapter.mkdir()
        else:  # as `ft tune` leaves the trials outside the best
            shutil.rmtree(run.checkpoints)
        if state == "PRUNED":
            trial.report(value, step=2)  # the evaluation the pruner stopped it at
            trial.set_user_attr("pruned_at", 2)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
        store.record_trial(
            files.dir,
            files.name,
            number,
            run_id=run.id,
            state=state,
            value=value,
            pruned_at=2 if state == "PRUNED" else None,
            adapter_kept=int(kept),
        )
    fields = ("trial", "state", "params", "value", "pruned_at", "run_id", "adapter_kept", "note")
    before = [{f: row[f] for f in fields} for row in store.trials(files.dir)]
    assert [row["adapter_kept"] for row in before] == [1, 0, 0, 1]
    store.close()
    path.write_bytes(b"this is not a database" * 100)

    said: list[str] = []
    result = rebuild_store(path, say=said.append)
    assert result.studies == (files.dir.resolve(),)
    assert "recorded study lr-sweep (4 trials)" in said
    rebuilt = JobStore(path)
    after = [{f: row[f] for f in fields} for row in rebuilt.trials(files.dir.resolve())]
    # The skipped trial's adapter_kept is moot (no run); the rebuild says 0 where ft tune
    # left its default.
    before[3]["adapter_kept"] = 0
    assert after == before
    assert rebuilt.trial_of_run("lr-sweep-t000")["trial"] == 0
    rebuilt.close()
