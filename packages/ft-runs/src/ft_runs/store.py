"""The job store: runs, their metrics, checkpoints, datasets and models, in SQLite.

One database per user (`app_paths().database`), in WAL mode so `ft runs list` can read while a
training process writes, with a busy timeout so two writers wait for each other instead of
failing. The schema is versioned with `PRAGMA user_version` and migrated forward on open. A run
whose process died is noticed by its stale heartbeat and marked `interrupted`, never left
`running` forever. Secrets are never stored here (configs are stored as train.yml holds them,
and train.yml cannot hold secrets).

The run folders hold the truth; this database is an index of them. Every SQLite error that
leaves this module is a `StoreError` that names the database file and says what to do; a
damaged database is moved aside and rebuilt from the run folders by `ft runs rebuild`
(`ft_runs.rebuild`), which finds them through `run-folders.txt` beside the database.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from ft_config import app_paths
from ft_runs import run_lock

log = logging.getLogger(__name__)
BUSY_TIMEOUT_MS = 10_000
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "interrupted", "stopped")
STATUS_BY_REASON = {
    "completed": "completed",
    "max_steps": "completed",
    "early_stopping": "completed",
    "interrupted": "interrupted",
    "memory": "interrupted",  # stopped by the memory watchdog, with a checkpoint
    "nan": "failed",
}
"""A run's status from the reason its trainer ended with (the `end` event's `reason`)."""
RUN_FOLDERS_FILE = "run-folders.txt"
"""Beside the database: every run folder ever recorded, one path a line, appended. Plain text,
so `ft runs rebuild` finds the run folders when the database itself is damaged."""

# Each entry migrates the schema from version i to i + 1. Append only; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        run_dir TEXT NOT NULL,
        project_dir TEXT,
        config_path TEXT,
        config_commit TEXT,
        config_json TEXT NOT NULL,
        model TEXT NOT NULL,
        method TEXT NOT NULL,
        backend TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        heartbeat_at REAL,
        pid INTEGER,
        host TEXT,
        step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER,
        best_eval_loss REAL,
        best_checkpoint TEXT,
        adapter_path TEXT
    );
    CREATE INDEX runs_status ON runs(status);
    CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        kind TEXT NOT NULL,
        time REAL NOT NULL,
        values_json TEXT NOT NULL
    );
    CREATE INDEX metrics_run ON metrics(run_id, kind, step);
    CREATE TABLE checkpoints (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        path TEXT NOT NULL,
        is_best INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, step)
    );
    CREATE TABLE datasets (
        key TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        source TEXT NOT NULL,
        format TEXT,
        rows INTEGER,
        tokens INTEGER,
        created_at REAL NOT NULL,
        last_used_at REAL NOT NULL
    );
    CREATE TABLE models (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        repo_id TEXT,
        revision TEXT,
        resolved_at REAL NOT NULL
    );
    """,
    # 2: evaluation results (`ft evaluate`), comparable across runs.
    """
    CREATE TABLE evaluations (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        checkpoint TEXT NOT NULL,
        data TEXT,
        created_at REAL NOT NULL,
        metrics_json TEXT NOT NULL,
        file TEXT
    );
    CREATE INDEX evaluations_run ON evaluations(run_id, created_at);
    """,
    # 3: the server's job queue (ft-server): training, export and evaluation jobs.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        request_json TEXT NOT NULL,
        run_id TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        pid INTEGER,
        host TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        result_json TEXT
    );
    CREATE INDEX jobs_status ON jobs(status, created_at);
    """,
    # 4: `ft tune`: each trial of a study, linked to the run that trained it.
    """
    CREATE TABLE tune_trials (
        study_dir TEXT NOT NULL,
        study TEXT NOT NULL,
        trial INTEGER NOT NULL,
        run_id TEXT REFERENCES runs(id) ON DELETE SET NULL,
        state TEXT NOT NULL,
        params_json TEXT NOT NULL,
        value REAL,
        pruned_at INTEGER,
        adapter_kept INTEGER NOT NULL DEFAULT 1,
        note TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (study_dir, trial)
    );
    CREATE INDEX tune_trials_run ON tune_trials(run_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


JOB_STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
"""A job's life: queued -> running -> completed | failed | cancelled | interrupted (the process
running it died, or the server stopped: resumable); interrupted or failed -> queued again."""


@attrs.frozen
class JobRecord:
    """One row of the jobs table (the server's queue)."""

    id: str
    kind: str
    status: str
    request_json: str
    run_id: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    pid: int | None
    host: str | None
    cancel_requested: int
    error: str | None
    result_json: str | None

    @property
    def request(self) -> dict[str, Any]:
        return json.loads(self.request_json)

    @property
    def result(self) -> dict[str, Any] | None:
        return json.loads(self.result_json) if self.result_json else None


class JobNotFound(LookupError):
    """No job with that id."""


@attrs.frozen
class RunRecord:
    """One row of the runs table."""

    id: str
    run_dir: str
    project_dir: str | None
    config_path: str | None
    config_commit: str | None
    config_json: str
    model: str
    method: str
    backend: str | None
    status: str
    reason: str | None
    error: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    heartbeat_at: float | None
    pid: int | None
    host: str | None
    step: int
    total_steps: int | None
    best_eval_loss: float | None
    best_checkpoint: str | None
    adapter_path: str | None

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.config_json)


