"""Records that stay true: a resume from an older checkpoint replaces the steps it trains again
(metrics.jsonl, the store, best.json), stale-run marking never overwrites a finished run, and a
run whose folder was deleted can be started again under its name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ft_config import load_config
from ft_runs import run_lock
from ft_runs.run_folder import RunFolder, new_run_id
from ft_runs.run_lock import RunLock
from ft_runs.sinks import EventSinks, StoreSink
from ft_runs.store import JobStore, RunExists
from ft_runs.training import _forget_after


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(tmp_path / "ft.db")
    yield s
    s.close()


def started(store: JobStore, folder: Path) -> RunFolder:
    run = RunFolder(folder).create(load_config(None), {})
    store.create_run(run.id, run_dir=run.path, config={}, model="tiny", method="lora")
    return run


def trained(emit: EventSinks, run: RunFolder, steps: range, *, losses: dict[int, float]) -> None:
    """The events a trainer emits: a step each, an eval and a checkpoint every 2 steps."""
    emit({"type": "start", "total_steps": 6, "resumed_from_step": None})
    for step in steps:
        emit({"type": "step", "step": step, "loss": 10.0 - step, "learning_rate": 1e-3})
        if step % 2 == 0:
            best = losses[step] == min(v for k, v in losses.items() if k <= step)
            emit({"type": "eval", "step": step, "eval_loss": losses[step], "is_best": best})
            path = run.checkpoints / f"step-{step:08d}"
            path.mkdir(exist_ok=True)  # a damaged one is rewritten
            emit({"type": "checkpoint", "step": step, "path": str(path), "is_best": best})


def test_resuming_from_an_older_checkpoint_replaces_the_later_records(
    store: JobStore, tmp_path: Path
) -> None:
    run = started(store, tmp_path / "runs" / "r1")
    emit = EventSinks(run, [StoreSink(store, run.id)])
    # Step 4 was the best; the run was killed in the middle of writing step 5's line.
    trained(emit, run, range(1, 6), losses={2: 3.0, 4: 2.0})
    with run.metrics_file.open("a") as f:
        f.write('{"type": "step", "step": 6, "lo')
    assert run.best() == {"step": 4, "checkpoint": "checkpoints/step-00000004", "eval_loss": 2.0}

    # The checkpoint at step 4 turned out damaged: the run resumes from step 2.
    _forget_after(run, store, run.id, 2)
    kept = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    assert [(e["type"], e.get("step")) for e in kept] == [
        ("start", None),
        ("step", 1),
        ("step", 2),
        ("eval", 2),
        ("checkpoint", 2),
    ]
    assert run.best() == {"step": 2, "checkpoint": "checkpoints/step-00000002", "eval_loss": 3.0}
    assert [(m["kind"], m["step"]) for m in store.metrics(run.id)] == [
        ("train", 1),
        ("train", 2),
        ("eval", 2),
    ]
    assert [(c["step"], c["is_best"]) for c in store.checkpoints(run.id)] == [(2, 1)]
    record = store.get_run(run.id)
    assert (record.step, record.best_eval_loss) == (2, 3.0)
    assert record.best_checkpoint == str(run.checkpoints / "step-00000002")

    # Steps 3 to 6 trained again: each is recorded once, in both places.
    trained(emit, run, range(3, 7), losses={2: 3.0, 4: 2.5, 6: 2.8})
    steps = [e["step"] for e in run.events("step")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in store.metrics(run.id, "train")] == steps
    assert [m["eval_loss"] for m in store.metrics(run.id, "eval")] == [3.0, 2.5, 2.8]
    assert run.best()["step"] == 4  # type: ignore[index]


def test_a_restart_from_step_0_forgets_every_step(store: JobStore, tmp_path: Path) -> None:
    run = started(store, tmp_path / "r0")
    emit = EventSinks(run, [StoreSink(store, run.id)])
    trained(emit, run, range(1, 3), losses={2: 1.0})
    _forget_after(run, store, run.id, 0)
    assert [e["type"] for e in run.events()] == ["start"]
    assert run.best() is None and store.metrics(run.id) == [] and store.checkpoints(run.id) == []
    assert store.get_run(run.id).best_checkpoint is None


def test_stale_marking_never_overwrites_a_run_that_finished_meanwhile(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = started(store, tmp_path / "r2")
    store.start_run(run.id)
    dead = 2**22 + 12345  # no such process: the row looks like a killed trainer's
    store.update_run(run.id, pid=dead)
    assert not _exists(dead)
    trainer = JobStore(store.path)  # the trainer's own connection
    looked = run_lock.holder

    def finish_in_between(folder: str) -> object:
        # The trainer reports `completed` right after the stale check read the row.
        trainer.finish_run(run.id, "completed", reason="max_steps")
        return looked(folder)

    monkeypatch.setattr(run_lock, "holder", finish_in_between)
    assert store.mark_stale_runs() == []
    record = store.get_run(run.id)
    assert (record.status, record.reason) == ("completed", "max_steps")
    trainer.close()


def test_a_locked_run_with_a_stale_heartbeat_is_alive(store: JobStore, tmp_path: Path) -> None:
    run = started(store, tmp_path / "r3")
    store.start_run(run.id)
    store.update_run(run.id, heartbeat_at=1.0, pid=2**22 + 12345)
    with RunLock(run.path):  # launched trainer processes still hold the run
        assert store.mark_stale_runs() == []
        assert store.get_run(run.id).status == "running"
    assert store.mark_stale_runs() == [run.id]
    assert store.get_run(run.id).status == "interrupted"


def test_a_run_whose_folder_was_deleted_can_start_again_under_its_name(
    store: JobStore, tmp_path: Path
) -> None:
    config = load_config(None, overrides=["output.run_name=exp"])
    runs = tmp_path / "runs"
    runs.mkdir()
    assert new_run_id(config, runs, taken=store.id_in_use) == "exp"
    first = started(store, runs / "exp")
    store.add_metrics("exp", "train", 1, {"loss": 9.0})
    shutil.rmtree(first.path)  # the user deletes the folder
    assert new_run_id(config, runs, taken=store.id_in_use) == "exp"
    again = started(store, runs / "exp")
    assert store.get_run("exp").run_dir == str(again.path)
    assert store.metrics("exp") == []  # the deleted run's rows went with it

    # The same name in another project, whose folder exists: a suffix, never a clash.
    other = tmp_path / "other" / "runs"
    other.mkdir(parents=True)
    assert new_run_id(config, other, taken=store.id_in_use) == "exp-2"
    with pytest.raises(RunExists, match="a run named exp already exists in "):
        store.create_run("exp", run_dir=other / "exp", config={}, model="m", method="lora")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
