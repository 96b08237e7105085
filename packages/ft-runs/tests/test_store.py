"""The SQLite job store: WAL, migrations, dead runs noticed, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

from ft_runs.store import SCHEMA_VERSION, JobStore, RunNotFound


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "ft.db")
    yield s
    s.close()


def make(store, run_id="20261125-120000-tiny-lora"):
    return store.create_run(
        run_id,
        run_dir=store.path.parent / run_id,
        config={"method": {"name": "lora"}},
        model="tiny",
        method="lora",
    )


def test_defaults_to_the_app_database_in_wal_mode(ft_home):
    store = JobStore()
    assert store.path == ft_home / "ft.db"
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.schema_version() == SCHEMA_VERSION


def test_run_lifecycle(store):
    record = make(store)
    assert (record.status, record.step, record.config) == (
        "queued",
        0,
        {"method": {"name": "lora"}},
    )
    store.start_run(record.id, total_steps=50, backend="torch")
    store.heartbeat(record.id, step=7)
    running = store.get_run(record.id)
    assert (running.status, running.step, running.total_steps, running.backend) == (
        "running",
        7,
        50,
        "torch",
    )
    store.finish_run(record.id, "completed", reason="completed")
    done = store.get_run(record.id)
    assert done.status == "completed" and done.ended_at >= done.started_at


def test_lookup_by_unique_prefix(store):
    make(store, "20261125-120000-a")
    make(store, "20261125-130000-b")
    assert store.get_run("20261125-13").id == "20261125-130000-b"
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        store.get_run("20261125")
    with pytest.raises(RunNotFound, match="no run 'nope'; `ft runs list` shows the runs"):
        store.get_run("nope")


def test_a_run_whose_process_died_is_marked_interrupted(store):
    record = make(store)
    store.start_run(record.id)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.update_run(record.id, pid=dead.pid)
    assert [r.status for r in store.list_runs()] == ["interrupted"]
    assert store.get_run(record.id).reason == "process died"


def test_a_stale_heartbeat_means_interrupted(store):
    record = make(store)
    store.start_run(record.id)
    store.update_run(record.id, heartbeat_at=time.time() - 3600)
    assert store.mark_stale_runs() == [record.id]


def test_a_live_run_stays_running(store):
    record = make(store)
    store.start_run(record.id)
    assert store.mark_stale_runs() == []
    assert store.get_run(record.id).status == "running"


def test_metrics_and_checkpoints(store):
    record = make(store)
    store.add_metrics(record.id, "train", 1, {"loss": 2.5, "learning_rate": 1e-4})
    store.add_metrics(record.id, "eval", 1, {"eval_loss": 2.4})
    store.add_metrics(record.id, "train", 2, {"loss": 2.1, "learning_rate": 2e-4})
    assert [m["loss"] for m in store.metrics(record.id, "train")] == [2.5, 2.1]
    assert store.metrics(record.id, "eval")[0]["eval_loss"] == 2.4
    store.add_checkpoint(record.id, 1, store.path.parent / "c1", is_best=True)
    store.add_checkpoint(record.id, 2, store.path.parent / "c2", is_best=True)
    assert [(c["step"], c["is_best"]) for c in store.checkpoints(record.id)] == [(1, 0), (2, 1)]
    store.delete_run(record.id)
    assert store.metrics(record.id) == []  # cascades


def test_migrates_an_empty_database_and_refuses_a_newer_one(tmp_path):
    path = tmp_path / "ft.db"
    sqlite3.connect(path).close()
    assert JobStore(path).schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="written by a newer ft"):
        JobStore(path)


WRITER = """
import sys
from ft_runs.store import JobStore
store = JobStore(sys.argv[1])
for step in range(200):
    store.add_metrics("run", "train", step, {"loss": float(step), "writer": sys.argv[2]})
"""


def test_two_processes_write_at_once(store):
    make(store, "run")
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(store.path), name])
        for name in ("a", "b")
    ]
    assert [p.wait() for p in procs] == [0, 0]
    rows = store.metrics("run")
    assert len(rows) == 400
    assert sorted({r["writer"] for r in rows}) == ["a", "b"]


def test_update_rejects_unknown_columns(store):
    make(store, "r")
    with pytest.raises(ValueError, match="unknown run fields: bogus"):
        store.update_run("r", bogus=1)