class RunNotFound(LookupError):
    """No run with that id (or prefix)."""


class RunExists(ValueError):
    """A run with that id is recorded with another folder that still exists."""


class StoreError(RuntimeError):
    """The database could not be read or written; the message names the file and what to do."""


def explain(path: Path, exc: sqlite3.Error) -> StoreError:
    """`exc` (from SQLite, on the database `path`) as a StoreError for a person."""
    text = str(exc)
    rebuild = (
        "`ft runs rebuild` moves it aside and rebuilds the job store from the run folders "
        "(they hold the truth)"
    )
    if path.is_dir():
        message = f"{path} is a folder, not ft's job store database: {rebuild}"
    elif "malformed" in text or "not a database" in text or "corrupt" in text:
        message = f"{path} is damaged ({text}): {rebuild}"
    elif "locked" in text or "busy" in text:
        message = (
            f"{path} is locked by another process ({text}; waited {BUSY_TIMEOUT_MS // 1000} s): "
            "try again when it is done"
        )
    elif "readonly" in text or "read-only" in text:
        message = (
            f"{path} cannot be written ({text}): check the permissions of it and {path.parent}"
        )
    elif "unable to open" in text:
        message = (
            f"{path} cannot be opened ({text}): check that {path.parent} is a folder you can "
            "write, or set FT_HOME to one"
        )
    elif "disk" in text or "full" in text:
        message = f"{path}: {text}: check the free space and the disk; then {rebuild} if needed"
    else:
        message = f"{path}: {text} (SQLite); if it happens again, {rebuild}"
    return StoreError(message)


