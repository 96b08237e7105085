"""`ft runs rebuild`: a new job store built from the run folders, the old database moved aside.

The run folders hold the truth (run.json, config.yml, metrics.jsonl, best.json, checkpoints/,
adapter/, evaluations/); the database is an index of them. When it is damaged (garbage, torn
pages, a folder in its place) or lost, this moves it aside as `ft.db.broken-<time>` (its
`-wal`/`-shm` files with it) and records every run folder it can find again:

- the folders given (a run folder, or a folder of run folders such as a project's `runs/`);
- every folder listed in `run-folders.txt` beside the database (the store appends each run);
- the run folders the old database still names, when it can still be read at all.

Then the `ft tune` studies of the projects those runs belong to (`<project>/tune/*/`): each
trial's row (state, settings, value, the run it trained, whether its adapter is still kept)
again from the study's Optuna journal, which holds the truth for them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from ft_runs.run_folder import RunFolder
from ft_runs.run_lock import holder
from ft_runs.sinks import metric_values
from ft_runs.store import STATUS_BY_REASON, JobStore, StoreError

Say = Callable[[str], None]


@attrs.frozen
class Rebuilt:
    """What `rebuild_store` did."""

    database: Path
    moved_to: Path | None
    runs: tuple[str, ...]
    skipped: tuple[str, ...]
    """One line per folder not recorded: the folder and why."""
    studies: tuple[Path, ...] = ()
    """The `ft tune` study folders whose trials were recorded again."""


def rebuild_store(
    database: Path | None = None,
    *,
    folders: Iterable[Path] = (),
    say: Say = lambda text: None,
) -> Rebuilt:
    """Move `database` (default: the app's) aside and build a new one from the run folders.

    Refused (StoreError) while a run found is being trained: its trainer still writes to the
    old database file, and what it wrote would be lost."""
    from ft_config import app_paths

    database = Path(database) if database is not None else app_paths().database
    candidates = _candidates(database, folders)
    runs = [folder for folder in candidates if (folder / "run.json").is_file()]
    skipped = [
        f"{folder}: no run.json (deleted, or not a run folder)"
        for folder in candidates
        if not (folder / "run.json").is_file()
    ]
    for folder in runs:
        who = holder(folder)
        if who is not None:
            raise StoreError(
                f"run {folder.name} is being trained by process {who.get('pid')} on "
                f"{who.get('host')}: rebuild {database} once it is done (its trainer still "
                "writes to the current file)"
            )
    moved = _move_aside(database)
    if moved is not None:
        say(f"moved {database} aside to {moved}")
    store = JobStore(database)
    recorded: list[str] = []
    studies: list[Path] = []
    try:
        for folder in sorted(runs, key=_created):
            try:
                run_id = _record(store, RunFolder(folder))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                skipped.append(f"{folder}: {exc}")
                continue
            recorded.append(run_id)
            say(f"recorded {run_id} ({folder})")
        for study in _studies(store, recorded):
            try:
                count = _record_study(store, study, set(recorded))
            except Exception as exc:  # a damaged journal must not lose the runs just recorded
                skipped.append(f"{study}: its journal could not be read ({exc})")
                continue
            studies.append(study)
            say(f"recorded study {study.name} ({count} trials)")
    finally:
        store.close()
    for line in skipped:
        say(f"skipped {line}")
    return Rebuilt(database, moved, tuple(recorded), tuple(skipped), tuple(studies))


def _studies(store: JobStore, run_ids: Iterable[str]) -> list[Path]:
    """The study folders of the projects the recorded runs belong to: `<project>/tune/*/`,
    the project being the run's config folder, or the folder above its `runs/` folder."""
    from ft_runs.tune import STUDY_FILE, studies_dir

    projects: dict[Path, None] = {}
    for run_id in run_ids:
        run = store.get_run(run_id)
        if run.project_dir:
            projects.setdefault(Path(run.project_dir), None)
        projects.setdefault(Path(run.run_dir).parent.parent, None)
    found: dict[Path, None] = {}
    for project in projects:
        for info in sorted(studies_dir(project).glob(f"*/{STUDY_FILE}")):
            found.setdefault(info.parent.resolve(), None)
    return list(found)


def _record_study(store: JobStore, study_dir: Path, run_ids: set[str]) -> int:
    """Record every trial of the study in `study_dir` as `ft tune` shows it (`trial_rows`,
    from the journal); the number recorded. A trial's run is linked only if that run was
    recorded; its adapter counts as kept while its run folder still holds it (`ft tune`
    deletes the others')."""
    from ft_runs.tune import StudyFiles, read_study, trial_rows

    files = StudyFiles(study_dir)
    study = read_study(files)
    rows = trial_rows(study, store, files, {}) if study is not None else []
    for row in rows:
        run_id = row["run_id"] if row["run_id"] in run_ids else None
        kept = 0
        if run_id is not None:
            run_dir = Path(store.get_run(run_id).run_dir)
            kept = int((run_dir / "adapter").is_dir() or (run_dir / "checkpoints").is_dir())
        store.record_trial(
            files.dir,
            files.name,
            row["number"],
            state=row["state"],
            params=row["settings"],
            value=row["value"],
            pruned_at=row["pruned_at"],
            run_id=run_id,
            adapter_kept=kept,
            note=row["note"],
        )
    return len(rows)


def _candidates(database: Path, given: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in given:
        path = Path(path).expanduser()
        if (path / "run.json").is_file() or not path.is_dir():
            found.append(path)
        else:  # a folder of run folders
            found.extend(sorted(p for p in path.iterdir() if (p / "run.json").is_file()))
    listed = database.parent / "run-folders.txt"
    if listed.is_file():
        found.extend(
            Path(line) for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()
        )
    found.extend(_named_by(database))
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.absolute(), None)
    return list(unique)


def _named_by(database: Path) -> list[Path]:
    """The run folders a (possibly damaged) database still names; none when it cannot say."""
    if not database.is_file():
        return []
    try:
        db = sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)
        try:
            return [Path(row[0]) for row in db.execute("SELECT run_dir FROM runs")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


def _move_aside(database: Path) -> Path | None:
    if not database.exists() and not database.is_symlink():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = database.with_name(f"{database.name}.broken-{stamp}")
    n = 2
    while target.exists():
        target, n = database.with_name(f"{database.name}.broken-{stamp}-{n}"), n + 1
    database.replace(target)
    for suffix in ("-wal", "-shm", "-journal"):  # they belong to the file moved, not the new one
        side = database.with_name(database.name + suffix)
        if side.exists():
            side.replace(target.with_name(target.name + suffix))
    return target


def _created(folder: Path) -> float:
    try:
        return _timestamp(RunFolder(folder).info().get("created")) or 0.0
    except (OSError, ValueError):
        return 0.0


def _timestamp(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _record(store: JobStore, folder: RunFolder) -> str:
    """Record one run folder in `store` (its run, metrics, checkpoints, evaluations, model)."""
    from ft_models.checkpoint import list_checkpoints

    info = folder.info()
    settings = folder.settings()
    if not settings:
        raise ValueError(f"{folder.config_file} is missing or unreadable")
    run_id = str(info.get("id") or folder.id)
    model = info.get("model") or {}
    method = settings.get("method") or {}
    events = folder.events()
    created = _timestamp(info.get("created")) or folder.info_file.stat().st_mtime
    last_start = max((i for i, e in enumerate(events) if e.get("type") == "start"), default=-1)
    ends = [e for e in events[last_start + 1 :] if e.get("type") == "end"]
    steps = [int(e["step"]) for e in events if e.get("type") in ("step", "end") and "step" in e]
    starts = [e for e in events if e.get("type") == "start"]
    lock = holder(folder.path)
    if ends:
        reason, error = ends[-1].get("reason"), None
        status = STATUS_BY_REASON.get(str(reason), "completed")
    elif lock is not None:
        status, reason, error = "running", None, None
    else:
        status, reason = "interrupted", "process died"
        error = "rebuilt from the run folder: its last attempt recorded no end"
    best = folder.best()
    best_path = str(folder.path / best["checkpoint"]) if best else None
    ended_at = folder.metrics_file.stat().st_mtime if folder.metrics_file.exists() else created
    record = {
        "id": run_id,
        "run_dir": str(folder.path),
        "project_dir": str(Path(info["config_path"]).parent) if info.get("config_path") else None,
        "config_path": info.get("config_path"),
        "config_commit": info.get("config_commit"),
        "config_json": json.dumps(settings, default=str),
        "model": str(model.get("name") or (settings.get("model") or {}).get("name") or "?"),
        "method": str(method.get("name") if isinstance(method, dict) else method or "?"),
        "backend": info.get("backend"),
        "status": status,
        "reason": reason,
        "error": error,
        "created_at": created,
        "started_at": created,
        "ended_at": None if status == "running" else ended_at,
        "heartbeat_at": time.time() if status == "running" else None,
        "pid": lock.get("pid") if lock else None,
        "host": lock.get("host") if lock else info.get("host"),
        "step": max(steps, default=0),
        "total_steps": starts[-1].get("total_steps") if starts else None,
        "best_eval_loss": best.get("eval_loss") if best else None,
        "best_checkpoint": best_path,
        "adapter_path": str(folder.adapter) if folder.adapter.is_dir() else None,
    }
    metrics = []
    for event in events:
        row = metric_values(event)
        if row is not None and isinstance(event.get("step"), int):
            at = created + float(event.get("elapsed_s") or 0.0)
            metrics.append((event["step"], row[0], at, row[1]))
    checkpoints = [
        (step, str(path), str(path) == best_path, path.stat().st_mtime)
        for step, path in list_checkpoints(folder.checkpoints)
    ]
    evaluations = []
    for file in sorted((folder.path / "evaluations").glob("*.json")):
        try:
            done = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        metrics_of = {
            **(done.get("metrics") or {}),
            **{f"base_{k}": v for k, v in (done.get("base_metrics") or {}).items()},
        }
        evaluations.append(
            {
                "checkpoint": str(done.get("checkpoint")),
                "data": done.get("data"),
                "created_at": _timestamp(done.get("created")) or file.stat().st_mtime,
                "metrics": metrics_of,
                "file": str(file),
            }
        )
    store.import_run(record, metrics=metrics, checkpoints=checkpoints, evaluations=evaluations)
    if model.get("name") and model.get("path"):
        store.record_model(
            str(model["name"]),
            path=Path(model["path"]),
            kind=str(model.get("kind") or "local"),
            repo_id=model.get("repo_id"),
            revision=model.get("commit") or model.get("revision"),
        )
    return run_id
