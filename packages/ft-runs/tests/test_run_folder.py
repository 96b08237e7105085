"""Run folders, run ids, and the event fan-out to the JSONL, the store and TensorBoard."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

from ft_config import load_config
from ft_runs.run_folder import RunFolder, git_commit_of, new_run_id
from ft_runs.sinks import EventSinks, StoreSink, TensorBoardSink
from ft_runs.store import JobStore


def test_run_ids_are_readable_and_unique(tmp_path):
    config = load_config(overrides=["model.name=HuggingFaceTB/SmolLM2-135M-Instruct@main"])
    now = datetime(2026, 11, 25, 20, 30, 15, tzinfo=UTC)
    first = new_run_id(config, tmp_path, now=now)
    assert first == "20261125-203015-smollm2-135m-instruct-lora"
    (tmp_path / first).mkdir()
    assert new_run_id(config, tmp_path, now=now) == f"{first}-2"
    named = load_config(overrides=["output.run_name=baseline"])
    assert new_run_id(named, tmp_path) == "baseline"


def test_folder_snapshot_and_events(tmp_path):
    config = load_config(profile="chat")
    folder = RunFolder(tmp_path / "run").create(config, {"model": {"name": "tiny"}})
    assert load_config(folder.config_file) == config  # the snapshot loads back to the same config
    info = folder.info()
    assert (
        info["id"] == "run"
        and info["model"] == {"name": "tiny"}
        and "ft-config" in info["versions"]
    )
    folder.append_event({"type": "step", "step": 1, "loss": 2.0})
    with folder.metrics_file.open("a") as f:
        f.write('{"type": "step", "st')  # a kill mid-line
    assert folder.events() == [{"type": "step", "step": 1, "loss": 2.0}]


def test_git_commit_of_the_config(tmp_path):
    assert git_commit_of(tmp_path / "train.yml") == (None, False)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "train.yml").write_text("profile: chat\n")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "-C", str(tmp_path), "add", "train.yml"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), *env, "commit", "-qm", "c"], check=True)
    sha, dirty = git_commit_of(tmp_path / "train.yml")
    assert len(sha) == 40 and dirty is False
    (tmp_path / "train.yml").write_text("profile: code\n")
    assert git_commit_of(tmp_path / "train.yml") == (sha, True)


def test_events_reach_every_sink(tmp_path):
    store = JobStore(tmp_path / "ft.db")
    folder = RunFolder(tmp_path / "run").create(load_config(), {})
    store.create_run("run", run_dir=folder.path, config={}, model="tiny", method="lora")
    store.start_run("run")
    emit = EventSinks(folder, [StoreSink(store, "run"), TensorBoardSink(folder)])
    emit({"type": "start", "total_steps": 2})
    emit(
        {
            "type": "step",
            "step": 1,
            "loss": 2.0,
            "learning_rate": 1e-4,
            "tokens": 100,
            "grad_norm": float("nan"),
        }
    )
    emit({"type": "eval", "step": 1, "eval_loss": 1.9, "perplexity": 6.7, "is_best": True})
    checkpoint = folder.checkpoints / "step-00000001"
    emit({"type": "checkpoint", "step": 1, "path": str(checkpoint), "is_best": True})
    emit(
        {
            "type": "end",
            "step": 2,
            "reason": "completed",
            "adapter_path": str(folder.adapter),
            "best_checkpoint": None,
        }
    )
    assert [e["type"] for e in folder.events()] == ["start", "step", "eval", "checkpoint", "end"]
    assert store.metrics("run", "train") == [
        {
            "step": 1,
            "kind": "train",
            "time": store.metrics("run", "train")[0]["time"],
            "loss": 2.0,
            "learning_rate": 1e-4,
            "tokens": 100.0,
        }
    ]  # NaN grad norm dropped, not stored
    run = store.get_run("run")
    assert (run.total_steps, run.step, run.best_eval_loss) == (2, 2, 1.9)
    assert run.best_checkpoint == str(checkpoint)
    assert json.loads(folder.best_file.read_text()) == {
        "step": 1,
        "checkpoint": "checkpoints/step-00000001",
        "eval_loss": 1.9,
    }
    assert list(folder.tensorboard.glob("events.out.tfevents.*"))


def test_a_failing_sink_is_turned_off_not_fatal(tmp_path, caplog):
    folder = RunFolder(tmp_path / "run").create(load_config(), {})
    calls = []

    def broken(event):
        calls.append(event)
        raise ConnectionError("wandb unreachable")

    emit = EventSinks(folder, [broken])
    emit({"type": "step", "step": 1})
    emit({"type": "step", "step": 2})
    assert len(calls) == 1 and "turning off broken" in caplog.text
    assert len(folder.events()) == 2


def test_last_is_the_last_run_of_the_project_here(tmp_path, monkeypatch):
    """`ft generate --run last` in a project means that project's newest run, even when a run
    of another project started later; outside any project, the newest of all."""
    import time

    from ft_runs.run_folder import find_run

    store = JobStore(tmp_path / "ft.db")
    folders = {}
    for name in ("mine-old", "mine", "theirs"):
        project = tmp_path / ("theirs" if name == "theirs" else "mine")
        folder = project / "runs" / name
        folder.mkdir(parents=True)
        (folder / "run.json").write_text("{}", encoding="utf-8")
        store.create_run(name, run_dir=folder, config={}, model="tiny", method="lora")
        folders[name] = folder.resolve()
        time.sleep(0.01)  # created_at orders them
    monkeypatch.chdir(tmp_path / "mine")
    assert find_run("last", store).path.resolve() == folders["mine"]
    monkeypatch.chdir(tmp_path / "theirs")
    assert find_run("last", store).path.resolve() == folders["theirs"]
    monkeypatch.chdir(tmp_path)
    assert find_run("last", store).path.resolve() == folders["theirs"]