def _names_the_file(method: Any) -> Any:
    """Turn SQLite's errors in `method` into a StoreError naming the database file."""
    import functools

    @functools.wraps(method)
    def wrapper(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise explain(self.path, exc) from exc

    return wrapper


class JobStore:
    """The SQLite job store. Safe to use from several threads and processes."""

    @_names_the_file
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else app_paths().database
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            self._migrate(db)

    @property
    def run_folders_file(self) -> Path:
        return self.path.parent / RUN_FOLDERS_FILE

    # --- connections ----------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction: committed on success, rolled back on error."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer ft (schema {version}, this ft knows {SCHEMA_VERSION}): "
                "upgrade ft"
            )
        for index in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[index].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {index + 1}")

    @_names_the_file
    def schema_version(self) -> int:
        return int(self._connection().execute("PRAGMA user_version").fetchone()[0])

    # --- runs -----------------------------------------------------------------------------
    @_names_the_file
    def create_run(
        self,
        run_id: str,
        *,
        run_dir: Path,
        config: Mapping[str, Any],
        model: str,
        method: str,
        project_dir: Path | None = None,
        config_path: Path | None = None,
        config_commit: str | None = None,
        backend: str | None = None,
    ) -> RunRecord:
        """Record a new run as `queued`. A record of the same id whose folder no longer exists
        is replaced (its folder was deleted: the name is free again); one whose folder exists
        elsewhere raises RunExists."""
        with self._connect() as db:
            old = db.execute("SELECT run_dir FROM runs WHERE id=?", (run_id,)).fetchone()
            if old is not None:
                if Path(old["run_dir"]) != Path(run_dir) and Path(old["run_dir"]).exists():
                    raise RunExists(
                        f"a run named {run_id} already exists in {old['run_dir']}: "
                        "set output.run_name to another name"
                    )
                db.execute("DELETE FROM runs WHERE id=?", (run_id,))  # cascades to its rows
            db.execute(
                "INSERT INTO runs (id, run_dir, project_dir, config_path, config_commit, config_json, model,"
                " method, backend, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (
                    run_id,
                    str(run_dir),
                    str(project_dir) if project_dir else None,
                    str(config_path) if config_path else None,
                    config_commit,
                    json.dumps(config),
                    model,
                    method,
                    backend,
                    time.time(),
                ),
            )
        self._note_folder(Path(run_dir))
        return self.get_run(run_id)

    def _note_folder(self, run_dir: Path) -> None:
        try:
            with self.run_folders_file.open("a", encoding="utf-8") as f:
                f.write(f"{Path(run_dir).resolve()}\n")
        except OSError:
            pass  # only `ft runs rebuild` reads it, and it also takes folders on its command line

    @_names_the_file
    def id_in_use(self, run_id: str) -> bool:
        """Whether a recorded run has this id and its folder still exists."""
        row = (
            self._connection().execute("SELECT run_dir FROM runs WHERE id=?", (run_id,)).fetchone()
        )
        return row is not None and Path(row["run_dir"]).exists()

    @_names_the_file
    def start_run(
        self, run_id: str, *, total_steps: int | None = None, backend: str | None = None
    ) -> None:
        """Mark a run `running` by this process."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status='running', started_at=COALESCE(started_at, ?), heartbeat_at=?, pid=?, host=?,"
                " total_steps=COALESCE(?, total_steps), backend=COALESCE(?, backend), reason=NULL, error=NULL,"
                " ended_at=NULL WHERE id=?",
                (now, now, os.getpid(), socket.gethostname(), total_steps, backend, run_id),
            )

    @_names_the_file
    def heartbeat(self, run_id: str, *, step: int | None = None) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET heartbeat_at=?, step=COALESCE(?, step) WHERE id=?",
                (time.time(), step, run_id),
            )

    @_names_the_file
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run (names checked against the schema)."""
        allowed = {f.name for f in attrs.fields(RunRecord)} - {"id", "created_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown run fields: {', '.join(sorted(unknown))}")
        if not fields:
            return
        assignments = ", ".join(f"{name}=?" for name in fields)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {assignments} WHERE id=?", (*fields.values(), run_id))

    def finish_run(
        self, run_id: str, status: str, *, reason: str | None = None, error: str | None = None
    ) -> None:
        if status not in FINISHED:
            raise ValueError(f"status must be one of {', '.join(FINISHED)}")
        self.update_run(run_id, status=status, reason=reason, error=error, ended_at=time.time())

    @_names_the_file
    def get_run(self, run_id: str) -> RunRecord:
        """A run by id, or by a unique prefix of its id."""
        db = self._connection()
        row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            rows = db.execute(
                "SELECT * FROM runs WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(run_id),)
            ).fetchall()
            if len(rows) > 1:
                raise RunNotFound(
                    f"{run_id!r} matches {len(rows)} runs: {', '.join(r['id'] for r in rows[:5])}"
                )
            row = rows[0] if rows else None
        if row is None:
            raise RunNotFound(f"no run {run_id!r}; `ft runs list` shows the runs")
        return RunRecord(**dict(row))

    @_names_the_file
    def list_runs(self, *, status: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first (after marking dead ones interrupted)."""
        self.mark_stale_runs()
        query = "SELECT * FROM runs"
        params: list[Any] = []
        if status:
            query += " WHERE status=?"
            params.append(status)
        query += " ORDER BY created_at DESC"
        if limit:
            query += " LIMIT ?"
            params.append(limit)
        return [RunRecord(**dict(r)) for r in self._connection().execute(query, params).fetchall()]

    @_names_the_file
    def mark_stale_runs(self, *, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Mark `running` runs whose process is gone as `interrupted`. A run is gone when its
        heartbeat is older than `stale_after_s`, or when it ran on this host and its pid no longer
        exists. Returns the ids marked."""
        now = time.time()
        host = socket.gethostname()
        gone = []
        rows = (
            self._connection()
            .execute("SELECT id, run_dir, heartbeat_at, pid, host FROM runs WHERE status='running'")
            .fetchall()
        )
        for row in rows:
            dead_pid = (
                row["host"] == host
                and row["pid"] is not None
                and not run_lock.pid_alive(row["pid"])
            )
            stale = row["heartbeat_at"] is None or now - row["heartbeat_at"] > stale_after_s
            # A run folder still locked has a live trainer (launched processes can outlive
            # the `ft train` whose pid the row holds).
            if (dead_pid or stale) and run_lock.holder(row["run_dir"]) is None:
                gone.append(row)
        marked = []
        why = "the training process stopped without reporting (killed or crashed)"
        for row in gone:
            # Compare-and-set: only the row as it was read. A run that finished (or was
            # restarted by another process) since then is left as it is.
            with self._connect() as db:
                changed = db.execute(
                    "UPDATE runs SET status='interrupted', reason='process died', error=?,"
                    " ended_at=? WHERE id=? AND status='running' AND pid IS ? AND host IS ?"
                    " AND heartbeat_at IS ?",
                    (why, now, row["id"], row["pid"], row["host"], row["heartbeat_at"]),
                ).rowcount
            if changed:
                marked.append(row["id"])
        return marked

    @_names_the_file
    def delete_run(self, run_id: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    @_names_the_file
    def forget_after(
        self, run_id: str, step: int, *, best_step: int | None, best_eval_loss: float | None
    ) -> None:
        """Drop a run's metrics and checkpoints after `step` and make `best_step` its best
        checkpoint: before a run resumed from `step` trains the later steps again."""
        with self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, step))
            db.execute("DELETE FROM checkpoints WHERE run_id=? AND step>?", (run_id, step))
            db.execute(
                "UPDATE checkpoints SET is_best=(step IS ?) WHERE run_id=?", (best_step, run_id)
            )
            db.execute(
                "UPDATE runs SET step=MIN(step, ?), best_eval_loss=?, best_checkpoint=(SELECT"
                " path FROM checkpoints WHERE run_id=? AND step IS ?) WHERE id=?",
                (step, best_eval_loss, run_id, best_step, run_id),
            )

    @_names_the_file
    def import_run(
        self,
        record: Mapping[str, Any],
        *,
        metrics: Iterable[tuple[int, str, float, Mapping[str, Any]]],
        checkpoints: Iterable[tuple[int, str, bool, float]],
        evaluations: Iterable[Mapping[str, Any]],
    ) -> None:
        """Record a run read back from its folder (`ft runs rebuild`), in one transaction:
        `record` holds every column of the runs table; `metrics` rows are (step, kind, time,
        values), `checkpoints` (step, path, is_best, created_at), `evaluations` dicts with
        `checkpoint`, `data`, `created_at`, `metrics`, `file`."""
        columns = [f.name for f in attrs.fields(RunRecord)]
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id=?", (record["id"],))
            db.execute(
                f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [record.get(c) for c in columns],
            )
            db.executemany(
                "INSERT INTO metrics (run_id, step, kind, time, values_json) VALUES (?, ?, ?, ?, ?)",
                [(record["id"], s, k, t, json.dumps(dict(v))) for s, k, t, v in metrics],
            )
            db.executemany(
                "INSERT OR REPLACE INTO checkpoints (run_id, step, path, is_best, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(record["id"], s, p, int(b), t) for s, p, b, t in checkpoints],
            )
            db.executemany(
                "INSERT INTO evaluations (run_id, checkpoint, data, created_at, metrics_json, file)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        record["id"],
                        e["checkpoint"],
                        e.get("data"),
                        e["created_at"],
                        json.dumps(_finite_json(e["metrics"])),
                        e.get("file"),
                    )
                    for e in evaluations
                ],
            )
        self._note_folder(Path(record["run_dir"]))

    # --- metrics and checkpoints ----------------------------------------------------------
    @_names_the_file
    def add_metrics(self, run_id: str, kind: str, step: int, values: Mapping[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO metrics (run_id, step, kind, time, values_json) VALUES (?, ?, ?, ?, ?)",
                (run_id, step, kind, time.time(), json.dumps(dict(values))),
            )

    @_names_the_file
    def metrics(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Metric rows of a run, in step order: dicts with `step`, `kind`, `time` and the values."""
        query = "SELECT step, kind, time, values_json FROM metrics WHERE run_id=?"
        params: list[Any] = [run_id]
        if kind:
            query += " AND kind=?"
            params.append(kind)
        rows = self._connection().execute(query + " ORDER BY step, rowid", params).fetchall()
        return [
            {
                "step": r["step"],
                "kind": r["kind"],
                "time": r["time"],
                **json.loads(r["values_json"]),
            }
            for r in rows
        ]

    @_names_the_file
    def add_checkpoint(self, run_id: str, step: int, path: Path, *, is_best: bool = False) -> None:
        with self._connect() as db:
            if is_best:
                db.execute("UPDATE checkpoints SET is_best=0 WHERE run_id=?", (run_id,))
            db.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, step, path, is_best, created_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, step, str(path), int(is_best), time.time()),
            )

    @_names_the_file
    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._connection().execute(
            "SELECT step, path, is_best, created_at FROM checkpoints WHERE run_id=? ORDER BY step",
            (run_id,),
        )
        return [dict(r) for r in rows]

    # --- jobs (the server's queue) ----------------------------------------------------------
    @_names_the_file
    def create_job(self, job_id: str, kind: str, request: Mapping[str, Any]) -> JobRecord:
        """Queue a job (`kind`: train, export, evaluate) with its request (no secrets in it)."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, status, request_json, created_at)"
                " VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(dict(request)), time.time()),
            )
        return self.get_job(job_id)

    @_names_the_file
    def get_job(self, job_id: str) -> JobRecord:
        row = self._connection().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return JobRecord(**dict(row))

    @_names_the_file
    def list_jobs(
        self, *, status: str | Iterable[str] | None = None, limit: int | None = None
    ) -> list[JobRecord]:
        """Jobs, oldest first (the queue's order)."""
        query, params = "SELECT * FROM jobs", []
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            query += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            params += wanted
        query += " ORDER BY created_at, rowid"
        if limit:
            query += " LIMIT ?"
            params.append(limit)
        return [JobRecord(**dict(r)) for r in self._connection().execute(query, params).fetchall()]

    @_names_the_file
    def claim_job(self, job_id: str) -> bool:
        """Move a queued job to running (compare-and-set); False if it is no longer queued."""
        with self._connect() as db:
            return (
                db.execute(
                    "UPDATE jobs SET status='running', started_at=?, ended_at=NULL, error=NULL,"
                    " cancel_requested=0, host=? WHERE id=? AND status='queued'",
                    (time.time(), socket.gethostname(), job_id),
                ).rowcount
                == 1
            )

    @_names_the_file
    def update_job(
        self, job_id: str, *, expect: str | Iterable[str] | None = None, **fields: Any
    ) -> bool:
        """Set columns of a job; with `expect`, only if its status is one of those (returns
        whether it changed). Finishing statuses set `ended_at`."""
        allowed = {f.name for f in attrs.fields(JobRecord)} - {"id", "created_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown job fields: {', '.join(sorted(unknown))}")
        if fields.get("status") not in (None, *JOB_STATUSES):
            raise ValueError(f"job status must be one of {', '.join(JOB_STATUSES)}")
        if fields.get("status") in ("completed", "failed", "cancelled", "interrupted"):
            fields.setdefault("ended_at", time.time())
        for name in ("request_json", "result_json"):
            if name in fields and not isinstance(fields[name], str | None):
                fields[name] = json.dumps(fields[name])
        query = f"UPDATE jobs SET {', '.join(f'{n}=?' for n in fields)} WHERE id=?"
        params: list[Any] = [*fields.values(), job_id]
        if expect is not None:
            wanted = [expect] if isinstance(expect, str) else list(expect)
            query += f" AND status IN ({', '.join('?' * len(wanted))})"
            params += wanted
        with self._connect() as db:
            return db.execute(query, params).rowcount == 1

    # --- tune studies (`ft tune`) ----------------------------------------------------------
    @_names_the_file
    def record_trial(self, study_dir: Path, study: str, trial: int, **fields: Any) -> None:
        """Create or update a study's trial row: `run_id`, `state`, `params` (a dict), `value`,
        `pruned_at`, `adapter_kept`, `note`."""
        allowed = {"run_id", "state", "params", "value", "pruned_at", "adapter_kept", "note"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown trial fields: {', '.join(sorted(unknown))}")
        if "params" in fields:
            fields["params_json"] = json.dumps(fields.pop("params"))
        with self._connect() as db:
            db.execute(
                "INSERT INTO tune_trials (study_dir, study, trial, state, params_json, updated_at)"
                " VALUES (?, ?, ?, 'running', '{}', ?) ON CONFLICT(study_dir, trial) DO NOTHING",
                (str(study_dir), study, trial, time.time()),
            )
            if fields:
                assignments = ", ".join(f"{name}=?" for name in fields)
                db.execute(
                    f"UPDATE tune_trials SET {assignments}, updated_at=? WHERE study_dir=? AND trial=?",
                    (*fields.values(), time.time(), str(study_dir), trial),
                )

    @_names_the_file
    def trials(self, study_dir: Path) -> list[dict[str, Any]]:
        """A study's trials in order, with `params` decoded."""
        rows = self._connection().execute(
            "SELECT * FROM tune_trials WHERE study_dir=? ORDER BY trial", (str(study_dir),)
        )
        return [{**dict(r), "params": json.loads(r["params_json"])} for r in rows.fetchall()]

    @_names_the_file
    def trial_of_run(self, run_id: str) -> dict[str, Any] | None:
        """The study trial that trained `run_id`, or None for a run of its own."""
        row = (
            self._connection()
            .execute("SELECT * FROM tune_trials WHERE run_id=?", (run_id,))
            .fetchone()
        )
        return None if row is None else {**dict(row), "params": json.loads(row["params_json"])}

    # --- datasets and models --------------------------------------------------------------
    @_names_the_file
    def record_dataset(
        self,
        key: str,
        *,
        path: Path,
        source: str,
        format: str | None,
        rows: int | None,
        tokens: int | None,
    ) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO datasets (key, path, source, format, rows, tokens, created_at, last_used_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET last_used_at=excluded.last_used_at,"
                " path=excluded.path",
                (key, str(path), source, format, rows, tokens, now, now),
            )

    @_names_the_file
    def record_model(
        self, name: str, *, path: Path, kind: str, repo_id: str | None, revision: str | None
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO models (name, path, kind, repo_id, revision, resolved_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, str(path), kind, repo_id, revision, time.time()),
            )

    @_names_the_file
    def add_evaluation(
        self,
        run_id: str,
        *,
        checkpoint: str,
        data: str | None,
        metrics: Mapping[str, Any],
        file: Path | None = None,
    ) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO evaluations (run_id, checkpoint, data, created_at, metrics_json, file)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    checkpoint,
                    data,
                    time.time(),
                    json.dumps(_finite_json(metrics)),
                    str(file) if file else None,
                ),
            )

    @_names_the_file
    def evaluations(self, run_id: str) -> list[dict[str, Any]]:
        """The run's evaluations, oldest first, with `metrics` decoded."""
        rows = self._connection().execute(
            "SELECT * FROM evaluations WHERE run_id=? ORDER BY created_at", (run_id,)
        )
        return [{**dict(r), "metrics": json.loads(r["metrics_json"])} for r in rows.fetchall()]

    @_names_the_file
    def datasets(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._connection().execute("SELECT * FROM datasets ORDER BY last_used_at DESC")
        ]

    @_names_the_file
    def models(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self._connection().execute("SELECT * FROM models ORDER BY resolved_at DESC")
        ]


class Heartbeat:
    """A daemon thread that tells the store a run is alive, every `interval` seconds."""

    def __init__(self, store_path: Path, run_id: str, interval: float = HEARTBEAT_S) -> None:
        self._store_path, self._run_id, self._interval = store_path, run_id, interval
        self._stop = threading.Event()
        self.step: int | None = None
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        try:  # its own connection: sqlite3 objects stay in their thread
            store = JobStore(self._store_path)
        except StoreError as exc:
            log.warning("heartbeat off: %s", exc)
            return
        try:
            while not self._stop.wait(self._interval):
                try:
                    store.heartbeat(self._run_id, step=self.step)
                except StoreError as exc:  # the training goes on; the run lock says it lives
                    log.warning("heartbeat not recorded: %s", exc)
        finally:
            store.close()


def _finite_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities are not JSON: stored as null."""
    return {
        k: (None if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))) else v)
        for k, v in values.items()
    }


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
